import numpy as np
import pytest
from shapely.geometry import box

from geosearch.errors import InputError
from geosearch.geo import WGS84, reproject_geom
from geosearch.index import TileIndex, build_index
from geosearch.search import search, top_k
from tests.fixtures.rasters import write_raster


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_settings):
    tmp = tmp_path_factory.mktemp("search")
    raster = write_raster(tmp / "m.tif", width=256, height=256)
    build_index([raster], tmp / "i.duckdb", settings=tiny_settings, progress=False)
    return TileIndex.open(tmp / "i.duckdb")


def test_search_ranks_and_geometry(index):
    hits = search(index, "a bright square", k=5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    ref = index.embeddings @ index.model().encode_text(["a bright square"])[0]
    assert scores[0] == pytest.approx(ref.max(), abs=1e-5)
    mosaic84 = box(*index.bounds_wgs84)
    for h in hits:
        assert mosaic84.buffer(1e-9).contains(h.polygon_wgs84)
        assert h.bbox_wgs84 == pytest.approx(h.polygon_wgs84.bounds)


def test_search_area_in_another_crs(index):
    x0, y0, x1, y1 = index.mosaic_bounds
    area_utm = box(x0, y0, x0 + 70, y0 + 70)  # lower-left corner, in the mosaic CRS
    area84 = reproject_geom(area_utm, index.crs, WGS84)
    for area, crs in ((area_utm, index.crs), (area84, "EPSG:4326")):
        hits = search(index, "anything", k=100, area=area, area_crs=crs)
        assert hits and all(box(*h.bounds).intersects(area_utm.buffer(1e-6)) for h in hits)
        assert len(hits) < len(index)


def test_area_outside_and_empty_query(index):
    with pytest.raises(InputError, match="does not overlap"):
        search(index, "x", area=box(0, 0, 1, 1), area_crs="EPSG:4326")
    with pytest.raises(InputError, match="empty query"):
        search(index, "   ")
    with pytest.raises(InputError):
        search(index, "x", k=0)


def test_top_k_ties_and_mask():
    v = np.array([0.5, 0.9, 0.9, 0.1])
    assert top_k(v, 2).tolist() == [1, 2]
    assert top_k(v, 10).tolist() == [1, 2, 0, 3]
    assert top_k(v, 2, mask=np.array([True, False, True, True])).tolist() == [2, 0]


def test_text_cache(index):
    model = index.model()
    a = model.encode_text(["harbour"])
    assert "harbour" in model._text_cache
    assert np.array_equal(model.encode_text(["harbour"]), a)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_settings):
    """Two indexes of one model over side-by-side rasters: the shards of one area."""
    tmp = tmp_path_factory.mktemp("shards")
    out = []
    for i, x in enumerate((500000.0, 500256.0)):
        raster = write_raster(tmp / f"m{i}.tif", width=256, height=256, origin=(x, 4500000.0), seed=i)
        build_index([raster], tmp / f"shard{i}.duckdb", settings=tiny_settings, progress=False)
        out.append(TileIndex.open(tmp / f"shard{i}.duckdb"))
    return out


def test_a_search_over_shards_is_the_top_k_of_their_union(shards):
    from geosearch.search import search_shards

    vec = shards[0].model().encode_text(["a bright square"])[0]
    # descending score; ties (the two bright squares are alike) by shard, then by row
    union = sorted(
        (-float(s), i, pos, ix.path.name, str(ix.tile_ids[pos]))
        for i, ix in enumerate(shards)
        for pos, s in enumerate(ix.embeddings @ vec)
    )[:8]
    hits = search_shards(shards, "a bright square", k=8)
    assert [h.rank for h in hits] == list(range(1, 9))
    assert {h.index for h in hits} == {"shard0.duckdb", "shard1.duckdb"}  # both shards contribute
    assert [h.score for h in hits] == pytest.approx([-u[0] for u in union], abs=1e-5)
    # the same tiles, up to the order of scores equal to float precision
    assert {(h.index, h.tile_id) for h in hits} == {(u[3], u[4]) for u in union}
    assert hits[0].as_dict()["index"] in {"shard0.duckdb", "shard1.duckdb"}


def test_a_shard_search_skips_shards_outside_the_area_and_refuses_mixed_models(shards):
    import copy

    from geosearch.search import search_shards

    x0, y0, x1, y1 = shards[1].mosaic_bounds
    inside_second = box(x0 + 10, y0 + 10, x1 - 10, y1 - 10)
    hits = search_shards(shards, "anything", k=20, area=inside_second, area_crs=shards[1].crs)
    assert hits and {h.index for h in hits} == {"shard1.duckdb"}
    with pytest.raises(InputError, match="does not overlap"):
        search_shards(shards, "anything", area=box(0, 0, 1, 1), area_crs="EPSG:4326")
    other = copy.copy(shards[1])
    other.meta = {**other.meta, "model_id": "another-model@0"}
    with pytest.raises(InputError, match="different models"):
        search_shards([shards[0], other], "anything")


def test_geosearch_search_takes_a_glob_of_shards(shards, capsys):
    import json

    from geosearch_server.cli import main

    pattern = str(shards[0].path.parent / "shard*.duckdb")
    assert main(["search", pattern, "a bright square", "-k", "5", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 5 and all(r["index"].startswith("shard") for r in rows)
    assert main(["search", pattern, "a bright square", "-k", "3"]) == 0
    assert "shard" in capsys.readouterr().out  # the table names each hit's shard
    assert main(["search", str(shards[0].path.parent / "none*.duckdb"), "x"]) == 2
    assert "no index file matches" in capsys.readouterr().err
