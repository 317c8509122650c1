"""Spectral indices per tile from the bands beyond RGB (NIR, SWIR), as ranking features.

The RGB embedding stays the model's input; these are extra per-tile features. NDVI and NDWI reuse
the relations package's formulas (:mod:`geosearch.relations.derived`, which also turns them into
derived *layers*: ``geosearch layers derive``); this module only pools them per tile.

Bare-soil index: BSI = ((SWIR + R) - (NIR + B)) / ((SWIR + R) + (NIR + B)); without a SWIR band
(NAIP RGBN) R stands in for SWIR: (2R - NIR - B) / (2R + NIR + B).

Band roles (1-based) come from ``band_roles`` or, by band count: 4 -> R G B NIR (NAIP),
13 / 12 -> Sentinel-2 (B4 B3 B2 B8 B11), 8+ with "landsat" unknown -> must be given.
"""

from __future__ import annotations

import math

import numpy as np

from geosearch.errors import InputError
from geosearch.mosaic import Mosaic

FEATURES = ("ndvi", "ndwi", "bsi")

DEFAULT_ROLES = {
    4: {"red": 1, "green": 2, "blue": 3, "nir": 4},
    5: {"red": 1, "green": 2, "blue": 3, "nir": 4, "swir": 5},
    12: {"red": 4, "green": 3, "blue": 2, "nir": 8, "swir": 11},  # Sentinel-2 L2A (no B10)
    13: {"red": 4, "green": 3, "blue": 2, "nir": 8, "swir": 12},  # Sentinel-2 L1C
}


def band_roles(count: int, roles: dict[str, int] | None = None) -> dict[str, int]:
    roles = dict(roles or DEFAULT_ROLES.get(count, {}))
    if "nir" not in roles:
        raise InputError(
            f"spectral indices need a near-infrared band; the mosaic has {count} band(s) "
            "(give band roles, e.g. {'red': 1, 'green': 2, 'blue': 3, 'nir': 4})"
        )
    bad = {k: v for k, v in roles.items() if not 1 <= int(v) <= count}
    if bad:
        raise InputError(f"band roles {bad} out of range: the mosaic has {count} band(s)")
    return roles


def index_maps(bands: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """NDVI, NDWI and BSI maps from named band arrays (NaN where undefined)."""
    from geosearch.relations.derived import ndvi, ndwi

    r, g, b, n = (bands[k].astype(np.float64) for k in ("red", "green", "blue", "nir"))
    swir_r = bands["swir"].astype(np.float64) + r if "swir" in bands else 2 * r
    with np.errstate(divide="ignore", invalid="ignore"):
        bsi = (swir_r - (n + b)) / (swir_r + (n + b))
    return {"ndvi": ndvi(n, r), "ndwi": ndwi(g, n), "bsi": np.where(np.isfinite(bsi), bsi, np.nan)}


def tile_features(
    mosaic: Mosaic, bounds: np.ndarray, roles: dict[str, int] | None = None, max_side: int = 1024
) -> dict[str, np.ndarray]:
    """Mean NDVI / NDWI / BSI of the valid pixels of each tile (bounds (N, 4), mosaic CRS).

    The mosaic is read once, decimated to ``max_side`` pixels, and pooled with integral images."""
    roles = band_roles(mosaic.count, roles)
    w, h = mosaic.size_px
    scale = max(1.0, max(w, h) / max_side)
    mh, mw = max(1, int(math.ceil(h / scale))), max(1, int(math.ceil(w / scale)))
    img = mosaic.read(mosaic.bounds, (mh, mw), all_bands=True)
    named = {k: img.bands[int(v) - 1] for k, v in roles.items()}
    if "red" not in named or "green" not in named or "blue" not in named:
        raise InputError("spectral indices need red, green, blue and nir band roles")
    maps = index_maps(named)
    x0, y0, x1, y1 = mosaic.bounds
    px, py = (x1 - x0) / mw, (y1 - y0) / mh
    c0 = np.clip(np.floor((bounds[:, 0] - x0) / px).astype(int), 0, mw)
    c1 = np.clip(np.ceil((bounds[:, 2] - x0) / px).astype(int), 0, mw)
    r0 = np.clip(np.floor((y1 - bounds[:, 3]) / py).astype(int), 0, mh)
    r1 = np.clip(np.ceil((y1 - bounds[:, 1]) / py).astype(int), 0, mh)
    out = {}
    for name, arr in maps.items():
        ok = img.mask & np.isfinite(arr)
        vals = np.pad(np.where(ok, arr, 0.0).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        cnt = np.pad(ok.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

        def box_sum(ii):
            return ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]

        n = box_sum(cnt)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[name] = np.where(n > 0, box_sum(vals) / np.maximum(n, 1), np.nan)
    return out


# Query words -> (feature, sign): the spectral change a change query implies.
KEYWORDS: list[tuple[str, str, float]] = [
    (r"\b(water|flood\w*|lake|pond|wetland|inundat\w*|slough)\b", "ndwi", 1.0),
    (r"\b(bare|plough\w*|plow\w*|tilled|cleared|harvest\w*|fallow|soil|dirt)\b", "bsi", 1.0),
    (r"\b(cleared|harvest\w*|bare|plough\w*|plow\w*|tilled|fallow)\b", "ndvi", -1.0),
    (r"\b(planted|crops?|vegetat\w*|green\w*|grass\w*|trees?|forest\w*|meadow)\b", "ndvi", 1.0),
    (r"\b(buildings?|houses?|construct\w*|built|roads?|pads?|paved|farmsteads?|barns?)\b", "ndvi", -1.0),
]


def query_direction(subject: str) -> dict[str, float]:
    """Which spectral index the query's subject should raise (+) or lower (-) at the later date."""
    import re

    out: dict[str, float] = {}
    for pattern, feat, sign in KEYWORDS:
        if re.search(pattern, subject, flags=re.IGNORECASE):
            out[feat] = out.get(feat, 0.0) + sign
    return out
