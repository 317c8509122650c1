"""The MCP server end to end, with the SDK's own Client: over stdio (subprocess) and over
streamable HTTP (subprocess on a free 127.0.0.1 port), on an index built from a generated GeoTIFF."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TOKEN = "test-token-123"
TOOL_NAMES = {
    "parse_query",
    "coarse_search",
    "zoom_tile",
    "segment_region",
    "check_relation",
    "explain",
    "answer",
}


# --- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory, tiny_settings):
    import rasterio
    from rasterio.transform import from_origin

    from geosearch.index import build_index
    from geosearch.relations import register_layer

    root = tmp_path_factory.mktemp("mcp_root")
    (root / "sub").mkdir()
    tif = root / "mosaic.tif"
    rng = np.random.default_rng(0)
    img = (rng.random((3, 256, 256)) * 40 + 60).astype(np.uint8)
    img[:, 20:90, 30:120] = np.array([200, 30, 30], np.uint8)[:, None, None]  # red roofs
    img[:, 150:230, 140:240] = np.array([20, 60, 200], np.uint8)[:, None, None]  # water
    img[:, 120:130, :] = 170  # a road
    x0, y0 = 500000.0, 5000256.0
    with rasterio.open(
        tif,
        "w",
        driver="GTiff",
        width=256,
        height=256,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(x0, y0, 1.0, 1.0),
    ) as ds:
        ds.write(img)
    index = root / "sub" / "test.duckdb"
    build_index([tif], index, model="geosearch-tiny", settings=tiny_settings, progress=False)
    from pyproj import Transformer

    t = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    line = [t.transform(x0 + x, y0 - 125) for x in (0, 128, 256)]
    roads = root / "roads.geojson"
    roads.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {"id": "r1"},
                        "geometry": {"type": "LineString", "coordinates": line},
                    }
                ],
            }
        )
    )
    register_layer(index, roads, "roads", role="roads")
    outside = tmp_path_factory.mktemp("outside")
    (root / "escape.duckdb").symlink_to(index)  # a symlink inside the root pointing inside: fine
    (outside / "secret.duckdb").write_bytes(index.read_bytes())
    (root / "link_out.duckdb").symlink_to(outside / "secret.duckdb")
    return root


@pytest.fixture(scope="module")
def mosaic_bounds(data_root):
    from geosearch.index import TileIndex

    return TileIndex.open(data_root / "sub" / "test.duckdb").bounds_wgs84


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "GEOSEARCH_MODEL": "geosearch-tiny",
            "GEOSEARCH_OFFLINE": "1",
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(REPO),
            "GEOSEARCH_BATCH_SIZE": "16",
        }
    )
    env.pop("GEOSEARCH_LLM_BASE_URL", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def http_server(data_root):
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "geosearch_server.mcp_server",
            "--root",
            str(data_root),
            "--http",
            "--port",
            str(port),
            "--token",
            TOKEN,
        ],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.3)
        else:
            raise RuntimeError("HTTP server did not start in 120 s")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _http_client(url: str, token: str | None = TOKEN):
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return Client(streamable_http_client(url, http_client=create_mcp_http_client(headers=headers)))


def _stdio_client(root: Path):
    import tempfile

    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "geosearch_server.mcp_server", "--root", str(root)],
        env=_env(),
        cwd=str(REPO),
    )
    # The server's stderr goes to a real file: under pytest's capture sys.stderr may have no fileno().
    errlog = tempfile.TemporaryFile(mode="w+")
    return Client(stdio_client(params, errlog=errlog), read_timeout_seconds=300)


# --- checks --------------------------------------------------------------------------------
def _validate(tool, result) -> dict:
    import jsonschema

    assert not result.is_error, result.content[0].text if result.content else result
    assert result.structured_content is not None
    jsonschema.validate(result.structured_content, tool.output_schema)
    return result.structured_content


def _inside(bbox, bounds, tol=1e-6) -> bool:
    return (
        bbox[0] >= bounds[0] - tol
        and bbox[1] >= bounds[1] - tol
        and bbox[2] <= bounds[2] + tol
        and bbox[3] <= bounds[3] + tol
        and bbox[0] < bbox[2]
        and bbox[1] < bbox[3]
    )


async def _exercise(client, bounds) -> None:
    """Every tool with valid and invalid input, resources, prompts, path escapes."""
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert TOOL_NAMES <= set(tools)
    assert all(tools[n].output_schema for n in TOOL_NAMES)
    idx = "sub/test.duckdb"

    pq = _validate(
        tools["parse_query"],
        await client.call_tool("parse_query", {"text": "red roofs within 50 m of the road without water"}),
    )
    assert pq["relations"][0]["predicate"] == "near" and pq["relations"][0]["distance_m"] == 50
    assert pq["exclusions"] == ["water"]

    progress: list[float] = []

    async def on_progress(p, total, message):
        progress.append(p)

    cs = _validate(
        tools["coarse_search"],
        await client.call_tool(
            "coarse_search", {"index": idx, "query": "red roofs", "k": 4}, progress_callback=on_progress
        ),
    )
    assert len(cs["tiles"]) == 4
    assert [t["rank"] for t in cs["tiles"]] == [1, 2, 3, 4]
    for t in cs["tiles"]:
        assert _inside(t["bbox"], bounds)
        assert t["polygon"]["type"] == "Polygon"
    tile = cs["tiles"][0]["id"]

    zt = await client.call_tool("zoom_tile", {"index": idx, "tile": tile, "prompts": cs["prompts"], "k": 4})
    zs = _validate(tools["zoom_tile"], zt)
    assert zs["windows"] and all(_inside(w["bbox"], bounds) for w in zs["windows"])
    images = [c for c in zt.content if c.type == "image"]
    assert images and images[0].mime_type == "image/png"
    import base64

    png = base64.b64decode(images[0].data)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) <= 1_000_000

    sr = _validate(
        tools["segment_region"],
        await client.call_tool(
            "segment_region", {"index": idx, "bbox": cs["tiles"][0]["bbox"], "query": "red roofs"}
        ),
    )
    assert sr["regions"]
    for r in sr["regions"]:
        assert _inside(r["bbox"], bounds)
    regions = [{"id": r["id"], "polygon": r["polygon"]} for r in sr["regions"][:3]]

    cr = _validate(
        tools["check_relation"],
        await client.call_tool(
            "check_relation",
            {"index": idx, "regions": regions, "predicate": "near", "layer": "roads", "distance_m": 5000},
        ),
    )
    assert len(cr["results"]) == len(regions) and all(r["holds"] for r in cr["results"])
    assert all(r["unit"] == "m" and r["value"] is not None for r in cr["results"])

    ex = await client.call_tool(
        "explain", {"index": idx, "regions": regions[:2], "query": "red roofs near the road", "previews": 1}
    )
    es = _validate(tools["explain"], ex)
    assert es["explanation"] and es["regions"][0]["prompt_scores"]
    assert any(c.type == "image" for c in ex.content)

    an = _validate(
        tools["answer"], await client.call_tool("answer", {"text": "red roofs", "index": idx, "k": 3})
    )
    assert an["geojson"]["type"] == "FeatureCollection"
    feats = an["geojson"]["features"] or an["geojson"]["properties"]["near_misses"]
    assert feats or an["abstained"]
    if an["abstained"]:
        assert an["reason"]
    rr = await client.read_resource(an["uri"])
    assert json.loads(rr.contents[0].text)["type"] == "FeatureCollection"

    # invalid input: tool errors, server keeps answering
    bad = [
        ("coarse_search", {"index": idx}),
        ("coarse_search", {"index": idx, "query": "x", "k": 0}),
        ("coarse_search", {"index": "missing.duckdb", "query": "x"}),
        ("zoom_tile", {"index": idx, "tile": "no-such-tile", "prompts": ["x"]}),
        ("segment_region", {"index": idx, "bbox": [10, 10, 5, 5], "prompts": ["x"]}),
        (
            "check_relation",
            {"index": idx, "regions": regions, "predicate": "near", "layer": "no_layer", "distance_m": 10},
        ),
        ("check_relation", {"index": idx, "regions": regions, "predicate": "sideways", "layer": "roads"}),
        ("parse_query", {"text": ""}),
        ("answer", {"text": "x", "index": idx, "area": [100, 10, 101, 11]}),
    ]
    for name, args in bad:
        res = await client.call_tool(name, args)
        assert res.is_error, (name, args)
        assert res.content and res.content[0].text.strip()
    # path escapes
    for ref in [
        "../outside/secret.duckdb",
        "/etc/passwd",
        "link_out.duckdb",
        "sub/../../x.duckdb",
        "~/x.duckdb",
    ]:
        res = await client.call_tool("coarse_search", {"index": ref, "query": "x"})
        assert res.is_error, ref
        assert "refused" in res.content[0].text or "not found" in res.content[0].text
    ok = await client.call_tool("coarse_search", {"index": "escape.duckdb", "query": "x", "k": 1})
    assert not ok.is_error  # a symlink that stays inside the root is fine
    with pytest.raises(Exception):  # noqa: B017 - the SDK raises its own error type
        await client.read_resource("geosearch://indexes/..%2Foutside%2Fsecret.duckdb")

    # resources and prompts
    uris = [str(r.uri) for r in (await client.list_resources()).resources]
    assert "geosearch://indexes" in uris
    templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
    assert "geosearch://previews/{preview_id}" in templates
    cat = json.loads((await client.read_resource("geosearch://indexes")).contents[0].text)
    names = [i["name"] for i in cat["indexes"]]
    assert idx in names
    info = json.loads((await client.read_resource(f"geosearch://indexes/{idx}")).contents[0].text)
    assert info["model"] == "geosearch-tiny" and info["layers"][0]["name"] == "roads"
    prev = await client.read_resource(zs["preview"]["uri"])
    assert prev.contents[0].mime_type == "image/png"
    prompts = [p.name for p in (await client.list_prompts()).prompts]
    assert "answer_region_query" in prompts
    got = await client.get_prompt(
        "answer_region_query", {"question": "where are the red roofs?", "index": idx}
    )
    assert "coarse_search" in got.messages[0].content.text
    assert (await client.call_tool("parse_query", {"text": "still alive?"})).is_error is False
    assert progress, "coarse_search reported no progress"


@pytest.mark.slow
def test_stdio_server(data_root, mosaic_bounds):
    async def main():
        async with _stdio_client(data_root) as client:
            await _exercise(client, mosaic_bounds)

    anyio.run(main)


@pytest.mark.slow
def test_http_server_parallel_clients_and_security(data_root, mosaic_bounds, http_server):
    import httpx

    # bearer token required
    r = httpx.post(http_server, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert r.status_code == 401
    # DNS rebinding: a foreign Host / Origin is refused even with the token
    r = httpx.post(
        http_server,
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "Host": "evil.example.com",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        },
    )
    assert r.status_code in (400, 403, 421)
    r = httpx.post(
        http_server,
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "Origin": "http://evil.example.com",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        },
    )
    assert r.status_code in (400, 403, 421)

    queries = ["red roofs", "blue water", "a grey road", "bare ground"]

    async def one(q: str, out: dict):
        async with _http_client(http_server) as client:
            res = await client.call_tool("coarse_search", {"index": "sub/test.duckdb", "query": q, "k": 3})
            assert not res.is_error, res.content[0].text
            out[q] = [t["id"] for t in res.structured_content["tiles"]]

    async def main():
        async with _http_client(http_server) as client:
            await _exercise(client, mosaic_bounds)
            expected = {}
            for q in queries:
                res = await client.call_tool(
                    "coarse_search", {"index": "sub/test.duckdb", "query": q, "k": 3}
                )
                expected[q] = [t["id"] for t in res.structured_content["tiles"]]
        got: dict = {}
        async with anyio.create_task_group() as tg:
            for q in queries:
                tg.start_soon(one, q, got)
        assert got == expected

    anyio.run(main)


def test_http_refuses_public_bind_without_token():
    from geosearch.errors import GeoSearchError
    from geosearch_server.mcp_server import create_server, http_app
    from geosearch_tools.common import Workspace

    mcp = create_server(workspace=Workspace([str(REPO / "tests")], restrict=True))
    with pytest.raises(GeoSearchError, match="token"):
        http_app(mcp, "0.0.0.0", 8765, token=None)
    http_app(mcp, "0.0.0.0", 8765, token="t")  # fine with a token


def test_workspace_path_checks(tmp_path):
    from geosearch.errors import InputError
    from geosearch_tools.common import Workspace

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.duckdb").write_bytes(b"")
    (tmp_path / "b.duckdb").write_bytes(b"")
    (tmp_path / "a" / "link.duckdb").symlink_to(tmp_path / "b.duckdb")
    ws = Workspace([tmp_path / "a"], restrict=True)
    assert ws.resolve("x.duckdb") == (tmp_path / "a" / "x.duckdb").resolve()
    assert ws.resolve(str(tmp_path / "a" / "x.duckdb")).name == "x.duckdb"
    for ref in ["../b.duckdb", str(tmp_path / "b.duckdb"), "link.duckdb", "", "a\x00b"]:
        with pytest.raises(InputError):
            ws.resolve(ref)
    with pytest.raises(InputError):
        Workspace([], restrict=True)


def test_allowed_hosts_setting_for_a_server_behind_a_host_name(tmp_path, monkeypatch):
    """GEOSEARCH_ALLOWED_HOSTS lets clients reach the HTTP transport by a host name (a container, a
    proxy); other hosts are still refused, and '*' is only allowed with a token."""
    from starlette.testclient import TestClient

    from geosearch.errors import GeoSearchError
    from geosearch.settings import Settings
    from geosearch_server.mcp_server import create_server, http_app

    monkeypatch.setenv("GEOSEARCH_ALLOWED_HOSTS", "geo.example.org, 10.1.2.3:8765")
    settings = Settings()
    assert settings.allowed_hosts == ["geo.example.org", "10.1.2.3:8765"]
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    accept = {"Accept": "application/json, text/event-stream", "Authorization": "Bearer tok"}

    def statuses(allowed, hosts) -> list[int]:
        app = http_app(create_server([str(tmp_path)]), "0.0.0.0", 8765, "tok", allowed)
        with TestClient(app) as c:
            return [c.post("/mcp", json=init, headers={**accept, "Host": h}).status_code for h in hosts]

    hosts = ["geo.example.org", "geo.example.org:443", "10.1.2.3:8765", "evil.example.com", "10.1.2.3"]
    assert statuses(settings.allowed_hosts, hosts) == [200, 200, 200, 421, 421]
    assert statuses(["*"], ["whatever.internal:9000"]) == [200]
    with pytest.raises(GeoSearchError, match="token"):
        http_app(create_server([str(tmp_path)]), "127.0.0.1", 8765, None, ["*"])
