"""Spatial predicates between candidate regions and registered layers, computed in DuckDB.

Regions (shapely geometries in EPSG:4326 with ids) are reprojected with pyproj (always_xy) into the
layer's metric CRS and loaded into a temp table from a registered data frame (WKB), never formatted
into SQL. Joins use ``ST_DWithin`` / ``ST_Intersects`` on ``geom_m``, which DuckDB plans as a
``SPATIAL_JOIN`` probing the layer's R-tree index.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS, Transformer
from shapely.geometry.base import BaseGeometry

from geosearch.errors import GeoSearchError
from geosearch.relations.layers import IndexRef, LayerInfo, get_layer, open_index
from geosearch.relations.safety import (
    NEEDS_DISTANCE,
    Predicate,
    validate_distance,
    validate_fraction,
    validate_layer_name,
    validate_positive,
    validate_predicate,
)

#: nearest-feature search gives up beyond this radius (metres)
MAX_SEARCH_M = 2e6
DEFAULT_ALONG_SHARE = 0.3
REGIONS_TABLE = "_gs_regions"


@dataclass
class RelationResult:
    """Outcome of one predicate for one region."""

    region_id: str
    holds: bool
    value: float | None
    unit: str
    nearest_id: str | None
    predicate: str
    layer: str
    layer_b: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return asdict(self)


Region = tuple[Any, BaseGeometry]


def _validate_regions(regions: Iterable[Region]) -> tuple[list[str], list[BaseGeometry]]:
    ids: list[str] = []
    geoms: list[BaseGeometry] = []
    for item in regions:
        try:
            rid, geom = item
        except (TypeError, ValueError) as exc:
            raise GeoSearchError("regions must be (id, shapely geometry) pairs") from exc
        if not isinstance(geom, BaseGeometry) or geom.is_empty:
            raise GeoSearchError(f"region {rid!r}: not a non-empty shapely geometry")
        minx, miny, maxx, maxy = geom.bounds
        if not (
            all(math.isfinite(v) for v in geom.bounds)
            and -180 <= minx <= maxx <= 180
            and -90 <= miny <= maxy <= 90
        ):
            raise GeoSearchError(f"region {rid!r}: coordinates are not lon/lat (EPSG:4326)")
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        ids.append(str(rid))
        geoms.append(geom)
    if len(set(ids)) != len(ids):
        raise GeoSearchError("region ids must be unique")
    return ids, geoms


def to_metric(geoms: Sequence[BaseGeometry], metric_crs: str) -> np.ndarray:
    """Reproject EPSG:4326 geometries to ``metric_crs`` (lon/lat axis order)."""
    tr = Transformer.from_crs("EPSG:4326", CRS.from_user_input(metric_crs), always_xy=True)
    arr = np.asarray(geoms, dtype=object)
    return shapely.transform(arr, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def _load_regions(con: duckdb.DuckDBPyConnection, geoms_m: np.ndarray) -> None:
    src = pd.DataFrame(
        {
            "rid": np.arange(len(geoms_m), dtype=np.int64),
            "wkb": np.asarray(shapely.to_wkb(geoms_m), dtype=object),
        }
    )
    con.register("_gs_regions_src", src)
    try:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {REGIONS_TABLE} AS "
            "SELECT rid, ST_GeomFromWKB(wkb) AS geom_m FROM _gs_regions_src"
        )
    finally:
        con.unregister("_gs_regions_src")


def _nearest(
    con: duckdb.DuckDBPyConnection, layer: LayerInfo, n: int, start_m: float, *, to_boundary: bool = False
) -> tuple[np.ndarray, list[str | None]]:
    """Distance (m) from each region to its nearest feature (or feature boundary), growing the radius."""
    dist = np.full(n, np.nan)
    nearest: list[str | None] = [None] * n
    pending = np.arange(n, dtype=np.int64)
    radius = max(start_m, 1.0)
    fexpr = "ST_Boundary(f.geom_m)" if to_boundary else "f.geom_m"
    # ``layer.table`` comes from a validated registry name; every value is a parameter.
    sql = (
        f"SELECT r.rid, min(ST_Distance(r.geom_m, {fexpr})) AS d, "
        f"arg_min(f.feature_id, ST_Distance(r.geom_m, {fexpr})) AS fid "
        f"FROM {REGIONS_TABLE} r JOIN {layer.table} f ON ST_DWithin(r.geom_m, f.geom_m, ?) "
        "WHERE list_contains(?, r.rid) GROUP BY r.rid"
    )
    all_pending_sql = sql.replace("WHERE list_contains(?, r.rid) ", "")
    while len(pending):
        if len(pending) == n:
            rows = con.execute(all_pending_sql, [radius]).fetchall()
        else:
            rows = con.execute(sql, [radius, pending.tolist()]).fetchall()
        for rid, d, fid in rows:
            if d is not None and d <= radius:
                dist[rid] = d
                nearest[rid] = fid
        pending = np.array([i for i in pending if np.isnan(dist[i])], dtype=np.int64)
        if radius >= MAX_SEARCH_M:
            break
        radius = min(radius * 8.0, MAX_SEARCH_M)
    return dist, nearest


def _require_polygons(layer: LayerInfo, predicate: Predicate) -> None:
    if "Polygon" not in layer.geometry_type:
        raise GeoSearchError(
            f"{predicate.value} needs a polygon layer; {layer.name!r} holds {layer.geometry_type or 'nothing'}"
        )


def _f(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def validate_params(
    predicate: str,
    layer: str,
    distance_m: float | str | None = None,
    layer_b: str | None = None,
    *,
    threshold: float | None = None,
    direction: str = "above",
    along_mode: str = "boundary",
) -> tuple[Predicate, float | None, float | None, float | None]:
    """Everything about a relation that can be checked without opening the index (cheap refusals
    first): (predicate, distance, along share, density threshold)."""
    share_min = dens_thr = None
    pred = validate_predicate(predicate)
    if pred in NEEDS_DISTANCE and distance_m is None:
        raise GeoSearchError(f"{pred.value} needs a distance in metres")
    dist = validate_distance(distance_m) if distance_m is not None else None
    if pred is Predicate.BETWEEN and layer_b is None:
        raise GeoSearchError("between needs two layers")
    if pred is not Predicate.BETWEEN and layer_b is not None:
        raise GeoSearchError(f"{pred.value} takes one layer, got a second one ({layer_b!r})")
    if direction not in ("above", "below"):
        raise GeoSearchError(f"invalid direction {direction!r}: use 'above' or 'below'")
    if along_mode not in ("boundary", "area"):
        raise GeoSearchError(f"invalid along mode {along_mode!r}: use 'boundary' or 'area'")
    if pred is Predicate.ALONG:
        share_min = validate_fraction(DEFAULT_ALONG_SHARE if threshold is None else threshold)
    elif pred is Predicate.DENSITY:
        if threshold is None:
            raise GeoSearchError("density needs a threshold (features per km²)")
        dens_thr = validate_positive(threshold, what="density threshold")
    elif threshold is not None:
        raise GeoSearchError(f"{pred.value} takes no threshold")
    validate_layer_name(layer)
    if layer_b is not None:
        validate_layer_name(layer_b)
    return pred, dist, share_min, dens_thr


def check_relation(
    index: IndexRef,
    regions: Iterable[Region],
    predicate: str,
    layer: str,
    distance_m: float | str | None = None,
    layer_b: str | None = None,
    *,
    threshold: float | None = None,
    direction: str = "above",
    along_mode: str = "boundary",
) -> list[RelationResult]:
    """Evaluate ``predicate`` for each ``(id, geometry_wgs84)`` region against ``layer``.

    ``near``/``far_from``/``edge_of``/``intersects`` report metres to the nearest feature (or boundary);
    ``within`` the share of the region covered by the layer; ``contains`` the number of features inside;
    ``along`` the share of the region's boundary (or area, ``along_mode='area'``) within ``distance_m``
    of the layer (holds when >= ``threshold``, default 0.3); ``between`` the larger of the distances to
    ``layer`` and ``layer_b``; ``density`` features per km² in the region buffered by ``distance_m``
    (holds when above/below ``threshold``).
    """
    pred, dist, share_min, dens_thr = validate_params(
        predicate, layer, distance_m, layer_b, threshold=threshold, direction=direction, along_mode=along_mode
    )
    ids, geoms = _validate_regions(regions)
    if not ids:
        return []
    with open_index(index, read_only=True) as con:
        info = get_layer(con, layer)
        info_b = get_layer(con, layer_b) if layer_b is not None else None
        if pred in (Predicate.WITHIN, Predicate.EDGE_OF):
            _require_polygons(info, pred)
        geoms_m = to_metric(geoms, info.metric_crs)
        _load_regions(con, geoms_m)
        n = len(ids)
        base = {"predicate": pred.value, "layer": info.name}

        def results(
            holds: Sequence[bool],
            values: Sequence[Any],
            unit: str,
            nearest: Sequence[str | None],
            **extra: Any,
        ) -> list[RelationResult]:
            return [
                RelationResult(ids[i], bool(holds[i]), _f(values[i]), unit, nearest[i], **base, **extra)
                for i in range(n)
            ]

        if pred in (Predicate.NEAR, Predicate.FAR_FROM, Predicate.INTERSECTS, Predicate.EDGE_OF):
            d = dist or 0.0
            start = d if d > 0 else 50.0
            dd, near_ids = _nearest(con, info, n, start, to_boundary=pred is Predicate.EDGE_OF)
            found = ~np.isnan(dd)
            if pred is Predicate.NEAR or pred is Predicate.EDGE_OF:
                holds = found & (np.nan_to_num(dd, nan=np.inf) <= d)
            elif pred is Predicate.FAR_FROM:
                holds = ~found | (np.nan_to_num(dd, nan=np.inf) > d)
            else:
                holds = found & (np.nan_to_num(dd, nan=np.inf) <= 0.0)
            return results(holds, dd, "m", near_ids)

        if pred is Predicate.BETWEEN:
            assert info_b is not None and dist is not None
            da, ida = _nearest(con, info, n, dist)
            if info_b.metric_crs != info.metric_crs:
                _load_regions(con, to_metric(geoms, info_b.metric_crs))
            db, idb = _nearest(con, info_b, n, dist)
            worst = np.fmax(np.nan_to_num(da, nan=np.inf), np.nan_to_num(db, nan=np.inf))
            out = []
            for i in range(n):
                v = worst[i] if math.isfinite(worst[i]) else None
                out.append(
                    RelationResult(
                        ids[i],
                        bool(worst[i] <= dist),
                        v,
                        "m",
                        ida[i],
                        **base,
                        layer_b=info_b.name,
                        details={
                            "distance_a_m": _f(da[i]),
                            "distance_b_m": _f(db[i]),
                            "nearest_id_b": idb[i],
                        },
                    )
                )
            return out

        if pred is Predicate.WITHIN:
            rows = con.execute(
                f"SELECT r.rid, ST_Area(ST_Intersection(any_value(r.geom_m), ST_Union_Agg(f.geom_m))) "
                f"/ nullif(ST_Area(any_value(r.geom_m)), 0) AS share, bool_or(ST_CoveredBy(r.geom_m, f.geom_m)), "
                f"arg_max(f.feature_id, ST_Area(ST_Intersection(r.geom_m, f.geom_m))) "
                f"FROM {REGIONS_TABLE} r JOIN {info.table} f ON ST_Intersects(r.geom_m, f.geom_m) GROUP BY r.rid"
            ).fetchall()
            share = np.zeros(n)
            holds = np.zeros(n, dtype=bool)
            nearest: list[str | None] = [None] * n
            for rid, s, covered, fid in rows:
                share[rid] = 1.0 if s is None and covered else min(float(s or 0.0), 1.0)
                holds[rid] = bool(covered) or share[rid] >= 0.999
                nearest[rid] = fid
            return results(holds, share, "share", nearest)

        if pred is Predicate.CONTAINS:
            rows = con.execute(
                f"SELECT r.rid, count(*), min(f.feature_id) FROM {REGIONS_TABLE} r JOIN {info.table} f "
                "ON ST_Intersects(r.geom_m, f.geom_m) WHERE ST_Contains(r.geom_m, f.geom_m) GROUP BY r.rid"
            ).fetchall()
            count = np.zeros(n)
            nearest = [None] * n
            for rid, c, fid in rows:
                count[rid] = c
                nearest[rid] = fid
            return results(count >= 1, count, "count", nearest)

        if pred is Predicate.ALONG:
            assert dist is not None
            if along_mode == "boundary":
                part, whole = "ST_Boundary(any_value(r.geom_m))", "ST_Length"
            else:
                part, whole = "any_value(r.geom_m)", "ST_Area"
            rows = con.execute(
                f"SELECT r.rid, {whole}(ST_Intersection({part}, ST_Buffer(ST_Union_Agg(f.geom_m), ?))) "
                f"/ nullif({whole}({part}), 0), arg_min(f.feature_id, ST_Distance(r.geom_m, f.geom_m)) "
                f"FROM {REGIONS_TABLE} r JOIN {info.table} f ON ST_DWithin(r.geom_m, f.geom_m, ?) GROUP BY r.rid",
                [dist, dist],
            ).fetchall()
            share = np.zeros(n)
            nearest = [None] * n
            for rid, s, fid in rows:
                share[rid] = min(float(s or 0.0), 1.0)
                nearest[rid] = fid
            return results(
                share >= share_min,
                share,
                "share",
                nearest,
                details={"threshold": share_min, "mode": along_mode},
            )

        # DENSITY
        d = dist or 0.0
        areas = shapely.area(shapely.buffer(geoms_m, d) if d > 0 else geoms_m) / 1e6
        if np.any(areas <= 0):
            raise GeoSearchError("density needs polygon regions or a buffer distance > 0")
        rows = con.execute(
            f"SELECT r.rid, count(*) FROM {REGIONS_TABLE} r JOIN {info.table} f "
            "ON ST_DWithin(r.geom_m, f.geom_m, ?) GROUP BY r.rid",
            [d],
        ).fetchall()
        count = np.zeros(n)
        for rid, c in rows:
            count[rid] = c
        dens = count / areas
        holds = dens >= dens_thr if direction == "above" else dens <= dens_thr
        return results(
            holds,
            dens,
            "per_km2",
            [None] * n,
            details={"threshold": dens_thr, "direction": direction, "buffer_m": d},
        )
