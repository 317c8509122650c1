import numpy as np
import pytest
from pyproj import Geod

from geosearch.errors import InputError
from geosearch.mosaic import open_mosaic
from geosearch.tiling import plan_tiles, tiles_for_mosaic
from tests.fixtures.rasters import write_raster


def test_counts_overlap_and_edges(tmp_path):
    m = open_mosaic(write_raster(tmp_path / "a.tif", width=256, height=256))
    tiles = plan_tiles(m, [64, 128], overlap=0.5)
    by_scale = {s: [t for t in tiles if t.scale_m == s] for s in (64.0, 128.0)}
    assert len(by_scale[64.0]) == 7 * 7
    assert len(by_scale[128.0]) == 3 * 3
    t0 = next(t for t in by_scale[64.0] if t.row == 0 and t.col == 0)
    t1 = next(t for t in by_scale[64.0] if t.row == 0 and t.col == 1)
    assert t1.bounds[0] - t0.bounds[0] == pytest.approx(32.0)  # 50 % overlap
    for t in tiles:  # every tile is its full size and inside the mosaic
        assert t.bounds[2] - t.bounds[0] == pytest.approx(t.scale_m)
        assert t.bounds[3] - t.bounds[1] == pytest.approx(t.scale_m)
        assert t.bounds[0] >= m.bounds[0] - 1e-6 and t.bounds[2] <= m.bounds[2] + 1e-6
        assert t.bounds[1] >= m.bounds[1] - 1e-6 and t.bounds[3] <= m.bounds[3] + 1e-6


def test_last_tile_shifted_to_edge(tmp_path):
    m = open_mosaic(write_raster(tmp_path / "a.tif", width=250, height=100))
    tiles = plan_tiles(m, [64], overlap=0.5)
    cols = sorted({t.col for t in tiles})
    assert len(cols) == 7
    last = max(tiles, key=lambda t: t.bounds[2])
    assert last.bounds[2] == pytest.approx(m.bounds[2])
    assert len({t.tile_id for t in tiles}) == len(tiles)


def test_no_overlap_and_scale_larger_than_mosaic(tmp_path):
    m = open_mosaic(write_raster(tmp_path / "a.tif", width=128, height=128))
    tiles = plan_tiles(m, [64, 1024], overlap=0.0)
    assert {t.scale_m for t in tiles} == {64.0}
    assert len(tiles) == 4


def test_stable_ids(tmp_path):
    path = write_raster(tmp_path / "a.tif")
    a = [t.tile_id for t in plan_tiles(open_mosaic(path), [64, 128])]
    b = [t.tile_id for t in plan_tiles(open_mosaic(path), [128, 64])]
    assert sorted(a) == sorted(b)
    assert "s64_r0_c0" in a


def test_nodata_tiles_skipped(tmp_path):
    data = np.full((3, 256, 256), 100, np.uint8)
    data[:, :, :128] = 0  # left half nodata
    m = open_mosaic(write_raster(tmp_path / "a.tif", data=data, nodata=0))
    all_tiles = plan_tiles(m, [64])
    kept, fracs = tiles_for_mosaic(m, [64], 0.5, min_valid_fraction=0.05)
    assert len(kept) < len(all_tiles)
    assert all(t.bounds[2] > m.bounds[0] + 128 for t in kept)  # every kept tile touches valid data
    assert fracs.min() > 0.05 and fracs.max() == pytest.approx(1.0)


def test_metres_in_geographic_crs(tmp_path):
    # 1e-5 degree pixels at 60 N: about 0.56 m east-west and 1.11 m north-south
    path = write_raster(
        tmp_path / "geo.tif", width=400, height=200, crs="EPSG:4326", origin=(10.0, 60.0), res=(1e-5, 1e-5)
    )
    m = open_mosaic(path)
    assert m.pixel_size_m[0] == pytest.approx(0.557, abs=0.01)
    tiles = plan_tiles(m, [64], overlap=0.5)
    geod = Geod(ellps="WGS84")
    for t in tiles[:5]:
        x0, y0, x1, y1 = t.bounds
        width = geod.inv(x0, (y0 + y1) / 2, x1, (y0 + y1) / 2)[2]
        height = geod.inv(x0, y0, x0, y1)[2]
        assert width == pytest.approx(64, rel=0.01)
        assert height == pytest.approx(64, rel=0.01)


def test_bad_scales(tmp_path):
    m = open_mosaic(write_raster(tmp_path / "a.tif"))
    with pytest.raises(InputError):
        plan_tiles(m, [-5])
    with pytest.raises(InputError):
        plan_tiles(m, [64], overlap=1.0)
