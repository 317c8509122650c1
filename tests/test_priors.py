"""AlphaEarth-format embedding fields: int8 dequantisation, per-tile pooling, the coarse+prior method.

``write_alphaearth`` generates a file in that exact format: 64 int8 bands, nodata -128, values
quantised with sign(x)·sqrt(|x|)·127.5 (dequantised as sign(v)·(|v|/127.5)²)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geosearch.change.priors import dequantize, pool_tiles, quantize
from geosearch.errors import InputError
from geosearch.index import TileIndex, build_index
from geosearch.pipeline import MethodContext, run_method
from tests.fixtures.rasters import write_raster


def unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def write_alphaearth(
    path: Path, field: np.ndarray, *, crs="EPSG:32633", origin=(500000.0, 4500000.0), res=10.0
) -> Path:
    """``field``: (64, H, W) float vectors (NaN = nodata) -> int8 COG-style GeoTIFF, nodata -128."""
    q = quantize(field)
    profile = dict(
        driver="GTiff",
        width=q.shape[2],
        height=q.shape[1],
        count=64,
        dtype="int8",
        crs=crs,
        transform=from_origin(origin[0], origin[1], res, res),
        nodata=-128,
        tiled=True,
        blockxsize=16,
        blockysize=16,
        compress="deflate",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(q)
    return path


A = unit(np.r_[np.ones(32), np.zeros(32)])
B = unit(np.r_[np.zeros(32), np.ones(32)])


def two_halves(h=16, w=16) -> np.ndarray:
    """West half vector A, east half vector B, the north-west corner pixel nodata."""
    f = np.empty((64, h, w))
    f[:, :, : w // 2] = A[:, None, None]
    f[:, :, w // 2 :] = B[:, None, None]
    f[:, 0, 0] = np.nan
    return f


def test_dequantize_exact_values():
    vals, valid = dequantize(np.array([-128, 127, -64, 0, 1], dtype=np.int8))
    assert valid.tolist() == [False, True, True, True, True]
    assert np.isnan(vals[0])
    assert vals[1] == pytest.approx((127 / 127.5) ** 2) and vals[1] == pytest.approx(0.99217, abs=1e-5)
    assert vals[2] == pytest.approx(-((64 / 127.5) ** 2))
    assert vals[3] == 0 and vals[4] == pytest.approx((1 / 127.5) ** 2)
    x = np.array([-1.0, -0.25, 0.0, 0.3, 1.0, np.nan])
    q = quantize(x)
    assert q.dtype == np.int8 and q[-1] == -128 and q[0] == -127 and q[4] == 127
    back, ok = dequantize(q)
    assert np.allclose(back[:5], x[:5], atol=0.01) and not ok[5]


def test_generated_file_is_alphaearth_format(tmp_path):
    p = write_alphaearth(tmp_path / "ae.tif", two_halves())
    with rasterio.open(p) as ds:
        assert ds.count == 64 and ds.dtypes[0] == "int8" and ds.nodata == -128
        assert ds.read(1)[0, 0] == -128


def test_pool_tiles(tmp_path):
    p = write_alphaearth(tmp_path / "ae.tif", two_halves())  # 160 m x 160 m at 10 m
    x0, y1 = 500000.0, 4500000.0
    bounds = np.array(
        [
            [x0, y1 - 80, x0 + 80, y1],  # west: A (one nodata pixel ignored)
            [x0 + 80, y1 - 160, x0 + 160, y1],  # east: B
            [x0 + 40, y1 - 40, x0 + 120, y1],  # straddles: (A + B) renormalised
            [x0 + 1000, y1, x0 + 1100, y1 + 100],
        ]
    )  # outside
    vec, has = pool_tiles(p, bounds, "EPSG:32633")
    assert has.tolist() == [True, True, True, False]
    assert vec[0] @ A > 0.999 and vec[1] @ B > 0.999
    assert np.allclose(np.linalg.norm(vec[:3], axis=1), 1, atol=1e-5)
    assert vec[2] @ unit(A + B) > 0.99 and np.all(vec[3] == 0)
    # tiles given in another CRS are reprojected onto the prior's grid
    from geosearch.geo import reproject_bounds

    b84 = np.array([reproject_bounds(tuple(bounds[1]), "EPSG:32633", "EPSG:4326")])
    v84, h84 = pool_tiles(p, b84, "EPSG:4326")
    assert h84[0] and v84[0] @ B > 0.99


def test_bad_prior_files(tmp_path):
    three = write_raster(tmp_path / "rgb.tif", width=16, height=16)
    with pytest.raises(InputError, match="not an AlphaEarth-format"):
        pool_tiles(three, np.array([[0, 0, 1, 1.0]]), "EPSG:32633")
    with pytest.raises(InputError, match="not found"):
        pool_tiles(tmp_path / "nope.tif", np.array([[0, 0, 1, 1.0]]), "EPSG:32633")
    p = write_alphaearth(tmp_path / "ae.tif", two_halves())
    with pytest.raises(InputError, match="does not overlap"):
        pool_tiles(p, np.array([[0, 0, 10, 10.0]]), "EPSG:32633")


def test_coarse_plus_prior_method(tmp_path):
    from geosearch.models import get_model
    from geosearch.settings import Settings

    settings = Settings(model="geosearch-tiny", batch_size=16, scales_m=[64.0], overlap=0.5)
    r = write_raster(tmp_path / "m.tif", width=128, height=128)
    model = get_model("geosearch-tiny", settings=settings)
    build_index([r], tmp_path / "i.duckdb", settings=settings, progress=False, model=model)
    idx = TileIndex.open(tmp_path / "i.duckdb")
    idx.attach_model(model)
    prior = write_alphaearth(tmp_path / "ae.tif", two_halves(13, 13))
    ans = run_method(
        "coarse+prior",
        idx,
        "a bright square",
        5,
        MethodContext(options={"prior": str(prior), "prior_keep": 0.5}),
    )
    assert ans.details["prior_used"] and len(ans.regions) == 5
    assert all("prior_similarity" in r.details for r in ans.regions)
    with pytest.raises(InputError, match="no embedding prior"):
        run_method("coarse+prior", idx, "a bright square", 5, MethodContext())
    from geosearch.change.priors import attach_prior

    attach_prior(tmp_path / "i.duckdb", prior)
    idx2 = TileIndex.open(tmp_path / "i.duckdb")
    idx2.attach_model(model)
    again = run_method("coarse+prior", idx2, "a bright square", 5, MethodContext())
    assert again.details["prior_used"]
