"""Tool ``segment_region``: candidate region polygons with scores inside a tile or bbox."""

from __future__ import annotations

from pydantic import BaseModel, Field

from geosearch.geo import to_wgs84
from geosearch.refine.common import query_vector, window_bounds
from geosearch_tools.coarse_search import prompts_of
from geosearch_tools.common import ProgressFn, RegionOut, Workspace, jsonable, region_out, report
from geosearch_tools.zoom_tile import Preview, WindowRef, preview_for


class SegmentRegionInput(WindowRef):
    k: int = Field(10, ge=1, le=100, description="at most this many regions")
    preview: bool = Field(False, description="attach a PNG preview with the regions outlined")


class SegmentRegionOutput(BaseModel):
    index: str
    window_bbox: list[float]
    prompts: list[str]
    regions: list[RegionOut]
    preview: Preview | None = None


def run(inp: SegmentRegionInput, ws: Workspace, progress: ProgressFn | None = None) -> SegmentRegionOutput:
    from shapely.geometry import box

    from geosearch.refine import segment

    pos, neg = prompts_of(inp.query, inp.prompts, inp.negative_prompts)
    with ws.using(inp.index) as h:
        idx = h.index
        bounds = window_bounds(idx, inp.tile, inp.bbox)
        report(progress, 0, 2, "segmenting")
        vec = query_vector(idx, pos, neg)
        cands = segment(idx, inp.tile if inp.tile else bounds, vec, backend="heatmap")
        cands = sorted(cands, key=lambda c: -c.score)[: inp.k]
        tag = inp.tile or "bbox"
        regions = [
            region_out(
                f"seg-{tag}-{i}",
                c.polygon_wgs84,
                c.score,
                scale_m=c.scale_m,
                evidence_tiles=list(c.evidence_tiles) or ([inp.tile] if inp.tile else []),
                flags=list(c.flags),
                details=jsonable(
                    {"bbox_map": list(c.bbox_map), "features": c.features, "window_score": c.window_score}
                ),
            )
            for i, c in enumerate(cands, start=1)
        ]
        report(progress, 1, 2, "rendering preview")
        prev = (
            preview_for(ws, h, bounds, outlines=[c.polygon_map for c in cands], tag="seg")
            if inp.preview
            else None
        )
        window_bbox = list(to_wgs84(box(*bounds), idx.crs).bounds)
    report(progress, 2, 2, "done")
    return SegmentRegionOutput(
        index=h.name, window_bbox=window_bbox, prompts=pos, regions=regions, preview=prev
    )
