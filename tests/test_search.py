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
    for h in hits:  # each hit's own score; the ranking score weighs its neighbourhood too
        assert h.tile_score == pytest.approx(ref[index.position(h.tile_id)], abs=1e-5)
    plain = search(index, "a bright square", k=5, context=0)
    assert plain[0].score == plain[0].tile_score == pytest.approx(ref.max(), abs=1e-5)
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
    hits = search_shards(shards, "a bright square", k=8, context=0)  # ranked by own score: comparable
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


def _grid_index(scores: np.ndarray, side: float = 128.0, dates=None) -> TileIndex:
    """A synthetic index: one tile per cell of ``scores`` (rows x cols), tiles overlapping by half
    (stride side / 2), each with a unit vector whose cosine with [1, 0, 0, ...] is its score."""
    from pathlib import Path

    rows, cols = scores.shape
    stride = side / 2
    bounds, emb = [], []
    for r in range(rows):
        for c in range(cols):
            x0, y0 = 500_000 + c * stride, 4_500_000 - r * stride - side
            bounds.append((x0, y0, x0 + side, y0 + side))
            s = float(scores[r, c])
            emb.append([s, np.sqrt(1 - s * s), 0.0, 0.0])
    n = rows * cols
    return TileIndex(
        path=Path("synthetic.duckdb"),
        meta={"crs": "EPSG:32633", "model_id": "synthetic"},
        tile_ids=np.array([f"t{i}" for i in range(n)], dtype=object),
        scales=np.full(n, side),
        bounds=np.array(bounds, float),
        embeddings=np.array(emb, np.float32),
        dates=np.array(dates if dates is not None else [None] * n, dtype=object),
    )


def test_neighbourhoods_are_the_same_scale_and_date_tiles_around_each():
    idx = _grid_index(np.zeros((4, 4)))
    hoods = idx.neighbourhoods(np.arange(16))
    counts = np.array([len(h) for h in hoods]).reshape(4, 4)
    assert counts.tolist() == [[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]]
    assert sorted(hoods[5].tolist()) == [0, 1, 2, 4, 5, 6, 8, 9, 10]  # row 1, col 1 and around it
    # tiles of another date (or scale) at the same places are not each other's neighbours
    two = _grid_index(np.zeros((2, 4)), dates=["2020"] * 4 + ["2022"] * 4)
    two.bounds[4:] = two.bounds[:4]
    two.scales[:2] = 64.0
    assert [sorted(h.tolist()) for h in two.neighbourhoods(np.array([1, 2, 5]))] == [
        [0, 1],
        [2, 3],
        [4, 5, 6],
    ]


def test_a_tile_inside_a_matching_place_outranks_a_lone_look_alike():
    scores = np.zeros((7, 7))
    scores[0:3, 0:3] = 0.6  # a place that matches all around its centre tile (1, 1)
    scores[1, 1] = 0.65
    scores[5, 5] = 0.7  # one tile that scores higher alone, in a place that does not
    idx = _grid_index(scores)
    q = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    alone = search(idx, q, 2, context=0)
    assert alone[0].tile_id == "t40" and alone[0].score == pytest.approx(0.7, abs=1e-6)
    hits = search(idx, q, 2, context=1.0)
    assert hits[0].tile_id == "t8"  # row 1, col 1
    assert hits[0].tile_score == pytest.approx(0.65, abs=1e-6)
    assert hits[0].score == pytest.approx((0.65 + (0.65 + 8 * 0.6) / 9) / 2, abs=1e-6)
    lone = next(h for h in search(idx, q, 49, context=1.0) if h.tile_id == "t40")
    assert lone.tile_score == pytest.approx(0.7, abs=1e-6)
    assert lone.score == pytest.approx((0.7 + 0.7 / 9) / 2, abs=1e-6)  # its own score and its 9 tiles' mean
