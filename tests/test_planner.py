"""The answering chain on a real mosaic (spacenet-vegas) with a roads layer, and the LLM planner
driven by a fake chat model that emits tool calls: its regions are calibrated by the same chain."""

from __future__ import annotations

import json

import pytest
from conftest import shared_data


@pytest.fixture(scope="module")
def vegas_ws(tmp_path_factory, tiny_settings):
    from geosearch.index import build_index
    from geosearch.relations import register_layer
    from geosearch_tools.common import Workspace

    tif = shared_data("spacenet-vegas", "RGB-PanSharpen_AOI_2_Vegas_img0.tif")
    roads = shared_data("spacenet-vegas", "roads_AOI_2_Vegas_img0.geojson")
    root = tmp_path_factory.mktemp("vegas")
    out = root / "vegas.duckdb"
    settings = tiny_settings.model_copy(update={"scales_m": [128.0, 256.0]})
    build_index([tif], out, model="geosearch-tiny", settings=settings, progress=False)
    register_layer(out, roads, "roads", role="roads")
    return Workspace([root, tif.parent], settings=tiny_settings, restrict=True)  # imagery is a root too


@pytest.mark.data
@pytest.mark.slow
def test_chain_checks_relations_on_real_roads(vegas_ws):
    from geosearch.chain import STAGES, answer
    from geosearch.pipeline import MethodContext

    steps: list[str] = []
    index = vegas_ws.handle("vegas.duckdb").index
    ctx = MethodContext(progress=lambda d, t, m: steps.append(m or ""))
    res = answer(index, "a parking lot within 200 m of the road", 3, ctx)
    assert steps[-1] == "done" and len(STAGES) == 6
    json.dumps(res.geojson(), default=str)
    assert res.details["relations_checked"] == ["near:roads"]
    shown = res.regions + res.near_misses
    assert shown, "an answer or its near-misses"
    if res.abstained:
        assert res.reason and not res.regions
    else:
        assert 1 <= len(res.regions) <= 3
    b = index.bounds_wgs84
    for r in shown:
        x0, y0, x1, y1 = r.polygon_wgs84.bounds
        assert b[0] - 1e-6 <= x0 < x1 <= b[2] + 1e-6 and b[1] - 1e-6 <= y0 < y1 <= b[3] + 1e-6
        checks = r.details["relations"]
        assert checks and checks[0]["predicate"] == "near"
        assert checks[0]["satisfied"] == ("relation_failed" not in r.flags)
    for r in res.regions:
        assert r.details["relations"][0]["satisfied"] and r.details["relations"][0]["value"] <= 200
    # a relation on a layer the index lacks: not an error, flagged as not checkable
    res2 = answer(index, "houses near the river", 2, MethodContext(options={"explain": False}))
    assert res2.details["relations_unchecked"]
    assert all("relation_not_checkable" in r.flags for r in res2.regions + res2.near_misses)


@pytest.mark.data
@pytest.mark.slow
def test_llm_planner_with_fake_model_is_calibrated(vegas_ws):
    from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    from langchain_core.messages import AIMessage

    from geosearch_server.planner import run_llm_planner

    index = vegas_ws.handle("vegas.duckdb").index
    tile = str(index.tile_ids[0])
    script = [
        AIMessage(
            content="", tool_calls=[{"name": "parse_query", "args": {"text": "parking lots"}, "id": "c1"}]
        ),
        AIMessage(
            content="",
            tool_calls=[
                {
                    "name": "coarse_search",
                    "id": "c2",
                    "args": {"index": "vegas.duckdb", "prompts": ["a parking lot"], "k": 3},
                }
            ],
        ),
        AIMessage(
            content="",
            tool_calls=[
                {
                    "name": "segment_region",
                    "id": "c3",
                    "args": {"index": "vegas.duckdb", "tile": tile, "prompts": ["a parking lot"], "k": 3},
                },
                {
                    "name": "zoom_tile",
                    "id": "c4",
                    "args": {"index": "../escape.duckdb", "tile": tile, "prompts": ["x"]},
                },
            ],
        ),
        AIMessage(content="The parking lots are in the regions returned by segment_region."),
    ]
    model = FakeMessagesListChatModel(responses=script)
    res = run_llm_planner("where are the parking lots?", "vegas.duckdb", vegas_ws, model=model, k=2)
    assert res.method == "llm" and res.details["planner"] == "llm"
    trace = res.details["trace"]
    assert [t.split("(")[0] for t in trace[:2]] == ["parse_query", "coarse_search"]
    assert sorted(t.split("(")[0] for t in trace[2:]) == [
        "segment_region",
        "zoom_tile",
    ]  # one step, in parallel
    zoom = next(t for t in trace if t.startswith("zoom_tile"))
    assert zoom.endswith("-> error")  # the path escape came back to the model as an error
    assert res.details["model_reply"].startswith("The parking lots")
    # calibrated like the chain: confidences, calibration features, an abstention decision with near-misses
    shown = res.regions + res.near_misses
    assert shown and all(r.confidence is not None for r in shown)
    assert "abstain_threshold" in res.details and res.details["calibration_features"]
    assert len(res.regions) <= 2
    if res.abstained:
        assert res.reason.startswith("not found") and res.near_misses
    assert res.explanation


def test_langchain_tools_share_the_registry(tmp_path):
    from geosearch_server.planner import langchain_tools
    from geosearch_tools.common import Workspace
    from geosearch_tools.registry import TOOLS

    tools = langchain_tools(Workspace([tmp_path], restrict=True))
    specs = [s for s in TOOLS if s.name != "answer"]
    assert [t.name for t in tools] == [s.name for s in specs]
    for t, s in zip(tools, specs):
        assert t.args_schema is s.input_model and t.description == s.description
    out = tools[1].invoke({"index": "nope.duckdb", "query": "x"})
    assert out.startswith("error:") and "not found" in out


def test_mcp_server_uses_the_same_registry(tmp_path):
    import anyio

    from geosearch_server.mcp_server import create_server
    from geosearch_tools.registry import TOOLS

    server = create_server([str(tmp_path)])

    async def names():
        return {t.name: t.description for t in await server.list_tools()}

    got = anyio.run(names)
    assert got == {t.name: t.description for t in TOOLS}


def test_tools_never_import_the_server():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    generic = {"tools", "server", "prompts"}  # installed as geosearch_tools / _server / _prompts
    for folder, banned in (
        ("tools", ("geosearch_server", *generic)),
        ("server", tuple(generic)),
        ("prompts", tuple(generic)),
        ("geosearch", ("geosearch_server", "geosearch_tools", "mcp", *generic)),
    ):
        for path in (root / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                mods = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                for m in mods:
                    assert m.split(".")[0] not in banned, f"{path.relative_to(root)} imports {m}"


def test_openai_compatible_chat_model(monkeypatch):
    from langchain_core.messages import HumanMessage

    from geosearch_server import llm

    seen = {}

    def fake(base, model, messages, *, api_key=None, tools=None, timeout=60.0):
        seen.update(base=base, model=model, messages=messages, tools=tools)
        return {
            "content": "",
            "tool_calls": [
                {
                    "id": "1",
                    "type": "function",
                    "function": {"name": "parse_query", "arguments": '{"text": "x"}'},
                }
            ],
        }

    monkeypatch.setattr(llm, "chat_completion", fake)
    from geosearch_tools.parse_query import ParseQueryInput

    m = llm.OpenAICompatChat(base_url="http://127.0.0.1:9/v1", model="m").bind_tools([ParseQueryInput])
    msg = m.invoke([HumanMessage("hi")])
    assert msg.tool_calls[0]["name"] == "parse_query" and msg.tool_calls[0]["args"] == {"text": "x"}
    assert seen["tools"][0]["function"]["name"] == "ParseQueryInput"


@pytest.mark.data
@pytest.mark.slow
def test_chain_calibrates_against_gallery(vegas_ws, tmp_path, monkeypatch):
    """The chain compares the best regions' own-extent scores with the model's reference gallery."""
    from geosearch.chain import answer
    from geosearch.pipeline import MethodContext
    from geosearch.refine import calibrate
    from geosearch.refine import gallery as G

    idx = vegas_ws.handle("vegas.duckdb").index
    G.save_gallery(
        tmp_path / "geosearch-tiny.gallery.npz",
        idx.embeddings[:50],
        ["tile"] * 50,
        idx.meta["model_id"],
        "tiles of the index itself",
    )
    monkeypatch.setattr(G, "PACKAGED_DIR", tmp_path)
    monkeypatch.setattr(G, "_LOADED", {})
    params = {"features": ["d_ref"], "coef": [50.0], "intercept": 0.0, "threshold": 0.5, "calibrated": True}
    monkeypatch.setattr(calibrate, "load_calibration", lambda *a, **k: params)
    res = answer(idx, "a parking lot", 3, MethodContext(options={"explain": False}))
    cal = res.details["calibration_features"]
    assert {"d_ref", "ref_top"} <= set(cal)
    assert res.abstained == (cal["d_ref"] < 0)  # sigmoid(50 * d_ref) < 0.5 exactly when d_ref < 0
    if res.abstained:
        assert "reference gallery" in res.reason
