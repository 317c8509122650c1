"""The LLM side over real HTTP, with a scripted OpenAI-compatible server on 127.0.0.1 instead of a
model: ``geosearch ask --llm`` (the LangGraph planner, through the built-in client and through
LangChain's ``init_chat_model``), and a LangGraph agent driving the MCP server over streamable HTTP
(``examples/mcp_agent.py``). In every case the answer that comes back is calibrated by the chain."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI, last_tool_result, tool_call
from test_answer_chain import chain_root  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
HAS_LANGCHAIN = all(importlib.util.find_spec(m) for m in ("langchain", "langchain_openai", "fastmcp"))


def _env(fake: FakeOpenAI, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEOSEARCH_LLM", "OPENAI_"))}
    env.update(
        GEOSEARCH_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        GEOSEARCH_LLM_BASE_URL=fake.base_url,
        GEOSEARCH_LLM_MODEL="fake-model",
        GEOSEARCH_LLM_API_KEY="test-key",
        **extra,
    )
    return env


def _planner_script(index: str) -> list:
    def coarse(_messages):
        return {"tool_calls": [tool_call("coarse_search", {"index": index, "prompts": ["red"], "k": 3})]}

    def segment(messages):
        tile = json.loads(last_tool_result(messages))["tiles"][0]["id"]
        args = {"index": index, "tile": tile, "prompts": ["red"], "k": 3}
        return {"tool_calls": [tool_call("segment_region", args)]}

    def reply(_messages):
        return {"content": "The red roof is in the region segment_region returned."}

    return [coarse, segment, reply]


@pytest.mark.parametrize(
    "chat_model",
    [
        None,  # the built-in OpenAI-compatible client
        pytest.param(
            "openai:fake-model",
            marks=pytest.mark.skipif(not HAS_LANGCHAIN, reason='needs pip install "geosearch[agent]"'),
        ),
    ],
)
def test_ask_llm_drives_the_planner_over_http_and_is_calibrated(chain_root, tmp_path, chat_model):  # noqa: F811
    index = str(chain_root / "scene.duckdb")
    with FakeOpenAI(_planner_script(index)) as fake:
        extra = {"GEOSEARCH_LLM_CHAT_MODEL": chat_model} if chat_model else {}
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "geosearch_server",
                "ask",
                index,
                "red",
                "--llm",
                "-k",
                "2",
                "--format",
                "geojson",
            ],
            cwd=tmp_path,
            env=_env(fake, **extra),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        gj = json.loads(res.stdout)
        # the model was really asked, over HTTP, with the tools and their results
        assert len(fake.requests) == 3
        first = fake.requests[0]
        assert {t["function"]["name"] for t in first["tools"]} >= {"coarse_search", "segment_region"}
        assert "answer" not in {t["function"]["name"] for t in first["tools"]}
        assert any(m.get("role") == "tool" for m in fake.requests[2]["messages"])
    p = gj["properties"]
    assert p["planner"] == "llm" and p["method"] == "llm"
    assert [t.split("(")[0] for t in p["trace"]] == ["coarse_search", "segment_region"]
    assert p["model_reply"].startswith("The red roof")
    # calibrated like the chain: confidences, an abstention threshold, calibration features
    assert "abstain_threshold" in p and p["calibration_features"]
    regions = gj["features"] or p["near_misses"]
    assert regions and all(f["properties"]["confidence"] is not None for f in regions)
    assert not p["abstained"] and len(gj["features"]) <= 2


def test_a_bad_chat_model_setting_is_one_clear_line(chain_root, tmp_path):  # noqa: F811
    with FakeOpenAI([]) as fake:
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "geosearch_server",
                "ask",
                str(chain_root / "scene.duckdb"),
                "red",
                "--llm",
            ],
            cwd=tmp_path,
            env=_env(fake, GEOSEARCH_LLM_CHAT_MODEL="nosuch.module:make"),
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "GEOSEARCH_LLM_CHAT_MODEL='nosuch.module:make'" in res.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not HAS_LANGCHAIN, reason='needs pip install "geosearch[agent]" (langchain.mcp)')
def test_langgraph_agent_drives_the_mcp_server_over_http(chain_root, tmp_path):  # noqa: F811
    port = _free_port()
    env = {**os.environ, "GEOSEARCH_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "geosearch_server",
            "serve",
            "--root",
            str(chain_root),
            "--http",
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert time.time() < deadline, "the MCP server did not start"
                time.sleep(0.3)

        def ask(_messages):
            return {"tool_calls": [tool_call("answer", {"text": "red", "index": "scene.duckdb", "k": 2})]}

        def reply(messages):
            result = last_tool_result(messages)
            assert "confidence" in result  # the agent saw the calibrated answer
            return {"content": "Found the red roof (calibrated)."}

        with FakeOpenAI([ask, reply]) as fake:
            res = subprocess.run(
                [
                    sys.executable,
                    str(REPO / "examples" / "mcp_agent.py"),
                    f"http://127.0.0.1:{port}/mcp",
                    "where is the red roof?",
                    "--index",
                    "scene.duckdb",
                ],
                cwd=tmp_path,
                env=_env(fake, GEOSEARCH_LLM_CHAT_MODEL="openai:fake-model"),
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert res.returncode == 0, res.stderr[-3000:]
            assert len(fake.requests) == 2
            tools = {t["function"]["name"] for t in fake.requests[0]["tools"]}
            assert tools >= {
                "answer",
                "coarse_search",
                "zoom_tile",
                "segment_region",
                "check_relation",
                "explain",
            }
            tool_msgs = [m for m in fake.requests[1]["messages"] if m.get("role") == "tool"]
            assert tool_msgs
            served = json.loads(
                tool_msgs[0]["content"]
                if isinstance(tool_msgs[0]["content"], str)
                else tool_msgs[0]["content"][0]["text"]
            )
        assert "tool call: answer(" in res.stdout and "reply: Found the red roof" in res.stdout
        assert not served["abstained"] and served["regions"][0]["confidence"] is not None
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.parametrize("client", ["claude", "vscode", "cursor"])
def test_print_config_starts_the_server_as_a_client_would(chain_root, tmp_path, client):  # noqa: F811
    """The printed config works as written: an absolute command, absolute roots, started from
    another folder with nothing on PATH, the way Claude Desktop / VS Code / Cursor start it."""
    import anyio
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "geosearch_server",
            "serve",
            "--root",
            os.path.relpath(chain_root, tmp_path),
            "--print-config",
            client,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    cfg = json.loads(res.stdout)
    entry = (cfg["servers"] if client == "vscode" else cfg["mcpServers"])["geosearch"]
    if client == "vscode":
        assert entry["type"] == "stdio"
    assert Path(entry["command"]).is_absolute() and Path(entry["command"]).exists()
    assert entry["args"][entry["args"].index("--root") + 1] == str(chain_root.resolve())
    if client != "claude":
        return
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**entry.get("env", {}), "PATH": "/nonexistent", "HF_HUB_OFFLINE": "1"}
    params = StdioServerParameters(command=entry["command"], args=entry["args"], env=env, cwd=str(elsewhere))

    async def go():
        import tempfile

        errlog = tempfile.TemporaryFile(mode="w+")
        async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=300) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            out = await c.call_tool("answer", {"text": "red", "index": "scene.duckdb", "k": 1})
        errlog.seek(0)
        return names, out, errlog.read()

    names, out, err = anyio.run(go)
    assert len(names) == 7 and "answer" in names
    assert not out.is_error and out.structured_content["regions"]
    assert "GeoSearch MCP server" in err and "on stdio" in err  # it says what it serves, on stderr
