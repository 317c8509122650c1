"""``geosearch serve``: the MCP server over stdio (default) or streamable HTTP."""

from __future__ import annotations


def register(sub) -> None:
    from server.mcp_server import add_arguments

    p = sub.add_parser(
        "serve",
        help="run the MCP server (stdio, or streamable HTTP with --http)",
        description="Serve GeoSearch tools over MCP. Only indexes under the data roots can be opened.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from server.mcp_server import serve_from_args

    serve_from_args(args)
    return 0
