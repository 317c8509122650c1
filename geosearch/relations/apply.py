"""The one relation applier: the parsed query's relations checked for regions against vector
layers, used by the answering chain, the ``check_relation`` tool and ``explain``.

It honours negation (``RelationSpec.negated``: "not within water" is satisfied where ``within``
does not hold), resolves layer roles (roads, water...) to registered layers, reads the query's
time (a layer whose registry ``params`` record a ``date`` outside the query's dates or range is not
used, and says so; a layer without a date is used and the report notes that its time is unknown),
and speaks one flag vocabulary:

``relation_failed``        a checkable relation of the query does not hold for the region;
``relation_not_checkable`` a relation of the query could not be checked (no such layer, a layer
                           from another time, or no layers at all).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geosearch.errors import GeoSearchError, InputError
from geosearch.query import RelationSpec, TimeSpec

FLAG_FAILED = "relation_failed"
FLAG_NOT_CHECKABLE = "relation_not_checkable"


@dataclass
class RelationReport:
    """What the relations of a query say about a set of regions."""

    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # region id -> checks
    failed: set[str] = field(default_factory=set)  # ids failing at least one checked relation
    checked: list[str] = field(default_factory=list)  # "near:roads", "not within:water"
    unchecked: list[str] = field(default_factory=list)  # "phrase: why"
    notes: list[str] = field(default_factory=list)

    def flags(self, region_id: str) -> list[str]:
        out = []
        if region_id in self.failed:
            out.append(FLAG_FAILED)
        if self.unchecked:
            out.append(FLAG_NOT_CHECKABLE)
        return out

    def holds(self, region_id: str) -> bool:
        return region_id not in self.failed


def _label(spec: RelationSpec, layer: str, layer_b: str | None = None) -> str:
    name = f"{spec.predicate}:{layer}" + (f"+{layer_b}" if layer_b else "")
    return f"not {name}" if spec.negated else name


def _time_mismatch(layer_params: dict, time: TimeSpec | None) -> str | None:
    """Why a dated layer does not fit the query's time (None when it fits or nothing is known)."""
    date = str(layer_params.get("date") or "")
    if not date or time is None or time.matches(date):
        return None
    return f"the layer is from {date}, the query asks for {time.phrase or ', '.join(time.dates)}"


def apply_relations(
    con, regions: Sequence[tuple[str, Any]], specs: Sequence[RelationSpec], time: TimeSpec | None = None
) -> RelationReport:
    """Check every relation in ``specs`` for the ``(id, geometry in EPSG:4326)`` regions on the
    layers of the DuckDB connection ``con``. A relation that cannot be checked is reported in
    ``unchecked`` (never silently passed or failed)."""
    from geosearch.relations.layers import get_layer, resolve_layer
    from geosearch.relations.predicates import check_relation

    report = RelationReport(results={rid: [] for rid, _ in regions})
    if not specs or not regions:
        return report
    for spec in specs:
        what = spec.phrase or _label(spec, spec.layer)
        try:
            layer = resolve_layer(con, spec.layer)
            layer_b = resolve_layer(con, spec.layer_b) if spec.layer_b else None
            for name in (layer, layer_b):
                if name is None:
                    continue
                params = get_layer(con, name).params or {}
                why = _time_mismatch(params, time)
                if why:
                    raise GeoSearchError(why)
                if time is not None and time.constrains and not params.get("date"):
                    report.notes.append(
                        f"layer {name} has no date: the query's time is not checked against it"
                    )
            res = check_relation(
                con, list(regions), spec.predicate, layer, spec.distance_m, layer_b, threshold=spec.threshold
            )
        except GeoSearchError as exc:
            report.unchecked.append(f"{what}: {exc}")
            continue
        report.checked.append(_label(spec, layer, layer_b))
        for r in res:
            satisfied = bool(r.holds) != bool(spec.negated)
            entry = {**r.as_dict(), "negated": bool(spec.negated), "satisfied": satisfied}
            report.results[str(r.region_id)].append(entry)
            if not satisfied:
                report.failed.add(str(r.region_id))
    return report


def check_regions(
    index_path, regions: Sequence[tuple[str, Any]], spec: RelationSpec
) -> dict[str, list[dict]]:
    """One relation for ``(id, geometry in EPSG:4326)`` regions on an index's layers:
    ``{region_id: [result]}`` with ``holds``, ``satisfied`` (negation applied), ``value``, ``unit``.
    Everything that needs no index is checked before the index file is opened; a relation that
    cannot be checked (no such layer...) is an error here, not a flag."""
    from geosearch.relations.predicates import validate_params

    if len({rid for rid, _ in regions}) != len(regions):
        raise InputError("region ids must be unique")
    validate_params(spec.predicate, spec.layer, spec.distance_m, spec.layer_b, threshold=spec.threshold)
    with layers_connection(index_path) as con:
        rep = apply_relations(con, regions, [spec])
    if rep.unchecked:
        raise GeoSearchError(rep.unchecked[0].split(": ", 1)[-1])
    return rep.results


LAYER_SUFFIXES = {".geojson", ".json", ".gpkg", ".parquet", ".geoparquet", ".shp", ".fgb", ".pbf"}
_folder_cache: dict[tuple, Any] = {}
_folder_lock = threading.RLock()


@contextmanager
def layers_connection(index_path, layers_dir: str | None = None) -> Iterator[Any]:
    """A DuckDB connection holding the layers: an in-memory one loaded from ``layers_dir`` (one
    file per layer, the stem is its name: the benchmark format; cached per folder state and used
    under a lock), or the index file itself, read-only."""
    from geosearch import db

    if not layers_dir:
        con = db.connect(index_path, read_only=True)
        try:
            yield con
        finally:
            con.close()
        return
    folder = Path(layers_dir)
    files = (
        sorted(p for p in folder.iterdir() if p.suffix.lower() in LAYER_SUFFIXES) if folder.is_dir() else []
    )
    key = (str(folder.resolve()), tuple((p.name, p.stat().st_mtime_ns) for p in files))
    with _folder_lock:
        con = _folder_cache.get(key)
        if con is None:
            from geosearch.relations.layers import register_layer

            con = db.connect()
            for path in files:
                register_layer(con, path, path.stem.lower())
            _folder_cache[key] = con
        yield con
