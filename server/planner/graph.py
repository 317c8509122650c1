"""The LLM planner graph: ``agent`` (the chat model with the tools bound) -> ``tools`` (LangGraph's
prebuilt ``ToolNode``) -> ``agent`` ... until the model stops calling tools or the recursion limit is
reached. The regions the model found are then calibrated by the chain's own last stages."""

from __future__ import annotations

from typing import Any

from geosearch.pipeline import Answer
from geosearch_server.planner.state import PlannerState
from geosearch_server.planner.tools import langchain_tools
from geosearch_tools.common import ProgressFn, Workspace, parse_area

MAX_STEPS = 12


def build_graph(model, lc_tools: list):
    """agent <-> tools (prebuilt ToolNode and tools_condition)."""
    from langgraph.graph import END, START, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    try:
        bound = model.bind_tools(lc_tools)
    except NotImplementedError:
        bound = model

    def agent(state: PlannerState) -> dict:
        return {"messages": [bound.invoke(state["messages"])]}

    g = StateGraph(PlannerState)
    g.add_node("agent", agent)
    g.add_node("tools", ToolNode(lc_tools, handle_tool_errors=True))
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: END})
    g.add_edge("tools", "agent")
    return g.compile()


def _candidates(index, log: list[dict]) -> list:
    """The regions the model saw, as engine candidates (mosaic CRS): segment_region regions, else
    zoom_tile windows, else coarse_search tiles."""
    from shapely.geometry import shape

    from geosearch.geo import WGS84, reproject_geom
    from geosearch.refine.heatmap import Candidate
    from geosearch_tools import coarse_search as t_coarse
    from geosearch_tools import segment_region as t_seg
    from geosearch_tools import zoom_tile as t_zoom

    found: dict[str, list] = {"seg": [], "zoom": [], "coarse": []}
    for entry in log:
        res = entry.get("result")
        if isinstance(res, t_seg.SegmentRegionOutput):
            found["seg"] += [(r.polygon, r.score, r.scale_m, r.evidence_tiles) for r in res.regions]
        elif isinstance(res, t_zoom.ZoomTileOutput):
            found["zoom"] += [
                (w.polygon, w.score, w.scale_m, [w.parent_tile] if w.parent_tile else []) for w in res.windows
            ]
        elif isinstance(res, t_coarse.CoarseSearchOutput):
            found["coarse"] += [(t.polygon, t.score, t.scale_m, [t.id]) for t in res.tiles]
    picked = found["seg"] + found["zoom"] or found["coarse"]
    out = []
    for poly, score, scale, evidence in picked:
        g84 = shape(poly)
        gm = reproject_geom(g84, WGS84, index.crs)
        out.append(
            Candidate(gm, g84, float(score), tuple(gm.bounds), scale_m=scale, evidence_tiles=list(evidence))
        )
    return out


def run_llm_planner(
    text: str,
    index_ref: str,
    ws: Workspace,
    model=None,
    *,
    k: int = 5,
    area: Any = None,
    max_steps: int = MAX_STEPS,
    progress: ProgressFn | None = None,
) -> Answer:
    """A chat model chooses the tools; its regions are calibrated by :func:`geosearch.chain.finish`."""
    from langchain_core.messages import HumanMessage, SystemMessage
    from langgraph.errors import GraphRecursionError

    from geosearch import chain
    from geosearch.refine.common import query_vector
    from geosearch.refine.merge import merge_candidates
    from geosearch_prompts import render

    if model is None:
        from geosearch_server.llm import chat_model_from_settings

        model = chat_model_from_settings(ws.settings)
    log: list[dict] = []
    graph = build_graph(model, langchain_tools(ws, log))
    system = render("answer_region_query", index=index_ref, question=text)
    system += f'\n\nAlways pass index="{index_ref}". Return at most {k} regions.'
    final_text = ""
    try:
        state = graph.invoke(
            {"messages": [SystemMessage(system), HumanMessage(text)]}, {"recursion_limit": 2 * max_steps + 1}
        )
        last = state["messages"][-1]
        final_text = last.content if isinstance(last.content, str) else str(last.content)
    except GraphRecursionError:
        final_text = f"the model did not finish within {max_steps} steps"
    q = chain.parse(text, k=k, area=parse_area(area))
    with ws.using(index_ref) as h:
        idx = h.index
        cands = merge_candidates(_candidates(idx, log), iou=0.5)  # one candidate per place
        vec = query_vector(idx, [q.look_for])
        if not cands:
            ans = Answer(text, "llm", [], abstained=True, reason="not found: the model returned no region")
        else:
            ans = chain.finish(
                idx, q, vec, cands, chain.chain_config(ws.settings), method="llm", progress=progress
            )
    trace = [
        f"{e['tool']}({', '.join(f'{a}={v!r}'[:60] for a, v in e['args'].items())})"
        + (" -> error" if "error" in e else "")
        for e in log
    ]
    ans.details.update({"planner": "llm", "trace": trace, "model_reply": final_text})
    if ans.explanation is None:
        ans.explanation = final_text
    return ans
