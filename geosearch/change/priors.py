"""Embedding-field priors: AlphaEarth-format rasters pooled per tile.

Format (Google's AlphaEarth Foundations "satellite embedding" COGs): 64 bands of int8, one
64-dimensional unit vector per pixel (usually 10 m), nodata ``-128``. Values are quantised with a
square-root law; dequantise with ``sign(v) * (|v| / 127.5) ** 2`` (so 127 -> 0.992, -64 ->
-(64/127.5)²). Pooling a tile = mean of its valid pixels' vectors, renormalised to unit length.

The prior is a *second* embedding of the same ground, independent of the text model. It is used
(a) to narrow coarse search: keep the tiles whose prior vector is close to the prior centroid of the
top text hits (or of a query example), and (b) as a reranking feature (see
:mod:`geosearch.change.methods`, method ``coarse+prior``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.windows import from_bounds

from geosearch.errors import InputError
from geosearch.geo import as_crs, reproject_bounds

NODATA = -128
BANDS = 64


def dequantize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 AlphaEarth values -> (float32 values, valid mask). Nodata (-128) becomes NaN."""
    v = np.asarray(values)
    valid = v != NODATA
    f = v.astype(np.float32)
    out = np.sign(f) * (np.abs(f) / 127.5) ** 2
    out[~valid] = np.nan
    return out.astype(np.float32), valid


def quantize(values: np.ndarray) -> np.ndarray:
    """Inverse of :func:`dequantize` (float in [-1, 1] -> int8 in [-127, 127]); NaN -> -128."""
    x = np.asarray(values, dtype=np.float64)
    q = np.sign(x) * np.sqrt(np.abs(np.nan_to_num(x))) * 127.5
    q = np.clip(np.round(q), -127, 127)
    q[~np.isfinite(x)] = NODATA
    return q.astype(np.int8)


def check_prior_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"embedding prior file not found: {path}")
    try:
        with rasterio.open(path) as ds:
            count, dtype, crs = ds.count, ds.dtypes[0], ds.crs
    except RasterioIOError as exc:
        raise InputError(f"not a readable raster: {path}") from exc
    if count != BANDS or dtype != "int8":
        raise InputError(
            f"{path.name} is not an AlphaEarth-format embedding field: it has {count} band(s) of "
            f"{dtype}, expected {BANDS} bands of int8"
        )
    if crs is None:
        raise InputError(f"embedding prior {path.name} has no CRS")
    return path


def pool_tiles(
    path: str | Path, bounds: np.ndarray, crs, max_side: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Per tile (bounds (N, 4) in ``crs``) the unit mean prior vector of its valid pixels.

    Returns ``(vectors (N, 64) float32, has_prior (N,) bool)``; tiles without any valid prior pixel
    get a zero vector and ``False``. The prior is read once over the tiles' extent."""
    path = check_prior_file(path)
    bounds = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
    out = np.zeros((len(bounds), BANDS), np.float32)
    has = np.zeros(len(bounds), bool)
    if not len(bounds):
        return out, has
    with rasterio.open(path) as ds:
        pcrs = ds.crs
        tb = (
            np.array([reproject_bounds(tuple(b), crs, pcrs) for b in bounds])
            if as_crs(crs) != as_crs(pcrs)
            else bounds
        )
        ext = (
            max(tb[:, 0].min(), ds.bounds.left),
            max(tb[:, 1].min(), ds.bounds.bottom),
            min(tb[:, 2].max(), ds.bounds.right),
            min(tb[:, 3].max(), ds.bounds.top),
        )
        if ext[2] <= ext[0] or ext[3] <= ext[1]:
            raise InputError(f"embedding prior {path.name} does not overlap the indexed area")
        win = from_bounds(*ext, transform=ds.transform).round_offsets().round_lengths()
        w, h = max(1, int(win.width)), max(1, int(win.height))
        f = max(1.0, max(w, h) / max_side)
        oh, ow = max(1, int(math.ceil(h / f))), max(1, int(math.ceil(w / f)))
        raw = ds.read(window=win, out_shape=(BANDS, oh, ow), resampling=Resampling.nearest)
        wt = ds.window_transform(win)
    vals, valid = dequantize(raw)
    ok = valid.all(axis=0)
    x0, y1 = wt.c, wt.f
    px, py = abs(wt.a) * (w / ow), abs(wt.e) * (h / oh)
    c0 = np.clip(np.floor((tb[:, 0] - x0) / px).astype(int), 0, ow)
    c1 = np.clip(np.ceil((tb[:, 2] - x0) / px).astype(int), 0, ow)
    r0 = np.clip(np.floor((y1 - tb[:, 3]) / py).astype(int), 0, oh)
    r1 = np.clip(np.ceil((y1 - tb[:, 1]) / py).astype(int), 0, oh)

    def integral(a):
        return np.pad(a.cumsum(0).cumsum(1), ((1, 0), (1, 0)))

    def box(ii):
        return ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]

    n = box(integral(ok.astype(np.float64)))
    for b in range(BANDS):
        out[:, b] = box(integral(np.where(ok, vals[b], 0.0).astype(np.float64)))
    has = n > 0
    out[has] /= n[has, None]
    norm = np.linalg.norm(out, axis=1)
    has &= norm > 1e-12
    out[has] /= norm[has, None]
    out[~has] = 0.0
    return out, has


_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def index_prior(index, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Prior vectors for every tile row of ``index`` (cached per index file and prior file)."""
    path = Path(path)
    key = (str(index.path), len(index), str(path.resolve()), path.stat().st_mtime if path.exists() else 0)
    if key not in _CACHE:
        _CACHE[key] = pool_tiles(path, index.bounds, index.crs)
    return _CACHE[key]


def prior_path(index, options: dict | None = None) -> Path:
    """The prior file named by ``options['prior']`` or the index meta key ``embedding_prior``."""
    value = (options or {}).get("prior") or index.meta.get("embedding_prior")
    if not value:
        raise InputError(
            "no embedding prior: give options {'prior': PATH} or attach one to the index "
            "(geosearch.change.priors.attach_prior(INDEX, PATH): meta key 'embedding_prior')"
        )
    return check_prior_file(value)


def centroid(vectors: np.ndarray, has: np.ndarray | None = None) -> np.ndarray | None:
    v = vectors if has is None else vectors[has]
    if not len(v):
        return None
    c = v.mean(axis=0)
    n = np.linalg.norm(c)
    return c / n if n > 1e-12 else None


def attach_prior(index_path: str | Path, prior: str | Path) -> None:
    """Record ``prior`` in the index meta key ``embedding_prior`` (used when no option names one)."""
    import json

    from geosearch import db

    prior = check_prior_file(prior).resolve()
    con = db.connect(Path(index_path))
    try:
        con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", ["embedding_prior", json.dumps(str(prior))])
    finally:
        con.close()
