"""Tool ``coarse_search``: rank the index tiles for a query (or prompts), optionally inside an area."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

from geosearch.query import parse_query, query_from_prompts
from geosearch.refine.common import query_vector
from geosearch.search import score_stats, search
from geosearch_tools.common import (
    ProgressFn,
    Prompts,
    QueryText,
    StrictInput,
    TileOut,
    Workspace,
    parse_area,
    report,
)


class CoarseSearchInput(StrictInput):
    index: str = Field(
        min_length=1, max_length=1000, description="index path (relative to a data root) or catalogue name"
    )
    query: QueryText | None = Field(None, description="query in words (parsed into prompts)")
    prompts: Prompts | None = Field(None, description="prompts to embed instead of a query")
    negative_prompts: Prompts | None = Field(None, description="prompts to push away from")
    area: list[float] | dict[str, Any] | None = Field(
        None, description="bbox [minx, miny, maxx, maxy] in lon/lat, or a GeoJSON geometry (EPSG:4326)"
    )
    k: int = Field(10, ge=1, le=500)
    scales_m: list[float] | None = Field(None, max_length=32, description="restrict to these tile sizes (m)")
    context: float | None = Field(
        None,
        ge=0,
        le=100,
        description="weight of each tile's neighbourhood (same-scale tiles within half a side) in the "
        "ranking: 1 finds places whose surroundings match too (over scenes larger than the tiles); "
        "default the server's search_context (0: each tile by its own score)",
    )

    @model_validator(mode="after")
    def _one_query(self) -> CoarseSearchInput:
        if not (self.query and self.query.strip()) and not self.prompts:
            raise ValueError("give a query (words) or prompts")
        return self


class CoarseSearchOutput(BaseModel):
    index: str
    prompts: list[str]
    negative_prompts: list[str]
    tiles: list[TileOut]
    score_stats: dict[str, float] = Field(
        description="mean / std / max / median of all tile scores for these prompts (over an even sample of "
        "sampled_tiles tiles in a large index)"
    )
    warnings: list[str] = Field(default_factory=list, description="e.g. the index is only partly built")


def prompts_of(
    query: str | None, prompts: list[str] | None, negative: list[str] | None
) -> tuple[list[str], list[str]]:
    if prompts:
        pq = query_from_prompts(prompts, negative)
    else:
        pq = parse_query(query or "")
        if negative:
            pq.negative_prompts = list(dict.fromkeys(pq.negative_prompts + negative))
    return pq.positive_prompts, pq.negative_prompts


def run(inp: CoarseSearchInput, ws: Workspace, progress: ProgressFn | None = None) -> CoarseSearchOutput:
    pos, neg = prompts_of(inp.query, inp.prompts, inp.negative_prompts)
    report(progress, 0, 2, "embedding prompts")
    with ws.using(inp.index) as h:
        vec = query_vector(h.index, pos, neg)
        report(progress, 1, 2, "ranking tiles")
        area = parse_area(inp.area)
        hits = search(h.index, vec, inp.k, area=area, scales=inp.scales_m, context=inp.context)
        stats = score_stats(h.index, vec, max((x.tile_score for x in hits), default=None))
    report(progress, 2, 2, "done")
    from shapely.geometry import mapping

    tiles = [
        TileOut(
            rank=x.rank,
            id=x.tile_id,
            scale_m=x.scale_m,
            score=x.score,
            tile_score=x.tile_score,
            bbox=list(x.bbox_wgs84),
            polygon=mapping(x.polygon_wgs84),
            date=x.date,
        )
        for x in hits
    ]
    warnings = [] if h.index.complete else [h.index.incomplete_note()]
    warnings += [n for n in [h.index.upgrade_note()] if n]
    return CoarseSearchOutput(
        index=h.name, prompts=pos, negative_prompts=neg, tiles=tiles, score_stats=stats, warnings=warnings
    )
