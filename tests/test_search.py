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
