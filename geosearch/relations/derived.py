"""Layers derived from imagery where no vector data exists: water, vegetation, built-up.

A raster is read decimated (``out_shape``), a spectral index is thresholded, the mask is polygonised
with ``rasterio.features.shapes``, reprojected to the metric CRS, simplified, cleaned of tiny parts
and stored as a layer with ``derived = true``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.errors
import rasterio.features
import shapely
from affine import Affine
from pyproj import CRS
from rasterio.enums import Resampling
from shapely.geometry import Polygon, shape

from geosearch import remote
from geosearch.errors import GeoSearchError
from geosearch.relations.layers import (
    IndexRef,
    LayerInfo,
    choose_metric_crs,
    crs_to_string,
    open_index,
    store_layer,
)
from geosearch.relations.safety import DERIVED_KINDS, validate_layer_name

DEFAULT_THRESHOLDS = {"water": 0.1, "vegetation": 0.3, "built_up": 0.0}
#: built-up without SWIR: NDVI must stay below this and brightness above ``threshold`` (0..1)
BUILT_MAX_NDVI = 0.15
BUILT_NO_SWIR_BRIGHTNESS = 0.45


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (a - b) / (a + b)
    return np.where(np.isfinite(out), out, np.nan)


def ndwi(green: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """McFeeters NDWI = (G - NIR) / (G + NIR)."""
    return _ratio(green.astype("float64"), nir.astype("float64"))


def ndvi(nir: np.ndarray, red: np.ndarray) -> np.ndarray:
    """NDVI = (NIR - R) / (NIR + R)."""
    return _ratio(nir.astype("float64"), red.astype("float64"))


def ndbi(swir: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """NDBI = (SWIR - NIR) / (SWIR + NIR)."""
    return _ratio(swir.astype("float64"), nir.astype("float64"))


def _raster_path(raster: str | Path) -> Path | str:
    """A local raster as a path; a URL or GDAL path (``/vsi...``) kept as given."""
    s = str(raster)
    return s if remote.is_url(s) or s.startswith("/vsi") else Path(raster)


def read_bands(
    raster: str | Path | None,
    bands: dict[str, int],
    *,
    band_files: dict[str, str | Path] | None = None,
    max_size: int = 1024,
) -> tuple[dict[str, np.ndarray], Any, CRS, np.ndarray]:
    """Read named bands decimated to at most ``max_size`` pixels a side.

    Returns ``(arrays, transform, crs, valid_mask)``. ``band_files`` maps a band role (``green``,
    ``nir``...) to a single-band file and overrides ``raster`` for that role.
    """
    band_files = dict(band_files or {})
    ref_path = (
        _raster_path(raster)
        if raster is not None
        else (_raster_path(next(iter(band_files.values()))) if band_files else None)
    )
    if ref_path is None:
        raise GeoSearchError("no raster given")
    if isinstance(ref_path, Path) and not ref_path.exists():
        raise GeoSearchError(f"raster not found: {ref_path}")
    # a URL: GDAL's range reads with timeouts (geosearch.remote); a local file: GDAL as it is
    env = remote.gdal_env() if isinstance(ref_path, str) else {}
    try:
        with rasterio.Env(**env), rasterio.open(ref_path) as ref:
            if ref.crs is None:
                raise GeoSearchError(f"raster {ref_path} has no CRS")
            scale = max(ref.width, ref.height) / float(max_size)
            factor = max(1.0, scale)
            shape_out = (max(1, int(round(ref.height / factor))), max(1, int(round(ref.width / factor))))
            transform = ref.transform @ Affine.scale(ref.width / shape_out[1], ref.height / shape_out[0])
            crs = CRS.from_user_input(ref.crs.to_wkt())
            ref_nodata = ref.nodata
        arrays: dict[str, np.ndarray] = {}
        valid = np.ones(shape_out, dtype=bool)
        for role, band in bands.items():
            path = _raster_path(band_files[role]) if role in band_files else ref_path
            idx = 1 if role in band_files else band
            with rasterio.Env(**env), rasterio.open(path) as ds:
                if not 1 <= idx <= ds.count:
                    raise GeoSearchError(f"band {idx} for {role} out of range: {path} has {ds.count} band(s)")
                arr = ds.read(idx, out_shape=shape_out, resampling=Resampling.average).astype("float64")
                nodata = ds.nodata if path != ref_path else ref_nodata
            if nodata is not None:
                valid &= arr != nodata
            arrays[role] = arr
    except rasterio.errors.RasterioError as exc:
        raise GeoSearchError(f"cannot read raster {ref_path}: {exc}") from exc
    stack = np.stack(list(arrays.values()))
    valid &= np.any(stack != 0, axis=0)
    return arrays, transform, crs, valid


def compute_mask(kind: str, arrays: dict[str, np.ndarray], threshold: float) -> np.ndarray:
    """Boolean mask of the class ``kind`` from the band arrays."""
    if kind == "water":
        return np.nan_to_num(ndwi(arrays["green"], arrays["nir"]), nan=-1) > threshold
    if kind == "vegetation":
        return np.nan_to_num(ndvi(arrays["nir"], arrays["red"]), nan=-1) > threshold
    veg = np.nan_to_num(ndvi(arrays["nir"], arrays["red"]), nan=1)
    if "swir" in arrays:
        return (np.nan_to_num(ndbi(arrays["swir"], arrays["nir"]), nan=-1) > threshold) & (veg < 0.2)
    vis = np.stack([arrays[k] for k in ("red", "green", "blue")])
    hi = np.nanpercentile(vis, 99) or 1.0
    bright = np.clip(vis.mean(axis=0) / hi, 0, 1)
    return (veg < BUILT_MAX_NDVI) & (bright > threshold)


def polygonize(
    mask: np.ndarray, transform: Any, crs: CRS, metric_crs: CRS, *, simplify_m: float, min_area_m2: float
) -> gpd.GeoDataFrame:
    """Polygons of ``mask`` in ``metric_crs``, simplified, without parts or holes below ``min_area_m2``."""
    polys = [
        shape(geom)
        for geom, value in rasterio.features.shapes(
            mask.astype("uint8"), mask=mask, transform=transform, connectivity=4
        )
        if value == 1
    ]
    gdf = gpd.GeoDataFrame(geometry=polys, crs=crs).to_crs(metric_crs)
    cleaned = []
    for geom in gdf.geometry:
        geom = geom.simplify(simplify_m, preserve_topology=True) if simplify_m > 0 else geom
        for part in getattr(geom, "geoms", [geom]):
            if not isinstance(part, Polygon) or part.area < min_area_m2:
                continue
            holes = [h for h in part.interiors if Polygon(h).area >= min_area_m2]
            cleaned.append(shapely.make_valid(Polygon(part.exterior, holes)))
    out = gpd.GeoDataFrame({"area_m2": [g.area for g in cleaned]}, geometry=cleaned, crs=metric_crs)
    return out[~out.geometry.is_empty]


def derive_layer(
    index: IndexRef,
    raster: str | Path | None,
    kind: str,
    name: str,
    *,
    green: int = 2,
    nir: int = 4,
    red: int = 3,
    blue: int = 1,
    swir: int | None = None,
    threshold: float | None = None,
    band_files: dict[str, str | Path] | None = None,
    max_size: int = 1024,
    min_area_m2: float | None = None,
    simplify_m: float | None = None,
    replace: bool = False,
) -> LayerInfo:
    """Derive a ``water`` (NDWI), ``vegetation`` (NDVI) or ``built_up`` (NDBI, or bright and not green
    without SWIR) layer from a raster and store it with ``derived = true``."""
    name = validate_layer_name(name)
    if kind not in DERIVED_KINDS:
        raise GeoSearchError(f"unknown derived kind {kind!r}; choose one of: {', '.join(DERIVED_KINDS)}")
    thr = DEFAULT_THRESHOLDS[kind] if threshold is None else float(threshold)
    if not math.isfinite(thr) or not -1.0 <= thr <= 1.0:
        raise GeoSearchError(f"invalid threshold {threshold!r}: expected a number in [-1, 1]")
    if kind == "built_up" and swir is None and "swir" not in (band_files or {}) and threshold is None:
        thr = BUILT_NO_SWIR_BRIGHTNESS
    bands: dict[str, int] = {
        "water": {"green": green, "nir": nir},
        "vegetation": {"nir": nir, "red": red},
    }.get(kind, {"nir": nir, "red": red})
    if kind == "built_up":
        if swir is not None or "swir" in (band_files or {}):
            bands["swir"] = swir or 1
        else:
            bands.update({"green": green, "blue": blue})
    arrays, transform, crs, valid = read_bands(raster, bands, band_files=band_files, max_size=max_size)
    mask = compute_mask(kind, arrays, thr) & valid
    if not mask.any():
        raise GeoSearchError(f"no {kind} pixels above threshold {thr} in {raster or band_files}")
    pixel = abs(transform.a)
    bounds = rasterio.transform.array_bounds(mask.shape[0], mask.shape[1], transform)
    wgs_box = gpd.GeoSeries([shapely.box(*bounds)], crs=crs).to_crs("EPSG:4326").total_bounds
    with open_index(index) as con:
        metric = choose_metric_crs(con, tuple(float(v) for v in wgs_box))  # type: ignore[arg-type]
        # pixel size in metres (approximate when the raster is geographic)
        px_m = pixel * (111_320.0 if crs.is_geographic else 1.0)
        gdf = polygonize(
            mask,
            transform,
            crs,
            metric,
            simplify_m=px_m / 2 if simplify_m is None else simplify_m,
            min_area_m2=4 * px_m * px_m if min_area_m2 is None else min_area_m2,
        )
        if gdf.empty:
            raise GeoSearchError(f"all {kind} polygons were smaller than the minimum area")
        params = {
            "kind": kind,
            "threshold": thr,
            "bands": bands,
            "pixel_m": px_m,
            "band_files": {k: str(v) for k, v in (band_files or {}).items()},
        }
        role = {"water": "water", "vegetation": "vegetation", "built_up": "buildings"}[kind]
        return store_layer(
            con,
            name,
            gdf,
            source=str(raster or band_files),
            role=role,
            derived=True,
            metric_crs=crs_to_string(metric),
            replace=replace,
            params=params,
        )
