"""Tool ``check_relation``: does each region satisfy near / far_from / within / ... a layer of the index?

Layers live in the index DuckDB (``geosearch layers add``). ``layer`` may be a registered layer name
or a role (roads, water, buildings, vegetation...) that picks the first layer with that role.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from geosearch.errors import InputError
from tools.common import ProgressFn, RegionIn, Workspace, report

PredicateName = Literal["near", "far_from", "within", "intersects", "contains", "along", "between", "density",
                        "edge_of"]


class CheckRelationInput(BaseModel):
    index: str = Field(min_length=1, description="index path (relative to a data root); its layers are used")
    regions: list[RegionIn] = Field(min_length=1, max_length=500)
    predicate: PredicateName
    layer: str = Field(min_length=1, max_length=63, description="layer name or role (roads, water, buildings...)")
    distance_m: float | None = Field(None, ge=0, le=1e6, description="metres (near, far_from, along, between, edge_of)")
    layer_b: str | None = Field(None, description="second layer (between)")
    threshold: float | None = Field(None, description="density: features per km²; along: min share (0-1)")


class RelationOut(BaseModel):
    region_id: str
    holds: bool
    value: float | None
    unit: str
    nearest_id: str | None
    predicate: str
    layer: str
    layer_b: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class CheckRelationOutput(BaseModel):
    index: str
    predicate: str
    layer: str
    layer_b: str | None = None
    distance_m: float | None = None
    results: list[RelationOut]
    held: int


def resolve_layer(con, name: str) -> str:
    from geosearch.relations.layers import resolve_layer as engine_resolve

    return engine_resolve(con, name)


def check(con, regions: list[tuple[str, Any]], predicate: str, layer: str, distance_m: float | None,
          layer_b: str | None = None, threshold: float | None = None) -> tuple[str, str | None, list]:
    from geosearch.relations import check_relation

    name = resolve_layer(con, layer)
    name_b = resolve_layer(con, layer_b) if layer_b else None
    res = check_relation(con, regions, predicate, name, distance_m, name_b, threshold=threshold)
    return name, name_b, res


def run(inp: CheckRelationInput, ws: Workspace, progress: ProgressFn | None = None) -> CheckRelationOutput:
    from geosearch import db

    regions = [(r.id, r.geometry()) for r in inp.regions]
    if len({rid for rid, _ in regions}) != len(regions):
        raise InputError("region ids must be unique")
    report(progress, 0, 1, "checking relation")
    with ws.using(inp.index) as h:
        con = db.connect(h.path, read_only=True)
        try:
            name, name_b, res = check(con, regions, inp.predicate, inp.layer, inp.distance_m, inp.layer_b,
                                      inp.threshold)
        finally:
            con.close()
    report(progress, 1, 1, "done")
    from tools.common import jsonable

    out = [RelationOut(region_id=r.region_id, holds=bool(r.holds), value=None if r.value is None else float(r.value),
                       unit=r.unit, nearest_id=None if r.nearest_id is None else str(r.nearest_id),
                       predicate=r.predicate, layer=r.layer, layer_b=r.layer_b, details=jsonable(r.details))
           for r in res]
    return CheckRelationOutput(index=h.name, predicate=inp.predicate, layer=name, layer_b=name_b,
                               distance_m=inp.distance_m, results=out, held=sum(r.holds for r in out))
