"""Vector layers stored inside a GeoSearch index (one DuckDB file).

Each layer is a row in the ``layers`` registry plus one table ``layer_<name>`` with
``fid, feature_id, properties (JSON), geom (EPSG:4326), geom_m (metric CRS)`` and R-tree indexes on
both geometries. Reprojection is done with pyproj/geopandas (always lon/lat axis order).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS

from geosearch.db import connect, transaction
from geosearch.errors import GeoSearchError
from geosearch.geo import utm_crs_for
from geosearch.relations.safety import (
    infer_role,
    table_for,
    validate_column_name,
    validate_layer_name,
    validate_role,
)

IndexRef = str | Path | duckdb.DuckDBPyConnection

VECTOR_SUFFIXES = {
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".gpkg": "GPKG",
    ".shp": "ESRI Shapefile",
    ".zip": "ESRI Shapefile",
    ".fgb": "FlatGeobuf",
    ".parquet": "GeoParquet",
    ".geoparquet": "GeoParquet",
    ".pbf": "OSM PBF",
}

_REGISTRY_SQL = """
CREATE TABLE IF NOT EXISTS layers (
    name VARCHAR PRIMARY KEY,
    source VARCHAR,
    crs VARCHAR,
    geometry_type VARCHAR,
    feature_count BIGINT,
    derived BOOLEAN,
    metric_crs VARCHAR,
    role VARCHAR,
    columns VARCHAR,
    bounds_wgs84 VARCHAR,
    params VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
)
"""


@dataclass
class LayerInfo:
    """One row of the ``layers`` registry."""

    name: str
    source: str
    crs: str
    geometry_type: str
    feature_count: int
    derived: bool
    metric_crs: str
    role: str
    columns: list[str] = field(default_factory=list)
    bounds_wgs84: list[float] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def table(self) -> str:
        """Quoted table name (from the validated registry name)."""
        return table_for(self.name)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return {
            "name": self.name,
            "source": self.source,
            "crs": self.crs,
            "geometry_type": self.geometry_type,
            "feature_count": self.feature_count,
            "derived": self.derived,
            "metric_crs": self.metric_crs,
            "role": self.role,
            "columns": self.columns,
            "bounds_wgs84": self.bounds_wgs84,
            "params": self.params,
        }


@contextmanager
def open_index(index: IndexRef, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """Yield a connection for a path or pass an existing connection through (not closed)."""
    if isinstance(index, duckdb.DuckDBPyConnection):
        yield index
        return
    path = Path(index)
    if read_only and not path.exists():
        raise GeoSearchError(f"index not found: {path}")
    con = connect(path, read_only=read_only)
    try:
        yield con
    finally:
        con.close()


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether a table of that (unquoted) name exists in the main schema."""
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ? AND table_schema = 'main'",
        [table],
    ).fetchone()
    return bool(row and row[0])


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the ``layers`` registry if missing."""
    con.execute(_REGISTRY_SQL)


def _row_to_info(row: tuple) -> LayerInfo:
    (name, source, crs, gtype, count, derived, metric_crs, role, columns, bounds, params) = row
    return LayerInfo(
        name=name,
        source=source or "",
        crs=crs or "",
        geometry_type=gtype or "",
        feature_count=int(count or 0),
        derived=bool(derived),
        metric_crs=metric_crs or "",
        role=role or "other",
        columns=json.loads(columns) if columns else [],
        bounds_wgs84=json.loads(bounds) if bounds else [],
        params=json.loads(params) if params else {},
    )


_INFO_COLS = "name, source, crs, geometry_type, feature_count, derived, metric_crs, role, columns, bounds_wgs84, params"


def list_layers(index: IndexRef) -> list[LayerInfo]:
    """All registered layers (empty when the index has none)."""
    with open_index(index, read_only=True) as con:
        if not table_exists(con, "layers"):
            return []
        rows = con.execute(f"SELECT {_INFO_COLS} FROM layers ORDER BY name").fetchall()
    return [_row_to_info(r) for r in rows]


def get_layer(con: duckdb.DuckDBPyConnection, name: object) -> LayerInfo:
    """The registry entry for ``name``; raises :class:`GeoSearchError` if invalid or unknown."""
    valid = validate_layer_name(name)
    row = None
    if table_exists(con, "layers"):
        row = con.execute(f"SELECT {_INFO_COLS} FROM layers WHERE name = ?", [valid]).fetchone()
    if row is None:
        known = [r.name for r in list_layers(con)]
        raise GeoSearchError(f"unknown layer {valid!r}; registered layers: {', '.join(known) or '(none)'}")
    info = _row_to_info(row)
    if not table_exists(con, f"layer_{info.name}"):
        raise GeoSearchError(f"layer {valid!r} is registered but its table is missing; register it again")
    return info


def resolve_layer(index: IndexRef, name: str) -> str:
    """A registered layer for ``name``: the layer of that name, or the first whose role is ``name``
    (``roads`` finds a layer registered with role ``roads``; singular / plural both match)."""
    layers = [(li.name, li.role) for li in list_layers(index)]
    if not layers:
        raise GeoSearchError("this index has no layers: add one with `geosearch layers add INDEX FILE`")
    for n, _ in layers:
        if n == name:
            return n
    for n, role in layers:
        if role == name or (name.endswith("s") and role == name[:-1]) or role == name + "s":
            return n
    raise GeoSearchError(
        f"no layer {name!r} in this index; layers: " + ", ".join(f"{n} ({r})" for n, r in layers)
    )


def drop_layer(index: IndexRef, name: str) -> None:
    """Remove a layer (registry row and feature table)."""
    validate_layer_name(name)
    with open_index(index) as con:
        info = get_layer(con, name)
        with transaction(con):
            con.execute(f"DROP TABLE IF EXISTS {info.table}")
            con.execute("DELETE FROM layers WHERE name = ?", [info.name])
            if table_exists(con, "tile_priors"):
                con.execute("DELETE FROM tile_priors WHERE layer = ?", [info.name])


def layer_property_columns(con: duckdb.DuckDBPyConnection, name: str) -> list[str]:
    """Property names recorded for a layer at registration (the only columns queries may use)."""
    return get_layer(con, name).columns


def check_column(con: duckdb.DuckDBPyConnection, name: str, column: str) -> str:
    """Validate ``column`` against the registry entry of layer ``name``."""
    return validate_column_name(column, layer_property_columns(con, name))


# ---------------------------------------------------------------------------------------------
# CRS helpers


def _is_metric(crs: CRS) -> bool:
    if not crs.is_projected:
        return False
    units = {(ax.unit_name or "").lower() for ax in crs.axis_info}
    return units <= {"metre", "meter", "m"}


def crs_to_string(crs: CRS) -> str:
    """``EPSG:xxxx`` when the CRS has a code, WKT otherwise."""
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def index_crs(con: duckdb.DuckDBPyConnection) -> CRS | None:
    """The mosaic CRS from ``meta('crs')`` if the index has one."""
    if not table_exists(con, "meta"):
        return None
    row = con.execute("SELECT value FROM meta WHERE key = 'crs'").fetchone()
    if not row or not row[0]:
        return None
    try:
        return CRS.from_user_input(row[0])
    except Exception:  # noqa: BLE001 - an unreadable meta CRS just means "choose UTM"
        return None


def choose_metric_crs(con: duckdb.DuckDBPyConnection, bounds_wgs84: tuple[float, float, float, float]) -> CRS:
    """The index's mosaic CRS when it is projected in metres, else the UTM zone of the layer centre."""
    mosaic = index_crs(con)
    if mosaic is not None and _is_metric(mosaic):
        return mosaic
    minx, miny, maxx, maxy = bounds_wgs84
    return utm_crs_for((minx + maxx) / 2.0, (miny + maxy) / 2.0)


# ---------------------------------------------------------------------------------------------
# Reading


def read_vector(path: str | Path) -> gpd.GeoDataFrame:
    """Read any supported vector file into a GeoDataFrame with a CRS."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise GeoSearchError(f"vector file not found: {p}")
    if not p.is_dir():  # a FIFO would block the reader forever; a loop or device is no file
        from geosearch.fileio import check_regular_file

        check_regular_file(p, "vector file")
    suffix = p.suffix.lower()
    if suffix not in VECTOR_SUFFIXES and not p.is_dir():
        raise GeoSearchError(
            f"unsupported vector format {suffix!r}; use one of: {', '.join(sorted(VECTOR_SUFFIXES))}"
        )
    if suffix in (".parquet", ".geoparquet"):
        return _read_geoparquet(p)
    if suffix == ".pbf":
        return read_osm_pbf(p)
    try:
        import pyogrio

        gdf = pyogrio.read_dataframe(p)
    except Exception as exc:  # noqa: BLE001 - GDAL errors come in many types
        raise GeoSearchError(f"cannot read vector file {p}: {exc}") from exc
    return gdf


def _read_geoparquet(path: Path) -> gpd.GeoDataFrame:
    con = connect()
    try:
        try:
            rel = con.execute("SELECT * FROM read_parquet(?) LIMIT 0", [str(path)])
            desc = rel.description
            meta_rows = con.execute(
                "SELECT key::VARCHAR, value FROM parquet_kv_metadata(?)", [str(path)]
            ).fetchall()
        except duckdb.Error as exc:
            raise GeoSearchError(f"cannot read GeoParquet file {path}: {exc}") from exc
        geo_meta: dict[str, Any] = {}
        for key, value in meta_rows:
            if key == "geo":
                raw = value.decode() if isinstance(value, (bytes, bytearray)) else str(value)
                geo_meta = json.loads(raw)
        names = [d[0] for d in desc]
        types = [str(d[1]) for d in desc]
        geom_cols = [n for n, t in zip(names, types, strict=True) if t.upper().startswith("GEOMETRY")]
        primary = geo_meta.get("primary_column")
        gcol = primary if primary in names else (geom_cols[0] if geom_cols else None)
        if gcol is None:
            raise GeoSearchError(f"no geometry column in {path}")
        crs_info = geo_meta.get("columns", {}).get(gcol, {}).get("crs", "OGC:CRS84")
        crs = CRS.from_user_input(crs_info if crs_info is not None else "OGC:CRS84")
        others = [n for n in names if n != gcol]
        # identifiers come from the file schema; quote them (doubling quotes) for the projection only
        proj = ", ".join('"' + n.replace('"', '""') + '"' for n in others)
        gq = '"' + gcol.replace('"', '""') + '"'
        conv = f"ST_AsWKB({gq})" if gcol in geom_cols else gq
        sql = f"SELECT {proj + ', ' if proj else ''}{conv} AS __wkb FROM read_parquet(?)"
        df = con.execute(sql, [str(path)]).fetchdf()
    finally:
        con.close()
    geoms = shapely.from_wkb([bytes(b) if b is not None else None for b in df.pop("__wkb")])
    return gpd.GeoDataFrame(df, geometry=geoms, crs=crs)


def read_osm_pbf(path: str | Path) -> gpd.GeoDataFrame:
    """Tagged nodes (points) and ways (lines, closed area-like ways as polygons) from an OSM PBF."""
    con = connect()
    sql = """
    WITH raw AS (SELECT kind, id, tags, refs, lat, lon FROM ST_ReadOSM(?)),
    nodes AS (SELECT id, lat, lon FROM raw WHERE kind = 'node'),
    ways AS (SELECT id, tags, refs FROM raw WHERE kind = 'way' AND cardinality(tags) > 0),
    way_pts AS (
        SELECT w.id, w.tags, u.pos, n.lon, n.lat
        FROM (SELECT id, tags, unnest(refs) AS ref, generate_subscripts(refs, 1) AS pos FROM ways) AS u
        JOIN ways w ON w.id = u.id
        JOIN nodes n ON n.id = u.ref
    ),
    lines AS (
        SELECT id, any_value(tags) AS tags,
               ST_MakeLine(list(ST_Point(lon, lat) ORDER BY pos)) AS g
        FROM way_pts GROUP BY id HAVING count(*) >= 2
    )
    SELECT 'n' || id::VARCHAR AS osm_id, to_json(tags)::VARCHAR AS tags, ST_AsWKB(ST_Point(lon, lat)) AS wkb
    FROM raw WHERE kind = 'node' AND cardinality(tags) > 0
    UNION ALL
    SELECT 'w' || id::VARCHAR, to_json(tags)::VARCHAR,
           ST_AsWKB(CASE WHEN ST_IsClosed(g) AND ST_NPoints(g) >= 4 AND (
                    map_contains(tags, 'building') OR map_contains(tags, 'landuse')
                    OR map_contains(tags, 'natural') OR map_contains(tags, 'leisure')
                    OR map_contains(tags, 'amenity') OR tags['area'] = 'yes')
                THEN ST_MakePolygon(g) ELSE g END)
    FROM lines
    """
    try:
        df = con.execute(sql, [str(path)]).fetchdf()
    except duckdb.Error as exc:
        raise GeoSearchError(f"cannot read OSM PBF file {path}: {exc}") from exc
    finally:
        con.close()
    if df.empty:
        raise GeoSearchError(f"no tagged features in OSM PBF file {path}")
    geoms = shapely.from_wkb([bytes(b) for b in df.pop("wkb")])
    return gpd.GeoDataFrame(df, geometry=geoms, crs="EPSG:4326")


# ---------------------------------------------------------------------------------------------
# Storing


def _clean(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty].copy()
    invalid = ~gdf.geometry.is_valid
    if invalid.any():
        gdf.loc[invalid, gdf.geometry.name] = shapely.make_valid(gdf.geometry[invalid].values)
    return gdf


def _feature_ids(gdf: gpd.GeoDataFrame, id_column: str | None) -> np.ndarray:
    cols = [c for c in gdf.columns if c != gdf.geometry.name]
    if id_column is not None:
        validate_column_name(id_column, cols)
        ids = gdf[id_column].astype(str)
        if ids.duplicated().any():
            raise GeoSearchError(f"id column {id_column!r} is not unique")
        return ids.to_numpy()
    for cand in ("id", "osm_id", "fid", "ID", "FID"):
        if cand in cols and gdf[cand].notna().all() and not gdf[cand].duplicated().any():
            return gdf[cand].astype(str).to_numpy()
    return np.arange(len(gdf)).astype(str)


def store_layer(
    index: IndexRef,
    name: str,
    gdf: gpd.GeoDataFrame,
    *,
    source: str,
    role: str | None = None,
    derived: bool = False,
    metric_crs: str | None = None,
    replace: bool = False,
    id_column: str | None = None,
    params: dict[str, Any] | None = None,
    rtree: bool = True,
) -> LayerInfo:
    """Store a GeoDataFrame as layer ``name`` (EPSG:4326 + metric geometries, R-tree indexed)."""
    name = validate_layer_name(name)
    role = validate_role(role) if role is not None else infer_role(name)
    if gdf.crs is None:
        b = gdf.total_bounds if len(gdf) else np.zeros(4)
        if len(gdf) and -180 <= b[0] <= b[2] <= 180 and -90 <= b[1] <= b[3] <= 90:
            gdf = gdf.set_crs("EPSG:4326")
        else:
            raise GeoSearchError(f"{source}: the file has no CRS and its coordinates are not lon/lat")
    src_crs = CRS.from_user_input(gdf.crs)
    gdf = _clean(gdf)
    if gdf.empty:
        raise GeoSearchError(f"{source}: no features with a geometry")
    wgs = gdf.to_crs("EPSG:4326")  # geopandas/pyproj: always_xy (lon, lat)
    bounds = tuple(float(v) for v in wgs.total_bounds)
    with open_index(index) as con:
        ensure_schema(con)
        mcrs = CRS.from_user_input(metric_crs) if metric_crs else choose_metric_crs(con, bounds)  # type: ignore[arg-type]
        if not _is_metric(mcrs):
            raise GeoSearchError(f"metric CRS {crs_to_string(mcrs)} is not projected in metres")
        metric = wgs.to_crs(mcrs)
        ids = _feature_ids(gdf, id_column)
        props = pd.DataFrame(gdf.drop(columns=gdf.geometry.name))
        columns = [str(c) for c in props.columns]
        if len(props.columns):
            prop_json = props.to_json(orient="records", lines=True, date_format="iso", default_handler=str)
            prop_list = prop_json.splitlines()
        else:
            prop_list = ["{}"] * len(gdf)
        src = pd.DataFrame(
            {
                "fid": np.arange(len(gdf), dtype=np.int64),
                "feature_id": ids.astype(object),
                "properties": np.asarray(prop_list, dtype=object),
                "wkb": np.asarray(shapely.to_wkb(wgs.geometry.values), dtype=object),
                "wkb_m": np.asarray(shapely.to_wkb(metric.geometry.values), dtype=object),
            }
        )
        gtypes = sorted(set(wgs.geom_type.astype(str)))
        table = table_for(name)
        exists = con.execute("SELECT count(*) FROM layers WHERE name = ?", [name]).fetchone()[0]
        if (exists or table_exists(con, f"layer_{name}")) and not replace:
            raise GeoSearchError(f"layer {name!r} already exists (replace it: --replace, or replace=True)")
        try:
            with transaction(con, _gs_layer_src=src):
                con.execute(f"DROP TABLE IF EXISTS {table}")
                con.execute("DELETE FROM layers WHERE name = ?", [name])
                con.execute(
                    f"CREATE TABLE {table} AS SELECT fid, feature_id::VARCHAR AS feature_id, "
                    "properties::JSON AS properties, ST_GeomFromWKB(wkb) AS geom, "
                    "ST_GeomFromWKB(wkb_m) AS geom_m FROM _gs_layer_src"
                )
                if rtree:
                    con.execute(f'CREATE INDEX "layer_{name}_geom_rtree" ON {table} USING RTREE (geom)')
                    con.execute(f'CREATE INDEX "layer_{name}_geom_m_rtree" ON {table} USING RTREE (geom_m)')
                con.execute(
                    "INSERT INTO layers (name, source, crs, geometry_type, feature_count, derived, metric_crs, role, "
                    "columns, bounds_wgs84, params) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        name,
                        source,
                        crs_to_string(src_crs),
                        ",".join(gtypes),
                        len(src),
                        derived,
                        crs_to_string(mcrs),
                        role,
                        json.dumps(columns),
                        json.dumps(list(bounds)),
                        json.dumps(params or {}),
                    ],
                )
        except duckdb.Error as exc:
            raise GeoSearchError(f"cannot store layer {name!r}: {exc}") from exc
        return get_layer(con, name)


def register_layer(
    index: IndexRef,
    path: str | Path,
    name: str,
    *,
    role: str | None = None,
    replace: bool = False,
    id_column: str | None = None,
    metric_crs: str | None = None,
) -> LayerInfo:
    """Read a vector file (GeoJSON, GPKG, Shapefile, FlatGeobuf, GeoParquet, OSM PBF) into the index."""
    validate_layer_name(name)
    if role is not None:
        validate_role(role)
    gdf = read_vector(path)
    return store_layer(
        index,
        name,
        gdf,
        source=str(path),
        role=role,
        replace=replace,
        id_column=id_column,
        metric_crs=metric_crs,
    )
