import numpy as np
import pytest

from geosearch.errors import InputError
from geosearch.geo import WGS84, reproject_bounds, transformer
from geosearch.mosaic import open_mosaic
from tests.fixtures.rasters import write_raster


def test_multi_file_mosaic_reads_across_files(tmp_path):
    left = np.full((3, 100, 100), 50, np.uint8)
    right = np.full((3, 100, 100), 200, np.uint8)
    write_raster(tmp_path / "m" / "a.tif", width=100, height=100, data=left, origin=(500000, 4500000))
    write_raster(tmp_path / "m" / "b.tif", width=100, height=100, data=right, origin=(500100, 4500000))
    m = open_mosaic(tmp_path / "m")
    assert m.size_px == (200, 100)
    img = m.read(m.bounds, (50, 100))
    assert img.rgb.shape == (50, 100, 3)
    assert img.mask.all()
    assert img.rgb[:, :45, 0].mean() == pytest.approx(50, abs=1)
    assert img.rgb[:, 55:, 0].mean() == pytest.approx(200, abs=1)


def test_mixed_crs_refused(tmp_path):
    write_raster(tmp_path / "m" / "a.tif", crs="EPSG:32633")
    write_raster(tmp_path / "m" / "b.tif", crs="EPSG:32634")
    with pytest.raises(InputError, match="mixed CRS"):
        open_mosaic(tmp_path / "m")


def test_missing_and_not_a_raster(tmp_path):
    with pytest.raises(InputError, match="not found"):
        open_mosaic(tmp_path / "nope.tif")
    bad = tmp_path / "bad.tif"
    bad.write_text("hello, not a raster")
    with pytest.raises(InputError, match="not a readable raster"):
        open_mosaic(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no raster files"):
        open_mosaic(tmp_path / "empty")


def test_uint16_single_band_percentile_stretch(tmp_path):
    rng = np.random.default_rng(1)
    data = (rng.random((1, 128, 128)) * 3000 + 200).astype("uint16")
    m = open_mosaic(
        write_raster(tmp_path / "p.tif", count=1, dtype="uint16", data=data, width=128, height=128)
    )
    img = m.read(m.bounds, 128)
    assert img.rgb.dtype == np.uint8
    assert (img.rgb[..., 0] == img.rgb[..., 1]).all()  # grey replicated to RGB
    assert img.rgb.min() == 0 and img.rgb.max() == 255  # 2-98 % stretch saturates the tails
    assert 90 < img.rgb.mean() < 165


def test_band_selection_and_float(tmp_path):
    data = np.stack([np.full((64, 64), v, np.float32) for v in (0.1, 0.2, 0.3, 0.9)])
    m = open_mosaic(
        write_raster(tmp_path / "f.tif", count=4, dtype="float32", data=data, width=64, height=64),
        bands=[4, 3, 2],
        stretch="minmax",
    )
    assert m.bands == (4, 3, 2)
    img = m.read(m.bounds, 32, all_bands=True)
    assert img.bands.shape == (4, 32, 32)
    assert img.bands[3].mean() == pytest.approx(0.9, abs=1e-5)
    with pytest.raises(InputError, match="out of range"):
        open_mosaic(tmp_path / "f.tif", bands=[5, 1, 2])


def test_nodata_mask(tmp_path):
    data = np.full((3, 64, 64), 120, np.uint8)
    data[:, :32] = 0
    m = open_mosaic(write_raster(tmp_path / "n.tif", data=data, width=64, height=64, nodata=0))
    img = m.read(m.bounds, 64)
    assert img.valid_fraction == pytest.approx(0.5, abs=0.02)
    assert (img.rgb[~img.mask] == 0).all()


def test_overview_read_counts(tmp_path):
    m = open_mosaic(write_raster(tmp_path / "o.tif", width=512, height=512, overviews=True))
    m.read(m.bounds, 64)  # decimated read: not full resolution
    x0, y0 = m.bounds[0], m.bounds[1]
    m.read((x0, y0, x0 + 64, y0 + 64), 64)  # 1 m/px window at native resolution
    assert m.stats.reads == 2 and m.stats.full_res_reads == 1


def test_crs_round_trips(tmp_path):
    m = open_mosaic(write_raster(tmp_path / "a.tif", crs="EPSG:32633"))
    col, row = 17.25, 101.5
    x, y = m.pixel_to_map(col, row)
    assert m.map_to_pixel(x, y) == pytest.approx((col, row))
    lon, lat = m.map_to_wgs84(x, y)
    assert 14 < lon < 16 and 40 < lat < 41  # UTM 33N central meridian 15 E, 4500 km north
    x2, y2 = m.wgs84_to_map(lon, lat)
    assert (x2, y2) == pytest.approx((x, y), abs=1e-6)
    b84 = reproject_bounds(m.bounds, m.crs, WGS84)
    back = transformer(WGS84, m.crs).transform(b84[0], b84[1])
    assert back[0] <= m.bounds[0] + 1e-6 and back[1] <= m.bounds[1] + 1e-6


def test_fingerprint_changes_with_content(tmp_path):
    a = open_mosaic(write_raster(tmp_path / "a.tif", seed=1)).fingerprint()
    b = open_mosaic(write_raster(tmp_path / "a.tif", seed=2)).fingerprint()
    assert a != b


def _tile_windows(m, scales=(24.0, 40.0, 100.0)):
    from geosearch.tiling import plan_tiles

    return [t.bounds for t in plan_tiles(m, scales, 0.5)]


def _assert_close_to_window_reads(m, windows, got, size):
    """read_many equals window-by-window reads up to GDAL's rounding (at most 1, rare pixels)."""
    diff = 0
    for b, img in zip(windows, got, strict=True):
        ref = m.read(b, size)
        assert img.bounds == tuple(b) and img.rgb.shape == (size, size, 3)
        assert np.array_equal(img.mask, ref.mask)
        d = np.abs(img.bands - ref.bands)
        assert d.max() <= 1.0
        diff += int((d > 0).sum())
    assert diff <= 1e-4 * len(windows) * size * size * 3


def test_read_many_cuts_tiles_from_strips(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    data = (rng.random((3, 300, 420)) * 255).astype(np.uint8)
    data[:, 40:60, :] = 0  # a nodata band across the rows
    path = write_raster(tmp_path / "t.tif", width=420, height=300, data=data, res=(2.0, 2.0), nodata=0)
    m = open_mosaic(path)
    windows = _tile_windows(m)
    calls = []
    real = type(m)._read_raw
    monkeypatch.setattr(type(m), "_read_raw", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    got = m.read_many(windows, 32)
    assert len(calls) < len(windows) / 4  # overlapping tiles are cut from a few strips
    assert m.stats.reads == len(windows)
    monkeypatch.undo()
    _assert_close_to_window_reads(m, windows, got, 32)
    # the pixels of a window do not depend on how the windows are batched (Ray shards, resumes)
    again = open_mosaic(path)
    order = list(range(len(windows)))[::-1]
    batched = {}
    for s in range(0, len(order), 7):
        part = order[s : s + 7]
        for i, img in zip(part, again.read_many([windows[i] for i in part], 32)):
            batched[i] = img
    assert all(np.array_equal(batched[i].rgb, img.rgb) for i, img in enumerate(got))
    with pytest.raises(ValueError):
        got[0].rgb[0, 0, 0] = 1  # slices of a cached strip are read-only
    alone = again.read_many(windows[:5], 32, strips=False)  # windows of no common grid (proposals)
    assert all(np.array_equal(a.bands, again.read(b, 32).bands) for a, b in zip(alone, windows[:5]))


def test_read_many_across_files_and_off_grid(tmp_path):
    rng = np.random.default_rng(4)
    for name, x in (("a.tif", 500000), ("b.tif", 500200)):
        data = (rng.random((3, 150, 100)) * 255).astype(np.uint8)
        write_raster(
            tmp_path / "m" / name, width=100, height=150, data=data, origin=(x, 4500000), res=(2.0, 2.0)
        )
    m = open_mosaic(tmp_path / "m")
    windows = _tile_windows(m, (30.0, 70.0))
    windows += [(500013.3, 4499800.0, 500043.3, 4499830.0), (500150.0, 4499900.0, 500250.0, 4500000.0)]
    _assert_close_to_window_reads(m, windows, m.read_many(windows, 24), 24)
