"""The LangGraph planner: deterministic on a real mosaic (spacenet-vegas), and the LLM variant
driven by a fake chat model that emits tool calls."""

from __future__ import annotations

import json

import pytest
from conftest import shared_data


@pytest.fixture(scope="module")
def vegas_ws(tmp_path_factory, tiny_settings):
    from geosearch.index import build_index
    from geosearch.relations import register_layer
    from tools.common import Workspace

    tif = shared_data("spacenet-vegas", "RGB-PanSharpen_AOI_2_Vegas_img0.tif")
    roads = shared_data("spacenet-vegas", "roads_AOI_2_Vegas_img0.geojson")
    root = tmp_path_factory.mktemp("vegas")
    out = root / "vegas.duckdb"
    settings = tiny_settings.model_copy(update={"scales_m": [128.0, 256.0]})
    build_index([tif], out, model="geosearch-tiny", settings=settings, progress=False)
    register_layer(out, roads, "roads", role="roads")
    return Workspace([root], settings=tiny_settings, restrict=True)


@pytest.mark.data
@pytest.mark.slow
def test_deterministic_planner_on_real_mosaic(vegas_ws):
    from server.planner import PlanRequest, best_method, run_planner

    steps: list[str] = []
    res = run_planner(PlanRequest(text="a parking lot within 200 m of the road", index="vegas.duckdb", k=3),
                      vegas_ws, progress=lambda d, t, m: steps.append(m or ""))
    assert res.method == best_method()
    assert [s.split(":")[0] for s in res.trace] == ["parse", "coarse", "relations", "refine", "calibrate", "explain"]
    assert "done" in steps
    gj = res.geojson()
    json.dumps(gj)
    assert gj["type"] == "FeatureCollection"
    if res.abstained:
        assert res.reason and not res.regions
        assert res.near_misses, "an abstention shows its best near-misses"
    else:
        assert 1 <= len(res.regions) <= 3
    bounds = vegas_ws.handle("vegas.duckdb").index.bounds_wgs84
    for r in res.regions + res.near_misses:
        assert bounds[0] - 1e-6 <= r.bbox[0] < r.bbox[2] <= bounds[2] + 1e-6
        assert bounds[1] - 1e-6 <= r.bbox[1] < r.bbox[3] <= bounds[3] + 1e-6
        assert any(x["predicate"] == "near" for x in r.details.get("relations", [])) or "fails" in " ".join(r.flags)
    # a relation on a layer the index lacks: not an error, flagged as unchecked
    res2 = run_planner(PlanRequest(text="houses near the river", index="vegas.duckdb", k=2, explain=False),
                       vegas_ws)
    assert res2.relations_unchecked


@pytest.mark.data
@pytest.mark.slow
def test_llm_planner_with_fake_model(vegas_ws):
    from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    from langchain_core.messages import AIMessage

    from server.planner import PlanRequest, run_llm_planner

    index = vegas_ws.handle("vegas.duckdb").index
    tile = str(index.tile_ids[0])
    script = [
        AIMessage(content="", tool_calls=[{"name": "parse_query", "args": {"text": "parking lots"}, "id": "c1"}]),
        AIMessage(content="", tool_calls=[{"name": "coarse_search", "id": "c2",
                                           "args": {"index": "vegas.duckdb", "prompts": ["a parking lot"], "k": 3}}]),
        AIMessage(content="", tool_calls=[
            {"name": "segment_region", "id": "c3",
             "args": {"index": "vegas.duckdb", "tile": tile, "prompts": ["a parking lot"], "k": 3}},
            {"name": "zoom_tile", "id": "c4", "args": {"index": "../escape.duckdb", "tile": tile, "prompts": ["x"]}},
        ]),
        AIMessage(content="The parking lots are in the regions returned by segment_region."),
    ]
    model = FakeMessagesListChatModel(responses=script)
    res = run_llm_planner(PlanRequest(text="where are the parking lots?", index="vegas.duckdb", k=2), vegas_ws,
                          model=model)
    assert res.planner == "llm"
    assert [t.split("(")[0] for t in res.trace] == ["parse_query", "coarse_search", "segment_region", "zoom_tile"]
    assert res.trace[-1].endswith("-> error")  # the path escape came back to the model as an error
    assert 1 <= len(res.regions) <= 2 and not res.abstained
    assert res.explanation.startswith("The parking lots")


def test_langchain_tools_share_the_pydantic_schemas(tmp_path):
    from server.planner import TOOL_SPECS, langchain_tools
    from tools.common import Workspace

    tools = langchain_tools(Workspace([tmp_path], restrict=True))
    assert [t.name for t in tools] == [s[0] for s in TOOL_SPECS]
    for t, (_, _, model, _) in zip(tools, TOOL_SPECS):
        assert t.args_schema is model
    out = tools[1].invoke({"index": "nope.duckdb", "query": "x"})
    assert out.startswith("error:") and "not found" in out


def test_openai_compatible_chat_model(monkeypatch):
    from langchain_core.messages import HumanMessage

    from server import llm

    seen = {}

    def fake(base, model, messages, *, api_key=None, tools=None, timeout=60.0):
        seen.update(base=base, model=model, messages=messages, tools=tools)
        return {"content": "", "tool_calls": [{"id": "1", "type": "function",
                                               "function": {"name": "parse_query", "arguments": '{"text": "x"}'}}]}

    monkeypatch.setattr(llm, "chat_completion", fake)
    from tools.parse_query import ParseQueryInput

    m = llm.OpenAICompatChat(base_url="http://127.0.0.1:9/v1", model="m").bind_tools([ParseQueryInput])
    msg = m.invoke([HumanMessage("hi")])
    assert msg.tool_calls[0]["name"] == "parse_query" and msg.tool_calls[0]["args"] == {"text": "x"}
    assert seen["tools"][0]["function"]["name"] == "ParseQueryInput"


@pytest.mark.data
@pytest.mark.slow
def test_planner_calibrates_against_gallery(vegas_ws, tmp_path, monkeypatch):
    """The planner's calibrate step rescored its best candidates at their own extent and compares
    them with the model's reference gallery, like the engine's ``abstain`` method."""
    from geosearch.refine import calibrate
    from geosearch.refine import gallery as G
    from server.planner import PlanRequest, run_planner

    idx = vegas_ws.handle("vegas.duckdb").index
    G.save_gallery(tmp_path / "geosearch-tiny.gallery.npz", idx.embeddings[:50], ["tile"] * 50,
                   idx.meta["model_id"], "tiles of the index itself")
    monkeypatch.setattr(G, "PACKAGED_DIR", tmp_path)
    monkeypatch.setattr(G, "_LOADED", {})
    params = {"features": ["d_ref"], "coef": [50.0], "intercept": 0.0, "threshold": 0.5, "calibrated": True}
    monkeypatch.setattr(calibrate, "load_calibration", lambda *a, **k: params)
    res = run_planner(PlanRequest(text="a parking lot", index="vegas.duckdb", k=3, explain=False), vegas_ws)
    top = (res.regions or res.near_misses)[0]
    cal = top.details["calibration"]
    assert {"d_ref", "ref_top"} <= set(cal)
    assert "s_region" in top.details
    assert res.abstained == (cal["d_ref"] < 0)       # sigmoid(50 * d_ref) < 0.5 exactly when d_ref < 0
    if res.abstained:
        assert "reference gallery" in res.reason
