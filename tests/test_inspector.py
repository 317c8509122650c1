"""The MCP Inspector CLI (npm ``@modelcontextprotocol/inspector``), a client nobody here wrote,
starts the server over stdio from another folder, as a desktop client would, and calls all seven
tools on an index; every call must come back as structured content, not an error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_answer_chain import chain_root  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
INSTALL = "npm install --prefix .ci/node @modelcontextprotocol/inspector@0.15.0 (as .ci/run does)"


def _inspector() -> str | None:
    for cand in (
        os.environ.get("GEOSEARCH_INSPECTOR"),
        str(REPO / ".ci/node/node_modules/.bin/mcp-inspector"),
    ):
        if cand and Path(cand).exists():
            return cand
    return shutil.which("mcp-inspector")


pytestmark = pytest.mark.skipif(_inspector() is None, reason=f"needs the MCP Inspector CLI: {INSTALL}")


def _call(root: Path, cwd: Path, method: str, tool: str | None = None, **args) -> dict:
    cmd = [_inspector(), "--cli", sys.executable, "-m", "geosearch_server", "serve", "--root", str(root)]
    cmd += ["--method", method]
    if tool:
        cmd += ["--tool-name", tool]
        for k, v in args.items():
            cmd += ["--tool-arg", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
    env = {**os.environ, "GEOSEARCH_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, (res.stdout[-1500:], res.stderr[-1500:])
    out = json.loads(res.stdout)
    if tool:
        assert not out.get("isError"), out["content"][0]["text"]
        assert out.get("structuredContent") is not None
        return out["structuredContent"]
    return out


def test_inspector_cli_calls_all_seven_tools(chain_root, tmp_path):  # noqa: F811
    root = chain_root
    listed = _call(root, tmp_path, "tools/list")
    names = {t["name"] for t in listed["tools"]}
    assert names == {
        "parse_query",
        "coarse_search",
        "zoom_tile",
        "segment_region",
        "check_relation",
        "explain",
        "answer",
    }
    idx = "scene.duckdb"
    pq = _call(root, tmp_path, "tools/call", "parse_query", text="red roofs not within water", use_llm=False)
    assert pq["relations"] and pq["relations"][0]["negated"]
    cs = _call(root, tmp_path, "tools/call", "coarse_search", index=idx, query="red", k=3)
    tile = cs["tiles"][0]["id"]
    zt = _call(root, tmp_path, "tools/call", "zoom_tile", index=idx, tile=tile, query="red", k=4)
    assert zt["windows"]
    sr = _call(root, tmp_path, "tools/call", "segment_region", index=idx, tile=tile, query="red", k=3)
    assert sr["regions"]
    region = [{"id": "r1", "bbox": cs["tiles"][0]["bbox"]}]
    cr = _call(
        root,
        tmp_path,
        "tools/call",
        "check_relation",
        index=idx,
        regions=region,
        predicate="near",
        layer="water",
        distance_m=50,  # an optional number: typed by the published schema, sent as a number
    )
    assert cr["results"][0]["region_id"] == "r1" and isinstance(cr["results"][0]["holds"], bool)
    ex = _call(root, tmp_path, "tools/call", "explain", index=idx, regions=region, query="red", use_llm=False)
    assert ex["regions"][0]["confidence"] is not None
    an = _call(root, tmp_path, "tools/call", "answer", text="red", index=idx, k=2)
    assert not an["abstained"] and an["regions"] and an["map_uri"].endswith("/map")
    bad = subprocess.run(
        [_inspector(), "--cli", sys.executable, "-m", "geosearch_server", "serve", "--root", str(root)]
        + ["--method", "tools/call", "--tool-name", "coarse_search", "--tool-arg", "index=../../etc/passwd"]
        + ["--tool-arg", "query=x"],
        cwd=tmp_path,
        env={**os.environ, "GEOSEARCH_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert "'..' and '~' are not allowed" in bad.stdout + bad.stderr
