"""Oversized and loose input: every refusal is one line, comes back as a tool error at once, and
the server stays up; strings are not coerced to numbers or booleans and unknown fields are errors;
2,000 one-word prompts are refused cleanly."""

from __future__ import annotations

import anyio
import pytest
from test_answer_chain import chain_root  # noqa: F401

BIG = "x" * 5000
IDX = "scene.duckdb"
CASES = [
    ("parse_query", {"text": BIG}),
    ("parse_query", {"text": "red", "use_llm": "yes"}),
    ("parse_query", {"text": "red", "mystery": 1}),
    ("coarse_search", {"index": IDX, "query": BIG}),
    ("coarse_search", {"index": IDX, "prompts": [f"w{i}" for i in range(2000)]}),
    ("coarse_search", {"index": IDX, "prompts": ["y" * 1_000_000]}),
    ("coarse_search", {"index": IDX, "query": "red", "k": "5"}),
    ("coarse_search", {"index": IDX, "query": "red", "k": 10**9}),
    ("coarse_search", {"index": IDX, "query": "red", "negative_prompts": ["n"] * 5000}),
    ("coarse_search", {"index": "i" * 5000, "query": "red"}),
    ("zoom_tile", {"index": IDX, "bbox": [15.0, 36.14, 15.0 + 1e-12, 36.14 + 1e-12], "query": "red"}),
    ("zoom_tile", {"index": IDX, "bbox": [10.0, 30.0, 20.0, 40.0], "query": "red"}),
    ("zoom_tile", {"index": IDX, "tile": "s128_r0_c0", "query": "red", "factor": "0.5"}),
    ("segment_region", {"index": IDX, "tile": "t" * 10_000, "query": "red"}),
    (
        "check_relation",
        {
            "index": IDX,
            "predicate": "near",
            "layer": "water",
            "regions": [{"id": f"r{i}", "bbox": [15, 36, 15.001, 36.001]} for i in range(600)],
        },
    ),
    (
        "check_relation",
        {
            "index": IDX,
            "predicate": "near",
            "layer": "water",
            "regions": [{"id": "r", "bbox": [15, 36, 15.001, 36.001], "evidence_tiles": ["t"] * 1000}],
        },
    ),
    (
        "check_relation",
        {
            "index": IDX,
            "predicate": "near",
            "layer": "water",
            "distance_m": "100",
            "regions": [{"id": "r", "bbox": [15, 36, 15.001, 36.001]}],
        },
    ),
    (
        "explain",
        {
            "index": IDX,
            "query": "red",
            "prompts": [f"p{i}" for i in range(2000)],
            "regions": [{"id": "r", "bbox": [15, 36, 15.001, 36.001]}],
        },
    ),
    (
        "explain",
        {
            "index": IDX,
            "query": "red",
            "regions": [
                {
                    "id": "r",
                    "polygon": {
                        "type": "Polygon",
                        "coordinates": [[[15 + i * 1e-7, 36.0] for i in range(20_000)] + [[15, 36.0]]],
                    },
                }
            ],
        },
    ),
    ("answer", {"text": BIG, "index": IDX}),
    ("answer", {"text": "red", "index": IDX, "explain": "yes"}),
    ("answer", {"text": "red", "index": IDX, "k": 3.5}),
    ("answer", {"text": "red", "index": IDX, "unknown_field": True}),
]


def test_oversized_and_loose_inputs_are_one_line_tool_errors(chain_root):  # noqa: F811
    from mcp import Client

    from geosearch_server.mcp_server import create_server

    async def go():
        async with Client(create_server([str(chain_root)])) as client:
            out = []
            for tool, args in CASES:
                with anyio.fail_after(30):
                    res = await client.call_tool(tool, args)
                out.append((tool, args, res))
            ok = await client.call_tool("parse_query", {"text": "red roofs"})  # still up
            return out, ok

    results, ok = anyio.run(go)
    assert not ok.is_error
    for tool, args, res in results:
        assert res.is_error, (tool, list(args))
        msg = res.content[0].text
        assert "\n" not in msg and "Traceback" not in msg and len(msg) < 600, msg
        assert str(chain_root) not in msg  # no server paths in errors


def test_a_query_that_parses_into_thousands_of_prompts_is_refused_cleanly(chain_root):  # noqa: F811
    from geosearch.errors import InputError
    from geosearch.index import TileIndex
    from geosearch.search import search

    idx = TileIndex.open(chain_root / "scene.duckdb")
    words = [f"w{i}" for i in range(2000)]
    with pytest.raises(InputError, match="too many prompts"):
        search(idx, words, 3)
    assert len(search(idx, words[:200], 3)) == 3  # under the limit it works


def test_a_bad_relation_is_refused_before_the_index_is_opened(chain_root, monkeypatch):  # noqa: F811
    from geosearch.errors import GeoSearchError
    from geosearch.relations import apply
    from geosearch_tools import check_relation as t_rel
    from geosearch_tools.common import Workspace

    def never(*a, **k):
        raise AssertionError("the index was opened for a relation that was invalid anyway")

    monkeypatch.setattr(apply, "layers_connection", never)
    ws = Workspace([chain_root])
    region = [{"id": "r", "bbox": [15, 36, 15.001, 36.001]}]
    for bad in (
        {"predicate": "density", "layer": "water"},  # no threshold
        {"predicate": "near", "layer": "water"},  # no distance
        {"predicate": "within", "layer": "water", "threshold": 3.0},
        {"predicate": "between", "layer": "water"},
        {"predicate": "near", "layer": "Bad Name!", "distance_m": 5.0},
    ):
        inp = t_rel.CheckRelationInput(index="scene.duckdb", regions=region, **bad)
        with pytest.raises(GeoSearchError):
            t_rel.run(inp, ws)
