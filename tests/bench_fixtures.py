"""A tiny generated benchmark folder (FORMAT.md) for the evaluation tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import box, mapping

from geosearch.geo import WGS84, reproject_geom

CRS = "EPSG:32633"
ORIGIN = (500_000.0, 4_650_000.0)  # top-left, metres
SIZE = 512  # pixels at 1 m
PATCHES = {  # region id -> (label, colour, col px, row px, size px)
    "r0": ("red square", (220, 30, 30), 0, 0, 128),
    "r1": ("green square", (30, 200, 40), 256, 0, 128),
    "r2": ("green square", (40, 180, 60), 0, 256, 128),
    "r3": ("blue square", (30, 40, 220), 256, 256, 256),
}


def patch_polygon_utm(col: int, row: int, size: int):
    x0, y1 = ORIGIN[0] + col, ORIGIN[1] - row
    return box(x0, y1 - size, x0 + size, y1)


def make_bench(
    root: Path, *, extra_props: bool = False, layers: bool = False, absent: bool = True, name: str = "tiny"
) -> Path:
    root = Path(root)
    (root / "mosaic").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    img = rng.integers(100, 140, size=(3, SIZE, SIZE), dtype=np.uint8)
    for _label, colour, c, r, s in PATCHES.values():
        for b in range(3):
            img[b, r : r + s, c : c + s] = colour[b]
    profile = {
        "driver": "GTiff",
        "width": SIZE,
        "height": SIZE,
        "count": 3,
        "dtype": "uint8",
        "crs": CRS,
        "transform": from_origin(ORIGIN[0], ORIGIN[1], 1.0, 1.0),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    with rasterio.open(root / "mosaic" / "tiny.tif", "w", **profile) as dst:
        dst.write(img)
    feats = []
    for rid, (label, _colour, c, r, s) in PATCHES.items():
        props = {"id": rid, "label": label}
        if extra_props:
            props.update({"source": "hand-made", "area_m2": float(s * s), "notes": None})
        feats.append(
            {
                "type": "Feature",
                "properties": props,
                "geometry": mapping(reproject_geom(patch_polygon_utm(c, r, s), CRS, WGS84)),
            }
        )
    (root / "regions.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    queries = [
        {"id": "q0", "text": "a red square", "type": "object", "relevant": {"r0": 2}},
        {"id": "q1", "text": "a green square", "type": "object", "relevant": {"r1": 2, "r2": 1}},
        {"id": "q2", "text": "a large blue area", "type": "scene", "relevant": {"r3": 2}},
    ]
    if absent:
        queries.append({"id": "q3", "text": "a harbour with boats", "type": "absent", "relevant": {}})
    (root / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    (root / "bench.json").write_text(
        json.dumps({"name": name, "description": "generated test bench", "iou": 0.5, "k": [1, 5, 10]})
    )
    if layers:
        (root / "layers").mkdir(exist_ok=True)
        road = reproject_geom(box(ORIGIN[0], ORIGIN[1] - 200, ORIGIN[0] + 512, ORIGIN[1] - 190), CRS, WGS84)
        (root / "layers" / "roads.geojson").write_text(
            json.dumps(
                {
                    "type": "FeatureCollection",
                    "features": [
                        {"type": "Feature", "properties": {"name": "main"}, "geometry": mapping(road)}
                    ],
                }
            )
        )
    return root


def write_rgb(path, img, origin, res: float, crs: str = "EPSG:32633", nodata=None) -> None:
    """A uint8 GeoTIFF of ``img`` (bands, rows, cols) with its top-left corner at ``origin``."""
    import rasterio
    from rasterio.transform import from_origin

    profile = dict(driver="GTiff", width=img.shape[2], height=img.shape[1], count=img.shape[0])
    profile.update(dtype="uint8", crs=crs, transform=from_origin(*origin, res, res))
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(img)
