"""Tool ``answer``: the whole answering chain (:func:`geosearch.chain.answer`: parse, coarse search,
pyramid, segmentation, relations, calibration / abstention, explanation) -> a GeoJSON
FeatureCollection of regions with confidence and flags, or an abstention with its reason and the
best near-misses. What this tool serves is exactly what ``geosearch eval`` scores."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from geosearch_tools.common import (
    ProgressFn,
    QueryText,
    RegionOut,
    StrictInput,
    Workspace,
    jsonable,
    parse_area,
    region_from_engine,
)
from geosearch_tools.zoom_tile import Preview


class AnswerInput(StrictInput):
    text: QueryText = Field(min_length=1, description="the question in words")
    index: str = Field(min_length=1, max_length=1000, description="index path (relative to a data root)")
    area: list[float] | dict[str, Any] | None = Field(
        None, description="bbox [minx, miny, maxx, maxy] in lon/lat, or a GeoJSON geometry (EPSG:4326)"
    )
    k: int = Field(5, ge=1, le=50, description="at most this many regions")
    explain: bool = Field(True, description="add a short explanation of the answer")
    preview: bool = Field(True, description="attach a 512 px picture of the regions (or near-misses)")


class AnswerOutput(BaseModel):
    answer_id: str
    uri: str = Field(description="resource URI of the cached GeoJSON")
    map_uri: str = Field(description="resource URI of a self-contained HTML map of the answer")
    abstained: bool
    reason: str | None = None
    method: str
    explanation: str | None = None
    regions: list[RegionOut] = Field(
        default_factory=list, description="ranked regions (empty when abstained)"
    )
    near_misses: list[RegionOut] = Field(default_factory=list)
    geojson: dict[str, Any] = Field(description="FeatureCollection (EPSG:4326); near-misses in properties")
    preview: Preview | None = Field(None, description="the regions outlined on the imagery (PNG)")


def run(inp: AnswerInput, ws: Workspace, progress: ProgressFn | None = None) -> AnswerOutput:
    from geosearch.chain import answer
    from geosearch.pipeline import MethodContext

    area = parse_area(inp.area)
    with ws.using(inp.index) as h:
        ctx = MethodContext(
            area=area, options={"explain": inp.explain}, settings=ws.settings, progress=progress
        )
        ans = answer(h.index, inp.text, inp.k, ctx)
        preview = answer_preview(ws, h, ans) if inp.preview else None
    return to_output(ans, ws, h.name, preview)


def answer_preview(ws: Workspace, h, ans) -> Preview | None:
    """The answer's regions (else its near-misses) outlined on one picture of the area they span."""
    from geosearch.geo import reproject_geom
    from geosearch_tools.zoom_tile import preview_for

    shown = ans.regions or ans.near_misses
    if not shown:
        return None
    idx = h.index
    geoms = [reproject_geom(r.polygon_wgs84, "EPSG:4326", idx.crs) for r in shown]
    import shapely

    x0, y0, x1, y1 = (float(v) for v in shapely.total_bounds(geoms))
    side = max(x1 - x0, y1 - y0) * 1.3 + 1.0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    mb = idx.mosaic().bounds
    bounds = (
        max(mb[0], cx - side / 2),
        max(mb[1], cy - side / 2),
        min(mb[2], cx + side / 2),
        min(mb[3], cy + side / 2),
    )
    return preview_for(ws, h, bounds, outlines=geoms, tag=f"answer-{id(ans)}")


def to_output(ans, ws: Workspace, index_name: str, preview: Preview | None = None) -> AnswerOutput:
    """An engine :class:`~geosearch.pipeline.Answer` at the tool boundary (converted once; the
    GeoJSON is cached as a resource)."""
    gj = jsonable(ans.geojson())
    gj["properties"]["index"] = index_name
    prov = gj["properties"].get("provenance")
    if prov:
        prov["index"] = index_name
        if ws.restricted:  # a served answer names no server-side paths
            prov["mosaic_files"] = [f.replace("\\", "/").rsplit("/", 1)[-1] for f in prov["mosaic_files"]]
    answer_id = ws.put_answer(gj)
    return AnswerOutput(
        answer_id=answer_id,
        uri=f"geosearch://answers/{answer_id}",
        map_uri=f"geosearch://answers/{answer_id}/map",
        abstained=ans.abstained,
        reason=ans.reason,
        method=ans.method,
        explanation=ans.explanation,
        regions=[region_from_engine(r) for r in ans.regions],
        near_misses=[region_from_engine(r) for r in ans.near_misses],
        geojson=gj,
        preview=preview,
    )
