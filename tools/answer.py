"""Tool ``answer``: the whole chain through the planner -> GeoJSON FeatureCollection of regions with
confidence and flags, or an abstention with its reason and the best near-misses."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from tools.common import ProgressFn, Workspace


class AnswerInput(BaseModel):
    text: str = Field(min_length=1, max_length=2000, description="the question in words")
    index: str = Field(min_length=1, description="index path (relative to a data root)")
    area: list[float] | dict[str, Any] | None = Field(
        None, description="bbox [minx, miny, maxx, maxy] in lon/lat, or a GeoJSON geometry (EPSG:4326)")
    k: int = Field(5, ge=1, le=50, description="at most this many regions")
    explain: bool = True


class AnswerOutput(BaseModel):
    answer_id: str
    uri: str = Field(description="resource URI of the cached GeoJSON")
    abstained: bool
    reason: str | None = None
    method: str
    explanation: str | None = None
    geojson: dict[str, Any] = Field(description="FeatureCollection (EPSG:4326); near-misses in properties")
    trace: list[str] = Field(default_factory=list)


def run(inp: AnswerInput, ws: Workspace, progress: ProgressFn | None = None) -> AnswerOutput:
    from server.planner import PlanRequest, run_planner

    res = run_planner(PlanRequest(text=inp.text, index=inp.index, area=inp.area, k=inp.k, explain=inp.explain),
                      ws, progress)
    gj = res.geojson()
    answer_id = ws.put_answer(gj)
    return AnswerOutput(answer_id=answer_id, uri=f"geosearch://answers/{answer_id}", abstained=res.abstained,
                        reason=res.reason, method=res.method, explanation=res.explanation, geojson=gj,
                        trace=res.trace)
