"""The ``relations`` retrieval method: image candidates, then the query's relations checked
exactly against vector layers.

Candidates come from a base method (``segment`` by default, ``options['base_method']``), three times
as many as asked. Relations are parsed from the query text by the deterministic parser
(:func:`geosearch.query.parse_query`). Layers come from the method context's ``layers_dir`` (one
file per layer, the stem is its name: the benchmark format) or, without one, from the index's own
layer registry. Regions for which every checkable relation holds are ranked first (in their base
order); the others follow, flagged ``relation_failed``. A relation whose layer does not exist flags
every region ``relation_not_checkable`` instead of silently passing or failing.
"""

from __future__ import annotations

import threading
from pathlib import Path

from geosearch import db
from geosearch.errors import GeoSearchError
from geosearch.index import TileIndex
from geosearch.pipeline import Answer, MethodContext, register_method, run_method

LAYER_SUFFIXES = {".geojson", ".json", ".gpkg", ".parquet", ".geoparquet", ".shp", ".fgb", ".pbf"}
_cache: dict[tuple, object] = {}
_lock = threading.Lock()


def layers_connection(index: TileIndex, layers_dir: str | None):
    """A DuckDB connection holding the layers: an in-memory one loaded from ``layers_dir`` (cached
    per folder state), or the index file itself (read-only)."""
    if not layers_dir:
        return db.connect(index.path, read_only=True), True
    folder = Path(layers_dir)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in LAYER_SUFFIXES) if folder.is_dir() else []
    key = (str(folder.resolve()), tuple((p.name, p.stat().st_mtime_ns) for p in files))
    with _lock:
        con = _cache.get(key)
        if con is None:
            from geosearch.relations import register_layer

            con = db.connect()
            for path in files:
                register_layer(con, path, path.stem.lower())
            _cache[key] = con
    return con, False


@register_method("relations", "segment candidates re-ranked by the query's relations checked on vector layers")
def relations_method(index: TileIndex, text: str, k: int, ctx: MethodContext) -> Answer:
    from geosearch.query import parse_query
    from geosearch.relations import check_relation
    from geosearch.relations.layers import resolve_layer

    base_name = ctx.options.get("base_method", "segment")
    parsed = parse_query(text)
    base = run_method(base_name, index, text, max(3 * k, 30), ctx)
    specs = [r for r in parsed.relations if r.layer]
    if not specs or not base.regions:
        base.method, base.regions = "relations", base.regions[:k]
        return base
    con, close = layers_connection(index, ctx.layers_dir)
    holds = {r.region_id: True for r in base.regions}
    checked, unchecked = [], []
    try:
        with _lock:
            for spec in specs:
                try:
                    layer = resolve_layer(con, spec.layer)
                    layer_b = resolve_layer(con, spec.layer_b) if spec.layer_b else None
                except GeoSearchError:
                    unchecked.append(spec.phrase or spec.layer)
                    continue
                results = check_relation(con, [(r.region_id, r.polygon_wgs84) for r in base.regions],
                                         spec.predicate, layer, spec.distance_m, layer_b, threshold=spec.threshold)
                checked.append(f"{spec.predicate}:{layer}")
                for res in results:
                    ok = bool(res.holds) != bool(spec.negated)
                    holds[res.region_id] = holds[res.region_id] and ok
                    region = next(r for r in base.regions if r.region_id == res.region_id)
                    region.details.setdefault("relations", []).append(res.as_dict())
    finally:
        if close:
            con.close()
    for region in base.regions:
        if unchecked:
            region.flags.append("relation_not_checkable")
        if checked and not holds[region.region_id]:
            region.flags.append("relation_failed")
    ranked = [r for r in base.regions if holds[r.region_id]] + [r for r in base.regions if not holds[r.region_id]]
    details = dict(base.details, relations_checked=checked, relations_unchecked=unchecked)
    return Answer(text, "relations", ranked[:k], base.abstained, base.reason, base.near_misses,
                  base.full_res_reads, details)
