"""Relation / attribute benchmarks from the SpaceNet samples (truth computed from the vectors).

``geosearch bench spacenet-relations OUT_DIR`` writes two FORMAT.md folders:

* ``OUT_DIR/atlanta``: the Atlanta pan tile (0.5 m, EPSG:32616) and its 43 building footprints.
  Queries: all buildings (object), buildings larger than 250 m² / smaller than 150 m²
  (attribute), buildings within 10 m of another building (relation), plus absent queries.
  There is no road layer for Atlanta, so it has no ``layers/``.
* ``OUT_DIR/vegas``: the Vegas RGB tile (~0.3 m, EPSG:4326) with ``layers/roads.geojson`` (the 38
  SpaceNet road centre lines). Queries: areas within 20 m of a paved road, road intersections
  (20 m discs around nodes where three or more road ends meet, lines cross or a road ends on
  another), roads with two or
  more lanes (10 m corridor; attribute), plus absent queries.

All geometry is computed with shapely in the UTM zone of the tile (metres), clipped to the tile,
and written in EPSG:4326.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import rasterio
import shapely
from shapely.geometry import MultiPolygon, Point, box, mapping, shape

from geosearch.errors import InputError
from geosearch.fileio import atomic_path, atomic_write_text
from geosearch.geo import WGS84, as_crs, reproject_geom, utm_crs_for

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _atomic_copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _read_vectors(path: Path) -> tuple[list[dict], object]:
    if not path.is_file():
        raise InputError(f"vector file not found: {path}")
    data = json.loads(path.read_text())
    name = (data.get("crs") or {}).get("properties", {}).get("name")
    crs = (
        WGS84
        if not name or "CRS84" in name
        else as_crs(name.replace("urn:ogc:def:crs:", "").replace("::", ":"))
    )
    return data["features"], crs


def _polygons(geom) -> list:
    if geom.is_empty:
        return []
    if isinstance(geom, MultiPolygon):
        return list(geom.geoms)
    if geom.geom_type == "Polygon":
        return [geom]
    return [g for g in getattr(geom, "geoms", []) if g.geom_type == "Polygon" and not g.is_empty]


def _footprint(tif: Path):
    with rasterio.open(tif) as ds:
        return box(*ds.bounds), ds.crs


def _write_bench(
    out: Path,
    name: str,
    description: str,
    mosaic: Path,
    regions: list[dict],
    queries: list[dict],
    layers: dict[str, Path] | None = None,
) -> dict:
    (out / "mosaic").mkdir(parents=True, exist_ok=True)
    _atomic_copy(mosaic, out / "mosaic" / mosaic.name)
    for layer, src in (layers or {}).items():
        _atomic_copy(src, out / "layers" / f"{layer}.geojson")
    atomic_write_text(out / "regions.geojson", json.dumps({"type": "FeatureCollection", "features": regions}))
    atomic_write_text(out / "queries.jsonl", "".join(json.dumps(q) + "\n" for q in queries))
    atomic_write_text(
        out / "bench.json",
        json.dumps({"name": name, "description": description, "iou": 0.5, "k": [1, 5, 10]}, indent=2) + "\n",
    )
    return {
        "out": str(out),
        "regions": len(regions),
        "queries": len(queries),
        "query_types": dict(Counter(q["type"] for q in queries)),
    }


def _feature(rid: str, label: str, geom_metric, metric_crs, **props) -> dict:
    return {
        "type": "Feature",
        "geometry": mapping(reproject_geom(geom_metric, metric_crs, WGS84)),
        "properties": {"id": rid, "label": label, **props},
    }


def build_atlanta(out: Path, data: Path) -> dict:
    folder = data / "spacenet-atlanta"
    tif = folder / "sample_geotiff.tif"
    feats, vcrs = _read_vectors(folder / "buildings.geojson")
    tile, tile_crs = _footprint(tif)
    metric = as_crs(tile_crs)
    if not metric.is_projected:
        raise InputError(f"{tif} is expected in a projected CRS")
    buildings = []
    for f in feats:
        g = reproject_geom(shape(f["geometry"]), vcrs, metric).intersection(tile)
        for p in _polygons(g):
            if p.area >= 5:
                buildings.append(p)
    regions, ids = [], []
    for i, p in enumerate(buildings):
        rid = f"b{i:03d}"
        ids.append(rid)
        regions.append(_feature(rid, "building", p, metric, area_m2=round(p.area, 1)))
    area = {rid: p.area for rid, p in zip(ids, buildings)}
    near = set()
    for i, a in enumerate(buildings):
        for j, b in enumerate(buildings):
            if i != j and a.distance(b) <= 10.0:
                near.add(ids[i])
    queries = [
        {"id": "atl-q0", "text": "buildings", "type": "object", "relevant": dict.fromkeys(ids, 2)},
        {
            "id": "atl-q1",
            "text": "buildings larger than 250 m²",
            "type": "attribute",
            "relevant": {r: 2 for r in ids if area[r] > 250},
        },
        {
            "id": "atl-q2",
            "text": "small buildings under 150 m²",
            "type": "attribute",
            "relevant": {r: 2 for r in ids if area[r] < 150},
        },
        {
            "id": "atl-q3",
            "text": "buildings within 10 m of another building",
            "type": "relation",
            "relevant": {r: 2 for r in ids if r in near},
        },
        {"id": "atl-q4", "text": "an airport runway with parked planes", "type": "absent", "relevant": {}},
        {
            "id": "atl-q5",
            "text": "a harbour with boats moored along the docks",
            "type": "absent",
            "relevant": {},
        },
    ]
    queries = [q for q in queries if q["relevant"] or q["type"] == "absent"]
    desc = (
        "SpaceNet Atlanta pan tile (900x900 px, 0.5 m, EPSG:32616) with its building footprints as truth "
        "regions; attribute and relation truth computed with shapely in EPSG:32616 (areas in m², "
        "distances in m). No GIS layers: everything must come from the imagery."
    )
    return _write_bench(out, "spacenet-atlanta-relations", desc, tif, regions, queries)


def _intersections(lines: list, snap_m: float = 2.0) -> list[Point]:
    """Nodes where three or more road ends meet, lines cross, or a road ends on another (T)."""
    ends: Counter = Counter()
    for ln in lines:
        for x, y in (ln.coords[0], ln.coords[-1]):
            ends[(round(x / snap_m), round(y / snap_m))] += 1
    pts = [Point(k[0] * snap_m, k[1] * snap_m) for k, n in ends.items() if n >= 3]
    for i, a in enumerate(lines):
        for b in lines[i + 1 :]:
            inter = a.intersection(b)
            for g in getattr(inter, "geoms", [inter]):
                if g.geom_type == "Point" and not g.is_empty:
                    n_ends = sum(
                        1
                        for c in (a.coords[0], a.coords[-1], b.coords[0], b.coords[-1])
                        if Point(c).distance(g) <= snap_m
                    )
                    if n_ends <= 1:  # a crossing (0) or a T-junction (1); 2 = one road continuing
                        pts.append(g)
    merged: list[Point] = []
    for p in pts:
        if all(p.distance(q) > 15.0 for q in merged):
            merged.append(p)
    return merged


def build_vegas(out: Path, data: Path) -> dict:
    folder = data / "spacenet-vegas"
    tif = folder / "RGB-PanSharpen_AOI_2_Vegas_img0.tif"
    roads_path = folder / "roads_AOI_2_Vegas_img0.geojson"
    feats, vcrs = _read_vectors(roads_path)
    tile, tile_crs = _footprint(tif)
    tile84 = reproject_geom(tile, tile_crs, WGS84)
    c = tile84.centroid
    metric = utm_crs_for(c.x, c.y)
    tile_m = reproject_geom(tile84, WGS84, metric)
    lines, props = [], []
    for f in feats:
        g = reproject_geom(shape(f["geometry"]), vcrs, metric)
        for ln in getattr(g, "geoms", [g]):
            if ln.geom_type == "LineString" and ln.length > 0:
                lines.append(ln)
                props.append(f.get("properties") or {})
    if not lines:
        raise InputError(f"no road lines in {roads_path}")
    regions: list[dict] = []
    queries: list[dict] = []

    def add_query(qid: str, text: str, qtype: str, prefix: str, label: str, geoms: list) -> None:
        polys = [
            p for g in geoms for p in _polygons(shapely.make_valid(g.intersection(tile_m))) if p.area >= 25
        ]
        rel = {}
        for i, p in enumerate(polys):
            rid = f"{prefix}{i:03d}"
            regions.append(_feature(rid, label, p, metric, area_m2=round(p.area, 1)))
            rel[rid] = 2
        if rel:
            queries.append({"id": qid, "text": text, "type": qtype, "relevant": rel})

    paved = [ln for ln, p in zip(lines, props) if str(p.get("paved", "1")) == "1"]
    if paved:
        add_query(
            "veg-q0",
            "areas within 20 m of a paved road",
            "relation",
            "pv",
            "within 20 m of paved road",
            [shapely.union_all([ln.buffer(20.0) for ln in paved])],
        )
    nodes = _intersections(lines)
    if nodes:
        add_query(
            "veg-q1",
            "road intersections",
            "relation",
            "ix",
            "road intersection",
            [p.buffer(20.0) for p in nodes],
        )  # one disc per intersection
    wide = [ln for ln, p in zip(lines, props) if _int(p.get("lane_number")) >= 2]
    if wide:
        add_query(
            "veg-q2",
            "roads with two or more lanes",
            "attribute",
            "ml",
            "multi-lane road corridor",
            [shapely.union_all([ln.buffer(10.0) for ln in wide])],
        )
    unpaved = [ln for ln, p in zip(lines, props) if str(p.get("paved", "1")) != "1"]
    if unpaved:
        add_query(
            "veg-q3",
            "unpaved roads",
            "attribute",
            "up",
            "unpaved road corridor",
            [shapely.union_all([ln.buffer(10.0) for ln in unpaved])],
        )
    queries.append(
        {
            "id": "veg-q4",
            "text": "a harbour with boats moored along the docks",
            "type": "absent",
            "relevant": {},
        }
    )
    queries.append(
        {"id": "veg-q5", "text": "a snow covered mountain ridge", "type": "absent", "relevant": {}}
    )
    desc = (
        f"SpaceNet-3 Las Vegas RGB tile (1300x1300 px, ~0.3 m, EPSG:4326) with layers/roads.geojson "
        f"(SpaceNet road centre lines). Relation/attribute truth computed with shapely in "
        f"{metric.to_string()} from the road vectors (20 m buffers of paved roads, one 20 m disc per "
        f"intersection, 10 m corridors of multi-lane roads), clipped to the tile; "
        f"multi-part results become one region per part."
    )
    return _write_bench(
        out, "spacenet-vegas-relations", desc, tif, regions, queries, layers={"roads": roads_path}
    )


def _int(v) -> int:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return 0


def build_spacenet_relations(out_dir: str | Path, data_dir: str | Path | None = None) -> list[dict]:
    data = Path(data_dir) if data_dir else DEFAULT_DATA
    for sub in ("spacenet-atlanta", "spacenet-vegas"):
        if not (data / sub).is_dir():
            raise InputError(f"SpaceNet sample folder not found: {data / sub}")
    out = Path(out_dir)
    return [build_atlanta(out / "atlanta", data), build_vegas(out / "vegas", data)]
