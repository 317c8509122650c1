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
    p.add_argument("--port", type=_port, default=None, help="HTTP port (default 8765)")
    p.add_argument(
        "--token", default=None, help="bearer token HTTP clients must send (required off loopback)"
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="extra Host header accepted, e.g. geo.example.org (repeatable; env GEOSEARCH_ALLOWED_HOSTS; "
        "'*' = any, needs a token)",
    )
    p.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="extra browser Origin accepted, e.g. https://app.example.org (repeatable; env GEOSEARCH_ALLOWED_ORIGINS)",
    )
    p.add_argument(
        "--remote-prefix",
        action="append",
        default=[],
        metavar="URL",
        help="URL prefix of remote rasters an index may name, e.g. https://data.example.org/cogs/ (repeatable; "
        "env GEOSEARCH_REMOTE_PREFIXES; default: none, every remote raster is refused)",
    )
    p.add_argument("--log-level", default="warning")
    p.add_argument(
        "--print-config",
        choices=CLIENTS,
        default=None,
        metavar="CLIENT",
        help=f"print a client config that starts this server as given, then exit ({', '.join(CLIENTS)})",
    )


CLIENTS = ("claude", "vscode", "cursor")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, not {port}")
    return port


def client_config(client: str, args) -> dict:
    """The JSON a client needs to start (stdio) or reach (--http) this server. The command is this
    Python, by absolute path, running ``-m geosearch_server``: it works for a venv install that is
    not on the client's PATH, and the roots are absolute, since clients start servers elsewhere."""
    import sys
    from pathlib import Path

    from geosearch.errors import InputError

    roots = [str(Path(r).expanduser().resolve()) for r in args.root] or [str(Path.cwd().resolve())]
    for r in roots:
        if not Path(r).is_dir():
            raise InputError(f"data root is not a folder: {r}")
    serve_args = ["-m", "geosearch_server", "serve"]
    for r in roots:
        serve_args += ["--root", r]
    for prefix in getattr(args, "remote_prefix", []):
        serve_args += ["--remote-prefix", prefix]
    env = {"GEOSEARCH_OFFLINE": "1"}
    if args.http:
        host = args.host or "127.0.0.1"
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{args.port or 8765}/mcp"
        if client == "vscode":
            entry = {"type": "http", "url": url}
            out: dict = {"servers": {"geosearch": entry}}
            if args.token:
                entry["headers"] = {"Authorization": "Bearer ${input:geosearch-token}"}
                out["inputs"] = [
                    {
                        "type": "promptString",
                        "id": "geosearch-token",
                        "description": "GeoSearch bearer token",
                        "password": True,
                    }
                ]
            return out
        entry = {"url": url}
        if args.token:
            entry["headers"] = {"Authorization": "Bearer YOUR_TOKEN"}
        if client == "claude":  # Claude Desktop starts stdio servers; bridge HTTP with mcp-remote
            entry = {"command": "npx", "args": ["-y", "mcp-remote", url]}
        return {"mcpServers": {"geosearch": entry}}
    entry = {"command": sys.executable, "args": serve_args, "env": env}
    if client == "vscode":
        return {"servers": {"geosearch": {"type": "stdio", **entry}}}
    return {"mcpServers": {"geosearch": entry}}


CONFIG_FILES = {
    "claude": "claude_desktop_config.json (Settings > Developer > Edit Config)",
    "vscode": ".vscode/mcp.json in your workspace",
    "cursor": "~/.cursor/mcp.json (or .cursor/mcp.json in a project)",
}


def run(args) -> int:
    if args.print_config:
        import json
        import sys

        print(json.dumps(client_config(args.print_config, args), indent=2))
        print(f"# paste into {CONFIG_FILES[args.print_config]}", file=sys.stderr)
        return 0
    from geosearch_server.mcp_server import serve_from_args

    serve_from_args(args)
    return 0
