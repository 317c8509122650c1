"""Tool ``check_relation``: does each region satisfy near / far_from / within / ... a layer of the
index? One call of the engine's relation applier (:func:`geosearch.relations.apply.apply_relations`),
the same one the answering chain and ``explain`` use: ``negated`` asks for the opposite ("not
within water"), ``layer`` may be a registered layer name or a role (roads, water, buildings...).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from geosearch_tools.common import LIMITS, ProgressFn, RegionIn, StrictInput, Workspace, jsonable, report

PredicateName = Literal[
    "near", "far_from", "within", "intersects", "contains", "along", "between", "density", "edge_of"
]


class CheckRelationInput(StrictInput):
    index: str = Field(
        min_length=1, max_length=1000, description="index path (relative to a data root); its layers are used"
    )
    regions: list[RegionIn] = Field(min_length=1, max_length=LIMITS.max_regions)
    predicate: PredicateName
    layer: str = Field(
        min_length=1, max_length=63, description="layer name or role (roads, water, buildings...)"
    )
    distance_m: float | None = Field(
        None, ge=0, le=1e6, description="metres (near, far_from, along, between, edge_of)"
    )
    layer_b: str | None = Field(None, max_length=63, description="second layer (between)")
    threshold: float | None = Field(None, description="density: features per km²; along: min share (0-1)")
    negated: bool = Field(False, description="the region must NOT satisfy the predicate ('not within water')")


class RelationOut(BaseModel):
    region_id: str
    holds: bool = Field(description="the predicate holds for the region")
    satisfied: bool = Field(description="the relation as asked holds (holds, or not holds when negated)")
    negated: bool = False
    value: float | None
    unit: str
    nearest_id: str | None
    predicate: str
    layer: str
    layer_b: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_engine(cls, d: dict) -> RelationOut:
        return cls(
            region_id=str(d["region_id"]),
            holds=bool(d["holds"]),
            satisfied=bool(d["satisfied"]),
            negated=bool(d.get("negated")),
            value=None if d.get("value") is None else float(d["value"]),
            unit=str(d.get("unit", "")),
            nearest_id=None if d.get("nearest_id") is None else str(d["nearest_id"]),
            predicate=d["predicate"],
            layer=d["layer"],
            layer_b=d.get("layer_b"),
            details=jsonable(d.get("details") or {}),
        )


class CheckRelationOutput(BaseModel):
    index: str
    predicate: str
    layer: str
    layer_b: str | None = None
    distance_m: float | None = None
    negated: bool = False
    results: list[RelationOut]
    held: int = Field(description="regions for which the relation as asked holds")


def run(inp: CheckRelationInput, ws: Workspace, progress: ProgressFn | None = None) -> CheckRelationOutput:
    from geosearch.query import RelationSpec
    from geosearch.relations.apply import check_regions

    regions = [(r.id, r.geometry()) for r in inp.regions]
    spec = RelationSpec(
        predicate=inp.predicate,
        layer=inp.layer,
        layer_b=inp.layer_b,
        distance_m=inp.distance_m,
        threshold=inp.threshold,
        negated=inp.negated,
    )
    path = ws.resolve(inp.index)  # sandboxed; only the index's layers are read (read-only), no model
    report(progress, 0, 1, "checking relation")
    results = check_regions(path, regions, spec)
    report(progress, 1, 1, "done")
    out = [RelationOut.from_engine(d) for rid, _ in regions for d in results[rid]]
    first = out[0] if out else None
    return CheckRelationOutput(
        index=ws.display_name(path),
        predicate=inp.predicate,
        layer=first.layer if first else inp.layer,
        layer_b=first.layer_b if first else inp.layer_b,
        distance_m=inp.distance_m,
        negated=inp.negated,
        results=out,
        held=sum(r.satisfied for r in out),
    )
