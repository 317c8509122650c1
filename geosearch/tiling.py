"""Multi-scale tiling defined in metres.

A scale of S metres means tiles S metres wide on the ground, whatever the CRS: in a geographic CRS
the tile size in degrees comes from the geodesic pixel size at the mosaic's centre. Tiles step by
``S * (1 - overlap)``; the last row/column is shifted inward so tiles never hang over the edge.
Tile ids (``s256_r3_c7``) depend only on the scale and grid position, so they are stable between
runs and resumes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from geosearch.errors import InputError
from geosearch.geo import Bounds

if TYPE_CHECKING:
    from geosearch.mosaic import Mosaic


@dataclass(frozen=True)
class Tile:
    tile_id: str
    scale_m: float
    row: int
    col: int
    bounds: Bounds  # mosaic CRS


def tile_id(scale_m: float, row: int, col: int) -> str:
    return f"s{scale_m:g}_r{row}_c{col}"


def _starts(extent_px: float, size_px: float, stride_px: float) -> list[float]:
    if size_px > extent_px + 1e-6:
        return []
    n = int(math.ceil((extent_px - size_px) / stride_px - 1e-9)) + 1
    return [min(i * stride_px, extent_px - size_px) for i in range(n)]


MIN_TILE_PX = 8  # the smallest tile side in pixels of the mosaic: below, a tile holds no image


def check_scales(mosaic: Mosaic, scales_m: Sequence[float]) -> None:
    """Refuse tile sizes that are not positive numbers of metres, or that span fewer than
    :data:`MIN_TILE_PX` pixels of ``mosaic`` (``--scales 1`` on a 5 m raster would plan millions of
    sub-pixel tiles and never finish)."""
    if not scales_m or any((not np.isfinite(s)) or s <= 0 for s in scales_m):
        raise InputError("tile scales must be positive numbers of metres")
    px = max(mosaic.pixel_size_m)
    small = sorted({float(s) for s in scales_m if s < MIN_TILE_PX * px})
    if small:
        raise InputError(
            f"tile scale {small[0]:g} m is too small for this raster: a tile must span at least "
            f"{MIN_TILE_PX} pixels, i.e. {MIN_TILE_PX * px:g} m at its {px:g} m pixels"
        )


def plan_tiles(mosaic: Mosaic, scales_m: Sequence[float], overlap: float = 0.5) -> list[Tile]:
    """All tiles at every scale over the mosaic's extent (nodata not yet considered)."""
    if not 0 <= overlap < 1:
        raise InputError("overlap must be in [0, 1)")
    check_scales(mosaic, scales_m)
    width_px, height_px = mosaic.size_px
    mx, my = mosaic.pixel_size_m
    x0, _, _, y1 = mosaic.bounds
    tiles: list[Tile] = []
    for scale in sorted(set(float(s) for s in scales_m)):
        tw, th = scale / mx, scale / my
        cols = _starts(width_px, tw, tw * (1 - overlap))
        rows = _starts(height_px, th, th * (1 - overlap))
        for r, py in enumerate(rows):
            for c, px in enumerate(cols):
                bx0 = x0 + px * mosaic.res[0]
                by1 = y1 - py * mosaic.res[1]
                tiles.append(
                    Tile(
                        tile_id(scale, r, c),
                        scale,
                        r,
                        c,
                        (bx0, by1 - th * mosaic.res[1], bx0 + tw * mosaic.res[0], by1),
                    )
                )
    return tiles


def valid_fractions(mosaic: Mosaic, tiles: Sequence[Tile]) -> np.ndarray:
    """Share of valid (non-nodata) pixels in each tile, from one coarse mask of the mosaic."""
    if not tiles:
        return np.zeros(0)
    from rasterio.transform import rowcol

    mask, transform = mosaic.valid_mask()
    integral = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = mask.shape
    b = np.array([t.bounds for t in tiles], np.float64)
    r0, c0 = (np.asarray(v).astype(np.int64) for v in rowcol(transform, b[:, 0], b[:, 3], op=np.floor))
    r1, c1 = (np.asarray(v).astype(np.int64) for v in rowcol(transform, b[:, 2], b[:, 1], op=np.ceil))
    r0, c0 = np.maximum(r0, 0), np.maximum(c0, 0)
    r1, c1 = np.minimum(h, np.maximum(r1, r0 + 1)), np.minimum(w, np.maximum(c1, c0 + 1))
    area = (r1 - r0) * (c1 - c0)
    total = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
    return np.where(area > 0, total / np.maximum(area, 1), 0.0)


def tiles_for_mosaic(
    mosaic: Mosaic, scales_m: Sequence[float], overlap: float = 0.5, min_valid_fraction: float = 0.05
) -> tuple[list[Tile], np.ndarray]:
    """Tiles worth embedding: planned tiles whose valid share exceeds ``min_valid_fraction``."""
    tiles = plan_tiles(mosaic, scales_m, overlap)
    frac = valid_fractions(mosaic, tiles)
    keep = frac > max(min_valid_fraction, 0.0)
    return [t for t, k in zip(tiles, keep) if k], frac[keep]
