"""The planner: a LangGraph StateGraph over the same tool functions the MCP server exposes.

Deterministic by default (no LLM)::

    parse -> coarse -> relations -> refine (zoom / segment) -> calibrate (abstain?) -> explain

It decides how many tiles to refine (those whose coarse score is within half a standard deviation
of the best, at most ``settings.pyramid_top_n``), uses the best engine method available
(abstain > segment > pyramid > coarse, from :func:`geosearch.pipeline.list_methods`), drops
regions that fail a relation of the query (they become near-misses), and abstains when nothing
survives or the calibrated confidence of the best region is below the engine's threshold.

The LLM variant (:func:`run_llm_planner`) lets a chat model choose the tools itself: the same
``tools/`` functions and pydantic schemas are bound as LangChain tools.
"""

from __future__ import annotations

import json
import operator
from typing import Annotated, Any, TypedDict

import numpy as np
from pydantic import BaseModel, Field

from geosearch.errors import GeoSearchError
from tools import check_relation as t_rel
from tools import coarse_search as t_coarse
from tools import explain as t_explain
from tools import parse_query as t_parse
from tools import segment_region as t_seg
from tools import zoom_tile as t_zoom
from tools.common import ProgressFn, RegionOut, TileOut, Workspace, report

STEPS = 6


class PlanRequest(BaseModel):
    text: str = Field(min_length=1, max_length=2000)
    index: str = Field(min_length=1)
    area: list[float] | dict[str, Any] | None = None
    k: int = Field(5, ge=1, le=50)
    explain: bool = True
    use_llm_parser: bool = False


class PlanState(TypedDict, total=False):
    request: PlanRequest
    parsed: t_parse.ParseQueryOutput
    tiles: list[TileOut]
    score_stats: dict[str, float]
    method: str
    candidates: list[RegionOut]
    near_misses: list[RegionOut]
    abstained: bool
    reason: str | None
    explanation: str | None
    relations_unchecked: list[str]
    trace: Annotated[list[str], operator.add]


def best_method() -> str:
    """abstain > segment > pyramid > coarse, whichever the engine registers."""
    from geosearch.pipeline import list_methods

    names = {m.name for m in list_methods()}
    for name in ("abstain", "segment", "pyramid", "coarse"):
        if name in names:
            return name
    return "coarse"


def _tile_region(t: TileOut) -> RegionOut:
    return RegionOut(id=t.id, polygon=t.polygon, bbox=t.bbox, score=t.score, scale_m=t.scale_m,
                     evidence_tiles=[t.id])


def build_graph(ws: Workspace, progress: ProgressFn | None = None):
    from langgraph.graph import END, START, StateGraph

    settings = ws.settings

    def parse(state: PlanState) -> PlanState:
        req = state["request"]
        report(progress, 0, STEPS, "parsing the query")
        parsed = t_parse.run(t_parse.ParseQueryInput(text=req.text, use_llm=req.use_llm_parser), ws)
        return {"parsed": parsed, "trace": [f"parse: targets={[t.text for t in parsed.targets]} "
                                            f"relations={[r.predicate + ':' + r.layer for r in parsed.relations]} "
                                            f"source={parsed.source}"]}

    def coarse(state: PlanState) -> PlanState:
        req, parsed = state["request"], state["parsed"]
        report(progress, 1, STEPS, "coarse search")
        n = max(3 * req.k, 20 if parsed.relations else 10)
        out = t_coarse.run(t_coarse.CoarseSearchInput(index=req.index, prompts=parsed.positive_prompts,
                                                      negative_prompts=parsed.negative_prompts or None,
                                                      area=req.area, k=n), ws)
        return {"tiles": out.tiles, "score_stats": out.score_stats, "method": best_method(),
                "trace": [f"coarse: {len(out.tiles)} tiles, best {out.tiles[0].score:.3f}"
                          if out.tiles else "coarse: no tiles"]}

    def _filter(regions: list[RegionOut], state: PlanState) -> tuple[list[RegionOut], list[RegionOut], list[str]]:
        parsed = state["parsed"]
        if not parsed.relations or not regions:
            return regions, [], []
        keep = {r.id: r for r in regions}
        dropped: list[RegionOut] = []
        unchecked: list[str] = []
        from geosearch import db

        with ws.using(state["request"].index) as h:
            con = db.connect(h.path, read_only=True)
            try:
                for spec in parsed.relations:
                    geoms = [(r.id, r.as_input().geometry()) for r in keep.values()]
                    if not geoms:
                        break
                    try:
                        name, _, res = t_rel.check(con, geoms, spec.predicate, spec.layer, spec.distance_m,
                                                   spec.layer_b, spec.threshold)
                    except GeoSearchError as exc:
                        unchecked.append(f"{spec.phrase or spec.predicate}: {exc}")
                        continue
                    for r in res:
                        reg = keep.get(r.region_id)
                        if reg is None:
                            continue
                        reg.details.setdefault("relations", []).append(
                            {"predicate": r.predicate, "layer": name, "holds": bool(r.holds),
                             "value": None if r.value is None else float(r.value), "unit": r.unit,
                             "nearest_id": None if r.nearest_id is None else str(r.nearest_id)})
                        if not r.holds:
                            reg.flags.append(f"fails:{spec.predicate}:{name}")
                            dropped.append(keep.pop(r.region_id))
            finally:
                con.close()
        survivors = [r for r in regions if r.id in keep]
        if unchecked:
            for r in survivors:
                r.flags.append("relation_unchecked")
        return survivors, dropped, unchecked

    def relations(state: PlanState) -> PlanState:
        report(progress, 2, STEPS, "checking relations")
        tiles = [_tile_region(t) for t in state["tiles"]]
        kept, dropped, unchecked = _filter(tiles, state)
        kept_ids = {r.id for r in kept}
        return {"tiles": [t for t in state["tiles"] if t.id in kept_ids], "near_misses": dropped[:5],
                "relations_unchecked": unchecked,
                "trace": [f"relations: {len(kept)} tiles kept, {len(dropped)} dropped"
                          + (f", unchecked: {unchecked}" if unchecked else "")]}

    def refine(state: PlanState) -> PlanState:
        req, parsed, tiles = state["request"], state["parsed"], state["tiles"]
        report(progress, 3, STEPS, "refining the best tiles")
        method = state["method"]
        if not tiles:
            return {"candidates": [], "trace": ["refine: nothing to refine"]}
        scores = np.array([t.score for t in tiles])
        spread = float(state["score_stats"].get("std", 0.0))
        n = int((scores >= scores[0] - 0.5 * spread).sum())
        n = max(1, min(n, settings.pyramid_top_n, max(req.k, 3)))
        chosen = tiles[:n]
        cands: list[RegionOut] = []
        common = {"index": req.index, "prompts": parsed.positive_prompts,
                  "negative_prompts": parsed.negative_prompts or None}
        if method in ("abstain", "segment"):
            for t in chosen:
                out = t_seg.run(t_seg.SegmentRegionInput(tile=t.id, k=max(2, req.k), **common), ws)
                cands += out.regions
        elif method == "pyramid":
            for t in chosen:
                out = t_zoom.run(t_zoom.ZoomTileInput(tile=t.id, k=2, preview=False, **common), ws)
                for w in out.windows:
                    cands.append(RegionOut(id=f"zoom-{t.id}-{w.rank}", polygon=w.polygon, bbox=w.bbox,
                                           score=w.score, scale_m=w.scale_m, evidence_tiles=[t.id]))
        else:
            cands = [_tile_region(t) for t in tiles]
        if method != "coarse":  # a coarse tile that beats all of its refinements stays a candidate
            cands += [_tile_region(t) for t in chosen]
        cands = _dedupe(sorted(cands, key=lambda r: -r.score), iou=0.5)
        kept, dropped, _ = _filter(cands[: 4 * req.k], state)
        return {"candidates": kept, "near_misses": (state.get("near_misses") or []) + dropped[:5],
                "trace": [f"refine: method={method}, {n} tile(s) refined, {len(cands)} candidates, "
                          f"{len(kept)} pass the relations"]}

    def calibrate(state: PlanState) -> PlanState:
        req, parsed = state["request"], state["parsed"]
        report(progress, 4, STEPS, "calibrating")
        cands = state.get("candidates") or []
        near = sorted(state.get("near_misses") or [], key=lambda r: -r.score)
        reason = None
        threshold = None
        if cands:
            from shapely.geometry import shape

            from geosearch.refine import calibrate as cal
            from geosearch.refine.common import embed_windows
            from tools.common import query_vector

            with ws.using(req.index) as h:
                idx = h.index
                vec = query_vector(idx, parsed.positive_prompts, parsed.negative_prompts)
                params = cal.load_calibration(idx.meta.get("model_name"))
                threshold = float(params.get("threshold", 0.5))
                # the best candidates are rescored at their own extent, as the engine's methods do,
                # so that the gallery reference (d_ref) compares like with like
                cands.sort(key=lambda r: -r.score)
                head = cands[: min(16, max(req.k, cal.REF_REGIONS))]
                emb, _ = embed_windows(idx, [idx.area_to_mosaic_crs(shape(r.polygon), "EPSG:4326").bounds
                                             for r in head])
                own = {r.id: float(e @ vec) for r, e in zip(head, emb)}
                floor = min(own.values())
                for i, r in enumerate(cands):   # the rest stay below the rescored head, in their order
                    r.details["s_region"] = round(own[r.id] if i < len(head) else min(r.score, floor), 6)
                cands.sort(key=lambda r: -r.details["s_region"])
                confs, top_feats = cal.region_confidences(idx, vec, [(r.details["s_region"], None) for r in cands],
                                                          params, all_scores=list(own.values()))
                for rank, (r, conf) in enumerate(zip(cands, confs)):
                    r.confidence = conf
                    if rank == 0:
                        r.details["calibration"] = {k: round(float(v), 4) for k, v in top_feats.items()}
                    if not params.get("calibrated", False):
                        r.flags.append("uncalibrated")
            cands.sort(key=lambda r: -(r.confidence or 0.0))
        final = cands[: req.k]
        abstained = False
        if not final:
            abstained = True
            reason = ("no candidate satisfies the query's relations" if near
                      else "no tile of the index matches the query")
        elif state["method"] == "abstain" and threshold is not None and (final[0].confidence or 0) < threshold:
            abstained = True
            from geosearch.refine.calibrate import abstain_reason

            reason = abstain_reason(final[0].confidence, threshold, final[0].details.get("calibration", {}))
        if abstained:
            near = (final + near)[:5]
            final = []
        return {"candidates": final, "near_misses": near[:5], "abstained": abstained, "reason": reason,
                "trace": [f"calibrate: {'abstain: ' + str(reason) if abstained else str(len(final)) + ' region(s)'}"]}

    def explain(state: PlanState) -> PlanState:
        req = state["request"]
        report(progress, 5, STEPS, "explaining")
        regions = state.get("candidates") or state.get("near_misses") or []
        if not req.explain or not regions:
            return {"explanation": state.get("reason"), "trace": ["explain: skipped"]}
        out = t_explain.run(t_explain.ExplainInput(index=req.index, regions=[r.as_input() for r in regions[:5]],
                                                   query=req.text, previews=0, check_relations=False,
                                                   use_llm=req.use_llm_parser), ws)
        text = out.explanation
        if state.get("abstained"):
            text = f"Abstained: {state.get('reason')}. Best near-misses follow. " + text
        return {"explanation": text, "trace": ["explain: done"]}

    def after_coarse(state: PlanState) -> str:
        return "relations" if state.get("tiles") else "calibrate"

    g = StateGraph(PlanState)
    for name, fn in [("parse", parse), ("coarse", coarse), ("relations", relations), ("refine", refine),
                     ("calibrate", calibrate), ("explain", explain)]:
        g.add_node(name, fn)
    g.add_edge(START, "parse")
    g.add_edge("parse", "coarse")
    g.add_conditional_edges("coarse", after_coarse, {"relations": "relations", "calibrate": "calibrate"})
    g.add_edge("relations", "refine")
    g.add_edge("refine", "calibrate")
    g.add_edge("calibrate", "explain")
    g.add_edge("explain", END)
    return g.compile()


def _dedupe(regions: list[RegionOut], iou: float) -> list[RegionOut]:
    from shapely.geometry import shape

    kept: list[tuple[RegionOut, Any]] = []
    for r in regions:
        g = shape(r.polygon)
        if any(g.intersection(o).area / max(g.union(o).area, 1e-18) > iou for _, o in kept):
            continue
        kept.append((r, g))
    return [r for r, _ in kept]


class PlanResult(BaseModel):
    query: str
    index: str
    method: str
    abstained: bool
    reason: str | None = None
    regions: list[RegionOut]
    near_misses: list[RegionOut]
    explanation: str | None = None
    trace: list[str] = Field(default_factory=list)
    relations_unchecked: list[str] = Field(default_factory=list)
    planner: str = "deterministic"

    def geojson(self) -> dict:
        def feat(r: RegionOut) -> dict:
            props = {"id": r.id, "score": round(r.score, 6),
                     "confidence": None if r.confidence is None else round(r.confidence, 4),
                     "scale_m": r.scale_m, "evidence_tiles": r.evidence_tiles, "flags": r.flags, **r.details}
            return {"type": "Feature", "geometry": r.polygon, "properties": props}

        return json.loads(json.dumps({
            "type": "FeatureCollection", "features": [feat(r) for r in self.regions],
            "properties": {"query": self.query, "index": self.index, "method": self.method,
                           "planner": self.planner, "abstained": self.abstained, "reason": self.reason,
                           "near_misses": [feat(r) for r in self.near_misses], "explanation": self.explanation,
                           "relations_unchecked": self.relations_unchecked, "trace": self.trace}}, default=list))


def run_planner(req: PlanRequest, ws: Workspace, progress: ProgressFn | None = None) -> PlanResult:
    """Run the deterministic graph."""
    graph = build_graph(ws, progress)
    state = graph.invoke({"request": req, "trace": []})
    report(progress, STEPS, STEPS, "done")
    return PlanResult(query=req.text, index=ws.display_name(ws.resolve(req.index)), method=state.get("method", "coarse"),
                      abstained=bool(state.get("abstained")), reason=state.get("reason"),
                      regions=state.get("candidates") or [], near_misses=state.get("near_misses") or [],
                      explanation=state.get("explanation"), trace=state.get("trace", []),
                      relations_unchecked=state.get("relations_unchecked") or [])


# --- the LLM variant ------------------------------------------------------------------------
class LoopState(TypedDict):
    messages: Annotated[list, operator.add]
    steps: int


TOOL_SPECS: list[tuple[str, str, Any, Any]] = [
    ("parse_query", "Parse a region query into targets, relations, time, exclusions and prompts.",
     t_parse.ParseQueryInput, t_parse.run),
    ("coarse_search", "Rank the index tiles for a query or prompts (optionally inside an area).",
     t_coarse.CoarseSearchInput, t_coarse.run),
    ("zoom_tile", "One pyramid step inside a tile or bbox: ranked finer sub-windows.", t_zoom.ZoomTileInput,
     t_zoom.run),
    ("segment_region", "Candidate region polygons with scores inside a tile or bbox.",
     t_seg.SegmentRegionInput, t_seg.run),
    ("check_relation", "Check near/far_from/within/intersects/contains/along/between/density/edge_of "
                       "for regions against a layer of the index.", t_rel.CheckRelationInput, t_rel.run),
    ("explain", "Score breakdown, relations, calibration and a short explanation for regions.",
     t_explain.ExplainInput, t_explain.run),
]


def langchain_tools(ws: Workspace, log: list[dict] | None = None) -> list:
    """The tool functions as LangChain StructuredTools (same pydantic input schemas)."""
    from langchain_core.tools import StructuredTool

    out = []
    for name, desc, model, fn in TOOL_SPECS:
        def call(_model=model, _fn=fn, _name=name, **kwargs: Any) -> str:
            try:
                result = _fn(_model(**kwargs), ws)
            except Exception as exc:  # noqa: BLE001 - the model reads the error and may retry
                from tools.common import tool_error_message

                msg = f"error: {tool_error_message(exc)}"
                if log is not None:
                    log.append({"tool": _name, "args": kwargs, "error": msg})
                return msg
            if log is not None:
                log.append({"tool": _name, "args": kwargs, "result": result})
            return result.model_dump_json(exclude={"preview"})[:20000]

        out.append(StructuredTool.from_function(func=call, name=name, description=desc, args_schema=model))
    return out


def run_llm_planner(req: PlanRequest, ws: Workspace, model=None, *, max_steps: int = 12,
                    progress: ProgressFn | None = None) -> PlanResult:
    """A chat model chooses the tools (LangGraph loop: agent -> tools -> agent ... -> end)."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
    from langgraph.graph import END, START, StateGraph

    from prompts import render

    if model is None:
        from server.llm import chat_model_from_settings

        model = chat_model_from_settings(ws.settings)
    log: list[dict] = []
    lc_tools = langchain_tools(ws, log)
    by_name = {t.name: t for t in lc_tools}
    try:
        bound = model.bind_tools(lc_tools)
    except NotImplementedError:
        bound = model

    def agent(state: LoopState) -> dict:
        report(progress, min(state["steps"], max_steps - 1), max_steps, "model thinking")
        msg = bound.invoke(state["messages"])
        return {"messages": [msg], "steps": state["steps"] + 1}

    def act(state: LoopState) -> dict:
        msg = state["messages"][-1]
        outs = []
        for call in msg.tool_calls:
            tool = by_name.get(call["name"])
            content = (f"error: unknown tool {call['name']!r}; tools: {', '.join(by_name)}" if tool is None
                       else tool.invoke(call["args"]))
            outs.append(ToolMessage(content=str(content), tool_call_id=call.get("id") or call["name"]))
        return {"messages": outs}

    def route(state: LoopState) -> str:
        msg = state["messages"][-1]
        if isinstance(msg, AIMessage) and msg.tool_calls and state["steps"] < max_steps:
            return "act"
        return END

    g = StateGraph(LoopState)
    g.add_node("agent", agent)
    g.add_node("act", act)
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", route, {"act": "act", END: END})
    g.add_edge("act", "agent")
    system = render("answer_region_query", index=req.index, question=req.text)
    system += f"\n\nAlways pass index=\"{req.index}\". Return at most {req.k} regions."
    state = g.compile().invoke({"messages": [SystemMessage(system), HumanMessage(req.text)], "steps": 0},
                               {"recursion_limit": 4 * max_steps + 4})
    final = state["messages"][-1]
    regions: list[RegionOut] = []
    rel_fail: set[str] = set()
    for entry in log:
        res = entry.get("result")
        if isinstance(res, t_seg.SegmentRegionOutput):
            regions += res.regions
        elif isinstance(res, t_zoom.ZoomTileOutput):
            regions += [RegionOut(id=f"zoom-{w.parent_tile or 'bbox'}-{w.rank}", polygon=w.polygon, bbox=w.bbox,
                                  score=w.score, scale_m=w.scale_m,
                                  evidence_tiles=[w.parent_tile] if w.parent_tile else []) for w in res.windows]
        elif isinstance(res, t_coarse.CoarseSearchOutput) and not regions:
            regions += [_tile_region(t) for t in res.tiles]
        elif isinstance(res, t_rel.CheckRelationOutput):
            rel_fail |= {r.region_id for r in res.results if not r.holds}
    regions = _dedupe(sorted([r for r in regions if r.id not in rel_fail], key=lambda r: -r.score), 0.5)[: req.k]
    near = [r for r in regions if r.id in rel_fail][:5]
    text = final.content if isinstance(final.content, str) else json.dumps(final.content)
    trace = [f"{e['tool']}({', '.join(f'{k}={v!r}'[:60] for k, v in e['args'].items())})"
             + (" -> error" if "error" in e else "") for e in log]
    return PlanResult(query=req.text, index=req.index, method="llm", abstained=not regions,
                      reason=None if regions else "the model returned no region", regions=regions, near_misses=near,
                      explanation=text, trace=trace, planner="llm")


def answer(req: PlanRequest, ws: Workspace, *, llm: bool = False, model=None,
           progress: ProgressFn | None = None) -> PlanResult:
    if llm:
        return run_llm_planner(req, ws, model, progress=progress)
    return run_planner(req, ws, progress)


__all__ = ["PlanRequest", "PlanResult", "answer", "best_method", "build_graph", "langchain_tools",
           "run_llm_planner", "run_planner"]
