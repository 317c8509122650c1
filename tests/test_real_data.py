"""Index and search on real imagery from ../shared/data (skipped when it is absent)."""

import pytest
from shapely.geometry import box

from geosearch.index import TileIndex, build_index
from geosearch.mosaic import open_mosaic
from geosearch.search import search
from geosearch.settings import Settings
from tests.conftest import shared_data

SETTINGS = Settings(model="geosearch-tiny", batch_size=32, scales_m=[128.0, 256.0])


@pytest.mark.data
def test_vegas_epsg4326_four_band(tmp_path):
    tif = shared_data("spacenet-vegas", "RGB-PanSharpen_AOI_2_Vegas_img0.tif")
    m = open_mosaic(tif)
    assert m.count == 4 and m.bands == (1, 2, 3)
    # ~0.3 m pixels: metres measured geodesically even though the CRS is in degrees
    assert 0.2 < m.pixel_size_m[0] < 0.35 and 0.2 < m.pixel_size_m[1] < 0.35
    build_index([tif], tmp_path / "v.duckdb", settings=SETTINGS, progress=False)
    idx = TileIndex.open(tmp_path / "v.duckdb")
    assert set(idx.scales.tolist()) == {128.0, 256.0}
    hits = search(idx, "a road with cars", k=5)
    outline = box(*m.bounds_wgs84).buffer(1e-9)
    assert len(hits) == 5 and all(outline.contains(h.polygon_wgs84) for h in hits)


@pytest.mark.data
def test_atlanta_uint16_single_band(tmp_path):
    tif = shared_data("spacenet-atlanta", "sample_geotiff.tif")
    m = open_mosaic(tif)
    assert m.dtype == "uint16" and m.count == 1
    lo, hi = m.stretch_params[0]
    assert 0 < lo < hi < 65535
    img = m.read(m.bounds, 128)
    assert img.rgb.std() > 10  # stretched to a visible range, not all black
    build_index([tif], tmp_path / "a.duckdb", settings=SETTINGS, progress=False)
    idx = TileIndex.open(tmp_path / "a.duckdb")
    assert len(idx) > 0 and idx.meta["mosaic"]["crs"] == "EPSG:32616"
    hit = search(idx, "buildings", k=1)[0]
    lon, lat = hit.polygon_wgs84.centroid.x, hit.polygon_wgs84.centroid.y
    assert -84.49 < lon < -84.47 and 33.63 < lat < 33.65  # Atlanta
