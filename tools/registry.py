"""The one tool registry: name, title, description (one per tool), input / output models and the
plain function of every tool. The MCP server (:mod:`geosearch_server.mcp_server`) and the LangChain binding of
the LLM planner (:mod:`geosearch_server.planner.tools`) are both built from :data:`TOOLS`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from geosearch_tools import answer as t_answer
from geosearch_tools import check_relation as t_rel
from geosearch_tools import coarse_search as t_coarse
from geosearch_tools import explain as t_explain
from geosearch_tools import parse_query as t_parse
from geosearch_tools import segment_region as t_seg
from geosearch_tools import zoom_tile as t_zoom


@dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    fn: Callable[..., BaseModel]
    images: bool = False  # the output carries PNG previews (sent as MCP image content)
    sampling: bool = False  # may ask the client's LLM (MCP sampling) when the input says use_llm
    read_only: bool = True


TOOLS: list[ToolSpec] = [
    ToolSpec(
        "parse_query",
        "Parse a region query",
        "Parse a query in words into targets, attributes, relations (near, far_from, within, intersects, "
        "contains, along, between, density, edge_of with layer, distance and negation), geo constraints, time "
        "(dates, change), exclusions and the positive/negative prompts to embed.",
        t_parse.ParseQueryInput,
        t_parse.ParseQueryOutput,
        t_parse.run,
        sampling=True,
    ),
    ToolSpec(
        "coarse_search",
        "Coarse tile search",
        "Rank the tiles of an index for a query (or prompts), optionally inside an area; returns tile id, "
        "scale, bbox and polygon in EPSG:4326 and score.",
        t_coarse.CoarseSearchInput,
        t_coarse.CoarseSearchOutput,
        t_coarse.run,
    ),
    ToolSpec(
        "zoom_tile",
        "Zoom into a tile",
        "One pyramid step inside a tile (or bbox): ranked finer sub-windows plus a PNG preview of the window "
        "(image content, ≤ 1 MB).",
        t_zoom.ZoomTileInput,
        t_zoom.ZoomTileOutput,
        t_zoom.run,
        images=True,
    ),
    ToolSpec(
        "segment_region",
        "Segment candidate regions",
        "Candidate region polygons (EPSG:4326) with scores inside a tile or bbox (heatmap segmentation).",
        t_seg.SegmentRegionInput,
        t_seg.SegmentRegionOutput,
        t_seg.run,
        images=True,
    ),
    ToolSpec(
        "check_relation",
        "Check a spatial relation",
        "For each region: does it hold near / far_from / within / intersects / contains / along / between / "
        "density / edge_of a layer of the index (name or role: roads, water, buildings...)? negated=true asks "
        "for the opposite. Returns holds, satisfied, the measured value and the nearest feature.",
        t_rel.CheckRelationInput,
        t_rel.CheckRelationOutput,
        t_rel.run,
    ),
    ToolSpec(
        "explain",
        "Explain regions",
        "Score breakdown per prompt, relation results, calibrated confidence, evidence tiles with previews "
        "and a short explanation for regions and a query.",
        t_explain.ExplainInput,
        t_explain.ExplainOutput,
        t_explain.run,
        images=True,
    ),
    ToolSpec(
        "answer",
        "Answer a region query",
        "The whole answering chain (parse, coarse search, pyramid, segmentation, relations, calibrated "
        "abstention, explanation) - the same one `geosearch eval` scores: a GeoJSON FeatureCollection of "
        "regions with confidence and flags, or an abstention with its reason and the best near-misses; "
        "a 512 px picture of the regions (image content) and an HTML map page at map_uri.",
        t_answer.AnswerInput,
        t_answer.AnswerOutput,
        t_answer.run,
        read_only=False,
        images=True,
    ),
]

BY_NAME: dict[str, ToolSpec] = {t.name: t for t in TOOLS}
