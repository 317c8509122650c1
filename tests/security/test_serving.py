"""Bounded serving: a full queue answers "busy" at once, and a failing resource is one short
error that does not hold up other clients."""

from __future__ import annotations

import time

import anyio
from test_answer_chain import chain_root  # noqa: F401


def test_a_full_queue_answers_busy_and_the_rest_are_served(chain_root):  # noqa: F811
    from mcp import Client

    from geosearch.settings import Settings
    from geosearch_server.mcp_server import create_server

    server = create_server([str(chain_root)], settings=Settings(serve_workers=1, serve_queue=1))
    results = []

    async def go():
        async with Client(server) as client:
            await client.call_tool("coarse_search", {"index": "scene.duckdb", "query": "red", "k": 1})  # warm

            async def one(i):
                res = await client.call_tool("answer", {"text": "red", "index": "scene.duckdb", "k": 1})
                results.append((i, res.is_error, res.content[0].text[:200]))

            async with anyio.create_task_group() as tg:
                for i in range(5):
                    tg.start_soon(one, i)

    anyio.run(go)
    busy = [r for r in results if r[1]]
    assert busy and all("busy" in r[2] for r in busy)
    assert 2 <= sum(not r[1] for r in results)  # one running + one waiting were served


def test_a_failing_resource_is_short_and_does_not_stall_others(chain_root, monkeypatch):  # noqa: F811
    from mcp import Client

    from geosearch_server.mcp_server import create_server

    server = create_server([str(chain_root)])
    ws = server.workspace

    def boom(_id):
        time.sleep(1.5)
        raise RuntimeError("x" * 5000)

    monkeypatch.setattr(ws, "get_preview", boom)
    timings: dict[str, str] = {}
    order: list[str] = []

    async def go():
        async with Client(server) as client:
            await client.call_tool("parse_query", {"text": "warm"})

            async def bad():
                try:
                    await client.read_resource("geosearch://previews/abc")
                except Exception as exc:  # noqa: BLE001
                    timings["error"] = str(exc)
                    order.append("resource")

            async def good():
                await anyio.sleep(0.2)
                await client.call_tool("parse_query", {"text": "red roofs near water"})
                order.append("parse")

            async with anyio.create_task_group() as tg:
                tg.start_soon(bad)
                tg.start_soon(good)

    anyio.run(go)
    assert "internal error: RuntimeError" in timings["error"] and "xxxx" not in timings["error"]
    assert order == ["parse", "resource"]  # the event loop kept answering while the resource worked
