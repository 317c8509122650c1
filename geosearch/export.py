"""Answers into GIS: one row per region (and near-miss) with its provenance and score breakdown,
written as GeoJSON, GeoPackage, FlatGeobuf, GeoParquet or CSV by the file's extension.

Every format holds the same rows in the same order: regions, then near-misses (``kind``), with
nested values spread into columns (``f_<name>`` for the score breakdown) or joined into text. The
GeoJSON file keeps the answer's own properties (reason, provenance, ...) on its collection, so it
reads like the other formats in a GIS and still carries the whole answer. Every file is written
atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from geosearch.errors import InputError
from geosearch.fileio import atomic_path, atomic_write_json

FORMATS = {
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".gpkg": "GeoPackage",
    ".fgb": "FlatGeobuf",
    ".parquet": "GeoParquet",
    ".geoparquet": "GeoParquet",
    ".csv": "CSV (WKT geometry)",
}
_LAYER = "answer"


def format_for(path: str | Path) -> str:
    """The format a path's extension asks for, or a clear :class:`InputError`."""
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        known = ", ".join(sorted(FORMATS))
        raise InputError(
            f"can't write {Path(path).name!r}: unknown extension {ext or '(none)'!r}; use one of {known}"
        )
    return FORMATS[ext]


def answer_rows(geojson: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows (regions first, then near-misses), each with the answer's provenance."""
    props = geojson.get("properties") or {}
    prov = props.get("provenance") or {}
    common = {
        "query": props.get("query"),
        "method": props.get("method"),
        "abstained": bool(props.get("abstained")),
        "model": prov.get("model"),
        "index": prov.get("index") or props.get("index"),
        "mosaic_files": ";".join(prov.get("mosaic_files") or []),
        "dates": ";".join(prov.get("dates") or []),
        "created": prov.get("created"),
    }
    rows = []
    feats = [("region", f) for f in geojson.get("features") or []]
    feats += [("near_miss", f) for f in props.get("near_misses") or []]
    for rank, (kind, f) in enumerate(feats, start=1):
        p = f.get("properties") or {}
        row: dict[str, Any] = {
            "rank": rank,
            "kind": kind,
            "id": p.get("id"),
            "score": p.get("score"),
            "confidence": p.get("confidence"),
            "scale_m": p.get("scale_m"),
            "flags": ",".join(p.get("flags") or []),
            "evidence_tiles": ",".join(p.get("evidence_tiles") or []),
            "relations": json.dumps(p.get("relations") or [], default=str),
        }
        for k, v in (p.get("features") or {}).items():
            row[f"f_{k}"] = v
        row.update(common)
        row["geometry"] = f["geometry"]
        rows.append(row)
    return rows


def answer_frame(geojson: dict[str, Any]):
    """The answer as a GeoDataFrame in EPSG:4326 (one row per region / near-miss)."""
    import geopandas as gpd
    from shapely.geometry import shape

    rows = answer_rows(geojson)
    geoms = [shape(r.pop("geometry")) for r in rows]
    cols = list(rows[0]) if rows else ["rank", "kind", "id", "score", "confidence", "query", "model"]
    return gpd.GeoDataFrame(rows, columns=cols, geometry=geoms, crs="EPSG:4326")


def answer_collection(geojson: dict[str, Any]) -> dict[str, Any]:
    """The GeoJSON file of an answer: :func:`answer_rows` as features (so a GIS sees the
    near-misses of an abstention too), the answer's properties on the collection."""
    props = {k: v for k, v in (geojson.get("properties") or {}).items() if k != "near_misses"}
    feats = []
    for row in answer_rows(geojson):
        geometry = row.pop("geometry")
        feats.append({"type": "Feature", "geometry": geometry, "properties": row})
    return {"type": "FeatureCollection", "properties": props, "features": feats}


def write_answer(geojson: dict[str, Any], path: str | Path) -> str:
    """Write the answer to ``path`` in the format its extension names; returns that format."""
    fmt = format_for(path)
    path = Path(path)
    if fmt == "GeoJSON":
        atomic_write_json(path, answer_collection(geojson))
        return fmt
    gdf = answer_frame(geojson)
    with atomic_path(path) as tmp:
        tmp.unlink()  # the writers create their own file (GeoPackage refuses an empty one)
        if fmt == "GeoParquet":
            gdf.to_parquet(tmp, index=False)
        elif fmt.startswith("CSV"):
            df = gdf.drop(columns="geometry").assign(wkt=gdf.geometry.to_wkt())
            cent = gdf.geometry.representative_point()
            df["lon"], df["lat"] = cent.x.round(7), cent.y.round(7)
            df.to_csv(tmp, index=False)
        else:
            driver = "GPKG" if fmt == "GeoPackage" else "FlatGeobuf"
            # FlatGeobuf's spatial index sorts features along a Hilbert curve: off, so the rows stay
            # in rank order as in every other format
            kw = {"layer": _LAYER} if driver == "GPKG" else {"SPATIAL_INDEX": "NO"}
            if gdf.empty:  # an abstention with no near-miss: still a valid, empty layer
                gdf = gdf.set_geometry(gdf.geometry.astype("geometry"))
            gdf.to_file(tmp, driver=driver, engine="pyogrio", **kw)
    return fmt
