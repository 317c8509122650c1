"""Shared helpers of the refinement engine: reading and embedding windows, text vectors, geometry.

Everything here works on an open :class:`~geosearch.index.TileIndex`; bounds are in the mosaic CRS.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import shapely
from shapely.geometry import box

from geosearch.geo import Bounds, as_crs, reproject_geom
from geosearch.index import TileIndex
from geosearch.search import text_vector

_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="geosearch-refine")
    return _POOL


def query_vector(index: TileIndex, prompts: str | Sequence[str] | np.ndarray) -> np.ndarray:
    """Unit text vector of a prompt list (mean of the prompt embeddings), or a given vector."""
    if isinstance(prompts, np.ndarray):
        v = prompts.astype(np.float32)
        return v / (np.linalg.norm(v) + 1e-12)
    return text_vector(index, [prompts] if isinstance(prompts, str) else list(prompts))


def read_windows(index: TileIndex, bounds_list: Sequence[Bounds], size: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Read windows at ``size`` px (default: the model's input size); returns (N, S, S, 3) uint8
    images and their valid fractions. Each window is one counted :meth:`Mosaic.read`."""
    mosaic = index.mosaic()
    size = int(size or index.model().image_size)
    if not bounds_list:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros(0)
    reads = list(_pool().map(lambda b: mosaic.read(tuple(b), size), bounds_list))
    return np.stack([r.rgb for r in reads]), np.array([r.valid_fraction for r in reads])


def embed_windows(index: TileIndex, bounds_list: Sequence[Bounds], size: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (N, D) and valid fractions of the windows (read at the model's input size)."""
    images, valid = read_windows(index, bounds_list, size)
    if not len(images):
        return np.zeros((0, index.embeddings.shape[1]), np.float32), valid
    return index.model().encode_images(images), valid


def bounds_polygon(bounds: Bounds):
    return box(*bounds)


def to_wgs84(index: TileIndex, geom):
    """A mosaic-CRS geometry in EPSG:4326 (edges densified so that curved edges stay close)."""
    crs = index.crs
    if as_crs(crs).is_geographic:
        return reproject_geom(geom, crs, "EPSG:4326")
    x0, y0, x1, y1 = geom.bounds
    step = max(x1 - x0, y1 - y0) / 4 or 1.0
    return reproject_geom(shapely.segmentize(geom, step), crs, "EPSG:4326")


def iou(a, b) -> float:
    inter = a.intersection(b).area
    if inter <= 0:
        return 0.0
    return float(inter / (a.area + b.area - inter))


def window_scale_m(index: TileIndex, bounds: Bounds) -> float:
    """Ground width (metres) of a window, from the mosaic's pixel size in metres."""
    mosaic = index.mosaic()
    return float((bounds[2] - bounds[0]) / mosaic.res[0] * mosaic.pixel_size_m[0])
