"""Coordinate helpers: metres in any CRS, WGS84 round trips, search areas."""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import shapely
from pyproj import CRS, Geod, Transformer
from pyproj.exceptions import CRSError
from shapely.geometry import box, mapping, shape

from geosearch.errors import InputError

WGS84 = CRS.from_epsg(4326)
_GEOD = Geod(ellps="WGS84")

Bounds = tuple[float, float, float, float]


def as_crs(crs) -> CRS:
    if isinstance(crs, CRS):
        return crs
    if hasattr(crs, "to_wkt"):
        return CRS.from_wkt(crs.to_wkt())
    try:
        return CRS.from_user_input(crs)
    except CRSError:
        raise InputError(
            f"unknown CRS {crs!r} (give e.g. EPSG:4326, EPSG:32614 or a WKT / PROJ string)"
        ) from None


@lru_cache(maxsize=64)
def _transformer(src_wkt: str, dst_wkt: str) -> Transformer:
    return Transformer.from_crs(CRS.from_wkt(src_wkt), CRS.from_wkt(dst_wkt), always_xy=True)


def transformer(src, dst) -> Transformer:
    """A cached always_xy transformer (x = easting / longitude, y = northing / latitude)."""
    return _transformer(as_crs(src).to_wkt(), as_crs(dst).to_wkt())


def reproject_geom(geom, src, dst):
    if as_crs(src) == as_crs(dst):
        return geom
    t = transformer(src, dst)
    return shapely.transform(geom, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


def reproject_bounds(bounds: Bounds, src, dst, densify: int = 21) -> Bounds:
    if as_crs(src) == as_crs(dst):
        return tuple(bounds)  # type: ignore[return-value]
    return tuple(transformer(src, dst).transform_bounds(*bounds, densify_pts=densify))  # type: ignore[return-value]


def pixel_size_m(crs, transform, bounds: Bounds) -> tuple[float, float]:
    """Ground size of one pixel in metres (x, y), measured geodesically for geographic CRSs."""
    crs = as_crs(crs)
    rx, ry = abs(transform.a), abs(transform.e)
    if crs.is_geographic:
        cx, cy = (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2
        _, _, dx = _GEOD.inv(cx - rx / 2, cy, cx + rx / 2, cy)
        _, _, dy = _GEOD.inv(cx, cy - ry / 2, cx, cy + ry / 2)
        return float(dx), float(dy)
    factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return rx * factor, ry * factor


def utm_crs_for(lon: float, lat: float) -> CRS:
    """The UTM zone CRS of a WGS84 point: a suitable metric CRS for distances and areas."""
    if not (math.isfinite(lon) and math.isfinite(lat)):
        raise InputError("cannot choose a metric CRS: no finite coordinates")
    zone = int(math.floor((lon + 180) / 6) % 60) + 1
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def metric_crs_for_bounds_wgs84(bounds: Bounds) -> CRS:
    return utm_crs_for((bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2)


def area_from_bbox(values: list[float] | tuple[float, ...], crs="EPSG:4326"):
    if len(values) != 4 or not all(np.isfinite(v) for v in values):
        raise InputError("a bbox needs four finite numbers: minx miny maxx maxy")
    minx, miny, maxx, maxy = map(float, values)
    if minx >= maxx or miny >= maxy:
        raise InputError("bbox must satisfy minx < maxx and miny < maxy")
    return box(minx, miny, maxx, maxy), as_crs(crs)


def load_area(source: str | Path | dict) -> tuple[shapely.Geometry, CRS]:
    """Read a search area from a GeoJSON file / dict or any vector file (first layer, union)."""
    if isinstance(source, dict):
        return _geojson_to_geom(source), WGS84
    path = Path(source)
    if not path.is_file():
        raise InputError(f"area file not found: {path}")
    if path.suffix.lower() in {".geojson", ".json"}:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"area file {path} is not valid GeoJSON: {exc}") from exc
        crs = WGS84
        name = (data.get("crs") or {}).get("properties", {}).get("name") if isinstance(data, dict) else None
        if name:
            crs = as_crs(name)
        return _geojson_to_geom(data), crs
    import geopandas as gpd

    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read area file {path}: {exc}") from exc
    if frame.empty or frame.crs is None:
        raise InputError(f"area file {path} is empty or has no CRS")
    return shapely.union_all(frame.geometry.values), as_crs(frame.crs)


def _geojson_to_geom(data: dict):
    try:
        kind = data.get("type")
        if kind == "FeatureCollection":
            geoms = [shape(f["geometry"]) for f in data["features"] if f.get("geometry")]
            if not geoms:
                raise InputError("the area FeatureCollection has no geometry")
            geom = shapely.union_all(geoms)
        elif kind == "Feature":
            geom = shape(data["geometry"])
        else:
            geom = shape(data)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"invalid GeoJSON area: {exc}") from exc
    if geom.is_empty:
        raise InputError("the search area is empty")
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    return geom


def geom_to_geojson(geom) -> dict:
    return mapping(geom)


# --- the geometry toolbox: overlap, suppression, WGS84 output ---------------------------------
def overlap_ratios(a, b) -> tuple[float, float]:
    """(IoU, intersection over the smaller area) of two geometries in one CRS."""
    if a.is_empty or b.is_empty:
        return 0.0, 0.0
    ax0, ay0, ax1, ay1 = a.bounds
    bx0, by0, bx1, by1 = b.bounds
    if ax1 < bx0 or bx1 < ax0 or ay1 < by0 or by1 < ay0:
        return 0.0, 0.0
    inter = a.intersection(b).area
    if inter <= 0:
        return 0.0, 0.0
    union = a.area + b.area - inter
    return (float(inter / union) if union > 0 else 0.0), float(inter / max(min(a.area, b.area), 1e-18))


def iou(a, b) -> float:
    """Intersection over union of two geometries in one CRS (0 when either is empty)."""
    return overlap_ratios(a, b)[0]


def box_intersections(boxes: np.ndarray, one) -> np.ndarray:
    """Intersection area of each row of ``boxes`` (N, 4: minx, miny, maxx, maxy) with ``one``."""
    b = np.asarray(boxes, float).reshape(-1, 4)
    ix = np.clip(np.minimum(b[:, 2], one[2]) - np.maximum(b[:, 0], one[0]), 0, None)
    iy = np.clip(np.minimum(b[:, 3], one[3]) - np.maximum(b[:, 1], one[1]), 0, None)
    return ix * iy


def box_areas(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, float).reshape(-1, 4)
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def box_ious(boxes: np.ndarray, one: np.ndarray) -> np.ndarray:
    """IoU of each row of ``boxes`` (N, 4: minx, miny, maxx, maxy) with the box ``one``."""
    inter = box_intersections(boxes, one)
    area = box_areas(boxes)
    return inter / np.maximum(area + (one[2] - one[0]) * (one[3] - one[1]) - inter, 1e-18)


def crs_units_per_metre(bounds: Bounds, size_px, pixel_size_m) -> tuple[float, float]:
    """(x, y) CRS units per metre of a raster grid: 1 for a metric CRS, about 1e-5 for degrees."""
    return (
        (bounds[2] - bounds[0]) / (size_px[0] * pixel_size_m[0]),
        (bounds[3] - bounds[1]) / (size_px[1] * pixel_size_m[1]),
    )


def nms_boxes(boxes: np.ndarray, n: int, iou_max: float, *, strict: bool = False) -> list[int]:
    """Greedy non-maximum suppression over boxes already sorted best first: the positions of at
    most ``n`` boxes, none overlapping a kept one by IoU >= ``iou_max`` (> with ``strict``)."""
    b = np.asarray(boxes, float).reshape(-1, 4)
    keep: list[int] = []
    for i in range(len(b)):
        if keep:
            worst = box_ious(b[keep], b[i]).max()
            if worst > iou_max or (not strict and worst >= iou_max):
                continue
        keep.append(i)
        if len(keep) >= n:
            break
    return keep


class CentreTree:
    """The centres of a set of boxes (one scale and date of an index's tiles) in a k-d tree, to
    find the boxes around given points without comparing against every box."""

    def __init__(self, positions: np.ndarray, bounds: np.ndarray):
        from scipy.spatial import cKDTree

        b = np.asarray(bounds, float).reshape(-1, 4)
        self.positions = np.asarray(positions)
        self.tree = cKDTree(np.column_stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2]))

    def around(self, points: np.ndarray, half: float) -> list[np.ndarray]:
        """For each (x, y) point, the positions of the boxes whose centres lie within ``half`` of
        it in x and in y (a square, not a disc)."""
        found = self.tree.query_ball_point(np.asarray(points, float).reshape(-1, 2), half, p=np.inf)
        return [self.positions[np.asarray(f, dtype=np.int64)] for f in found]


def square_around(bounds: Bounds, pad: float = 0.0) -> Bounds:
    """The square centred on ``bounds`` whose side is their longer side, times ``1 + pad``."""
    x0, y0, x1, y1 = bounds
    side = max(x1 - x0, y1 - y0) * (1 + pad)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def shift_inside(b: Bounds, outer: Bounds) -> Bounds:
    """``b`` moved (not resized) to lie inside ``outer`` along each axis where it fits."""
    x0, y0, x1, y1 = b
    if x1 - x0 <= outer[2] - outer[0]:
        dx = max(0.0, outer[0] - x0) - max(0.0, x1 - outer[2])
        x0, x1 = x0 + dx, x1 + dx
    if y1 - y0 <= outer[3] - outer[1]:
        dy = max(0.0, outer[1] - y0) - max(0.0, y1 - outer[3])
        y0, y1 = y0 + dy, y1 + dy
    return (x0, y0, x1, y1)


def own_extent_window(bounds: Bounds, mosaic_bounds: Bounds, pad: float = 0.0) -> Bounds:
    """The window a region is embedded in "at its own extent": the square around its bbox
    (``pad``: extra share of the side, 1.0 = twice the side), shifted inside the mosaic. The
    reranker, the index's region proposals and the calibration all use this one framing."""
    return shift_inside(square_around(bounds, pad), mosaic_bounds)


def to_wgs84(geom, crs):
    """A geometry in ``crs`` as EPSG:4326, with its edges densified (a quarter of its larger side)
    so that edges that curve in lon/lat stay close."""
    if as_crs(crs).is_geographic:
        return reproject_geom(geom, crs, WGS84)
    x0, y0, x1, y1 = geom.bounds
    step = max(x1 - x0, y1 - y0) / 4 or 1.0
    return reproject_geom(shapely.segmentize(geom, step), crs, WGS84)


def boxes_to_wgs84(bounds: np.ndarray, crs) -> list:
    """Boxes (shape (N, 4), in ``crs``) as EPSG:4326 polygons (edges densified), vectorised."""
    bounds = np.asarray(bounds, float).reshape(-1, 4)
    boxes = shapely.box(bounds[:, 0], bounds[:, 1], bounds[:, 2], bounds[:, 3])
    if as_crs(crs) == WGS84:
        return list(boxes)
    step = np.maximum(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1]) / 4
    dense = shapely.segmentize(boxes, step)
    t = transformer(crs, WGS84)
    return list(shapely.transform(dense, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1]))))
