"""Shared helpers of the refinement engine: query vectors, window bounds, reading and embedding
windows. Everything here works on an open :class:`~geosearch.index.TileIndex`; bounds are in the
mosaic CRS."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from geosearch.errors import InputError
from geosearch.geo import WGS84, Bounds, reproject_bounds
from geosearch.index import TileIndex
from geosearch.search import text_vector

_POOL: ThreadPoolExecutor | None = None
NEGATIVE_WEIGHT = 0.5  # share of the negative prompts' mean embedding subtracted from the query vector


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="geosearch-refine")
    return _POOL


def query_vector(
    index: TileIndex,
    prompts: str | Sequence[str] | np.ndarray,
    negative: Sequence[str] | None = None,
    neg_weight: float = NEGATIVE_WEIGHT,
) -> np.ndarray:
    """Unit text vector of a prompt list (mean of the prompt embeddings), minus ``neg_weight`` times
    the negative prompts' mean embedding when ``negative`` is given; or a given vector, normalised."""
    if isinstance(prompts, np.ndarray):
        v = prompts.astype(np.float32)
        return v / (np.linalg.norm(v) + 1e-12)
    vec = text_vector(index, [prompts] if isinstance(prompts, str) else list(prompts))
    negative = [n for n in (negative or []) if n and n.strip()]
    if negative:
        vec = vec - neg_weight * text_vector(index, negative)
        vec = vec / (np.linalg.norm(vec) + 1e-12)
    return vec.astype(np.float32)


def window_bounds(index: TileIndex, tile: str | None, bbox: Sequence[float] | None) -> Bounds:
    """A window in the mosaic CRS from a tile id or a bbox (EPSG:4326), clipped to the mosaic."""
    if (tile is None) == (bbox is None):
        raise InputError("give exactly one of tile (a tile id) or bbox ([minx, miny, maxx, maxy] lon/lat)")
    if tile is not None:
        return tuple(float(v) for v in index.bounds[index.position(tile)])  # type: ignore[return-value]
    b = reproject_bounds(tuple(bbox), WGS84, index.crs)  # type: ignore[arg-type]
    mb = index.mosaic_bounds
    x0, y0, x1, y1 = max(b[0], mb[0]), max(b[1], mb[1]), min(b[2], mb[2]), min(b[3], mb[3])
    if not (x1 > x0 and y1 > y0):
        raise InputError(
            "the bbox does not overlap the indexed mosaic "
            f"(mosaic bbox in EPSG:4326: {[round(v, 6) for v in index.bounds_wgs84]})"
        )
    return (x0, y0, x1, y1)


def read_windows(
    index: TileIndex, bounds_list: Sequence[Bounds], size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read windows at ``size`` px (default: the model's input size); returns (N, S, S, 3) uint8
    images and their valid fractions. Each window is one counted :meth:`Mosaic.read`."""
    mosaic = index.mosaic()
    size = int(size or index.model().image_size)
    if not bounds_list:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros(0)
    reads = list(_pool().map(lambda b: mosaic.read(tuple(b), size), bounds_list))
    return np.stack([r.rgb for r in reads]), np.array([r.valid_fraction for r in reads])


def embed_windows(
    index: TileIndex, bounds_list: Sequence[Bounds], size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (N, D) and valid fractions of the windows (read at the model's input size)."""
    images, valid = read_windows(index, bounds_list, size)
    if not len(images):
        return np.zeros((0, index.embeddings.shape[1]), np.float32), valid
    return index.model().encode_images(images), valid


def window_scale_m(index: TileIndex, bounds: Bounds) -> float:
    """Ground width (metres) of a window, from the mosaic's pixel size in metres."""
    mosaic = index.mosaic()
    return float((bounds[2] - bounds[0]) / mosaic.res[0] * mosaic.pixel_size_m[0])
