"""``geosearch serve``: the MCP server over stdio (default) or streamable HTTP. The options live
here, free of the MCP SDK, so that building the CLI parser imports nothing heavy."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="run the MCP server (stdio, or streamable HTTP with --http)",
        description="Serve GeoSearch tools over MCP. Only indexes under the data roots can be opened.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="DIR",
        help="data root holding indexes (repeatable; default: GEOSEARCH_DATA_ROOTS)",
    )
    p.add_argument("--http", action="store_true", help="serve streamable HTTP on /mcp instead of stdio")
    p.add_argument("--host", default=None, help="HTTP bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default 8765)")
    p.add_argument(
        "--token", default=None, help="bearer token HTTP clients must send (required off loopback)"
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="extra Host header value accepted (behind a proxy)",
    )
    p.add_argument("--log-level", default="warning")


def run(args) -> int:
    from geosearch_server.mcp_server import serve_from_args

    serve_from_args(args)
    return 0
