"""The GeoSearch MCP server (mcp python SDK 2.x, ``MCPServer``): seven tools, resources, a prompt.

Tools are thin async wrappers over the plain functions in ``tools/``: arguments are validated
against each tool's pydantic input model, the work runs in a worker thread (the server keeps
answering), progress is reported through the request context, and any failure becomes an MCP tool
error (``isError``) with a one-line message. Only indexes under the data roots can be opened.

Run: ``geosearch serve --root DIR`` (stdio) or ``geosearch serve --root DIR --http --port 8765``
(streamable HTTP on ``/mcp``), or ``python -m geosearch_server.mcp_server --root DIR``.
"""

from __future__ import annotations

import argparse
import inspect
import ipaddress
import json
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolResult, ImageContent, TextContent, ToolAnnotations
from pydantic import BaseModel, Field, ValidationError

from geosearch.errors import GeoSearchError
from geosearch_tools.common import Workspace, tool_error_message
from geosearch_tools.registry import TOOLS, ToolSpec

INSTRUCTIONS = """GeoSearch finds places in indexed Earth-observation mosaics from a description in words.
Call `answer` for the whole chain, or parse_query -> coarse_search -> zoom_tile / segment_region ->
check_relation -> explain step by step. Read `geosearch://indexes` for the available indexes and the
prompt `answer_region_query` for guidance. Coordinates are lon/lat (EPSG:4326)."""


def _sampling_complete(ctx: Context) -> Callable[[str], str] | None:
    """A completion function that asks the client's LLM (MCP sampling), when the client offers it."""
    try:
        caps = ctx.client_capabilities
    except Exception:  # noqa: BLE001
        return None
    if caps is None or getattr(caps, "sampling", None) is None:
        return None
    from mcp_types import SamplingMessage

    async def ask(prompt: str) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = await ctx.session.create_message(
                messages=[SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
                max_tokens=1200,
                temperature=0.0,
            )
        content = res.content
        if isinstance(content, list):
            content = content[0] if content else None
        return getattr(content, "text", "") or ""

    def complete(prompt: str) -> str:
        return anyio.from_thread.run(ask, prompt)

    return complete


log = logging.getLogger("geosearch.server")


class Admission:
    """Bounded serving: at most ``workers`` requests run (in worker threads, so the event loop keeps
    answering), at most ``queue`` more wait; beyond that a request is told "busy" at once."""

    def __init__(self, workers: int, queue: int):
        self.limiter = anyio.CapacityLimiter(max(1, workers))
        self.capacity = max(1, workers) + max(0, queue)
        self.active = 0

    async def run(self, fn: Callable[[], Any], what: str) -> Any:
        if self.active >= self.capacity:
            raise GeoSearchError(
                f"busy: {self.active} requests are running or waiting; retry in a few seconds"
            )
        self.active += 1
        try:
            return await anyio.to_thread.run_sync(fn, limiter=self.limiter)
        finally:
            self.active -= 1


def _make_tool(spec: ToolSpec, ws: Workspace, admission: Admission) -> Callable[..., Any]:
    model = spec.input_model

    async def tool(ctx: Context, **kwargs: Any) -> Any:
        try:
            inp = model.model_validate(kwargs)
        except ValidationError as exc:
            raise ToolError(tool_error_message(exc)) from exc

        def progress(done: float, total: float | None, message: str | None) -> None:
            anyio.from_thread.run(ctx.report_progress, done, total, message)

        extra: dict[str, Any] = {}
        if spec.sampling and getattr(inp, "use_llm", False) and ws.llm_complete() is None:
            complete = _sampling_complete(ctx)
            if complete is not None and spec.name == "parse_query":
                extra["complete"] = complete

        def work() -> BaseModel:
            return spec.fn(inp, ws, progress, **extra)

        try:
            out = await admission.run(work, spec.name)
        except (GeoSearchError, ValidationError, ValueError, OSError) as exc:
            raise ToolError(tool_error_message(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - a bug must still come back as a tool error
            log.warning("tool %s failed: %s: %s", spec.name, type(exc).__name__, str(exc)[:200])
            raise ToolError(f"internal error: {tool_error_message(exc)}") from exc
        if not spec.images:
            return out
        structured = out.model_dump(mode="json")
        content: list[Any] = [TextContent(type="text", text=json.dumps(structured)[:100_000])]
        uris = []
        prev = getattr(out, "preview", None)
        if prev is not None:
            uris.append(prev.uri)
        for reg in getattr(out, "regions", []) or []:
            p = getattr(reg, "preview", None)
            if p is not None:
                uris.append(p.uri)
        import base64

        for uri in uris[:4]:
            png = ws.get_preview(uri.rsplit("/", 1)[-1])
            content.append(
                ImageContent(type="image", data=base64.b64encode(png).decode(), mime_type="image/png")
            )
        return CallToolResult(content=content, structured_content=structured)

    params = []
    annotations: dict[str, Any] = {"ctx": Context}
    for name, f in model.model_fields.items():
        ann = Annotated[f.annotation, Field(description=f.description)] if f.description else f.annotation
        default = inspect.Parameter.empty if f.is_required() else f.get_default(call_default_factory=True)
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann)
        )
        annotations[name] = ann
    params.append(inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context))
    ret = Annotated[CallToolResult, spec.output_model] if spec.images else spec.output_model
    annotations["return"] = ret
    tool.__signature__ = inspect.Signature(params, return_annotation=ret)  # type: ignore[attr-defined]
    tool.__annotations__ = annotations
    tool.__name__ = spec.name
    tool.__doc__ = spec.description
    return tool


def _raw_arguments(mcp: MCPServer, name: str) -> None:
    """The SDK validates a call's arguments with a model built from the tool's signature, which
    coerces ("5" -> 5, JSON text -> lists) and drops unknown fields, and reports failures over
    several lines. Hand the arguments through untouched instead: the tool's own strict input model
    validates them (no coercion, no unknown fields) and a failure is one line."""
    from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata

    class RawArguments(FuncMetadata):
        def validate_arguments(self, arguments_to_validate: dict[str, Any]) -> dict[str, Any]:
            return dict(arguments_to_validate or {})

    tool = mcp._tool_manager.get_tool(name)  # noqa: SLF001 - no public hook for this
    tool.fn_metadata = RawArguments.model_construct(**dict(tool.fn_metadata))
    tool.parameters = _plain_optionals(tool.parameters)


def _plain_optionals(schema: dict) -> dict:
    """Publish an optional scalar ``X | None = None`` as plain ``{"type": X}``: clients that fill
    in arguments from the schema (the MCP Inspector CLI turns ``--tool-arg k=5`` into a number only
    when the property has a ``type``) then send the right type; an explicit null is still accepted."""
    props = schema.get("properties") or {}
    for name, prop in list(props.items()):
        options = prop.get("anyOf")
        if not options or prop.get("default", "unset") is not None:
            continue
        kinds = [o for o in options if o.get("type") != "null"]
        if (
            len(kinds) == 1
            and len(options) == 2
            and kinds[0].get("type") in ("number", "integer", "boolean", "string")
        ):
            new = {k: v for k, v in prop.items() if k != "anyOf"}
            new.update(kinds[0])
            props[name] = new
    return schema


def create_server(
    roots: Sequence[str] | None = None,
    *,
    settings=None,
    workspace: Workspace | None = None,
    name: str = "geosearch",
) -> MCPServer:
    """An MCPServer serving the indexes under ``roots`` (or settings.data_roots)."""
    ws = workspace or Workspace(roots, settings=settings, restrict=True)
    mcp = MCPServer(name, title="GeoSearch", instructions=INSTRUCTIONS, version=_version())
    mcp.workspace = ws  # type: ignore[attr-defined]
    settings = ws.settings
    admission = Admission(settings.serve_workers, settings.serve_queue)
    mcp.admission = admission  # type: ignore[attr-defined]
    for spec in TOOLS:
        mcp.add_tool(
            _make_tool(spec, ws, admission),
            name=spec.name,
            title=spec.title,
            description=spec.description,
            annotations=ToolAnnotations(read_only_hint=spec.read_only, open_world_hint=False),
        )
        _raw_arguments(mcp, spec.name)

    async def _res(fn: Callable[[], Any], what: str = "resource") -> Any:
        """Resource work off the event loop, bounded like tools; any failure is one short line."""
        try:
            return await admission.run(fn, what)
        except ResourceError:
            raise
        except (GeoSearchError, OSError) as exc:
            raise ResourceError(tool_error_message(exc)) from None
        except Exception as exc:  # noqa: BLE001 - never a 650-line traceback in the log
            log.warning("resource %s failed: %s: %s", what, type(exc).__name__, str(exc)[:200])
            raise ResourceError(f"internal error: {type(exc).__name__}") from None

    @mcp.resource(
        "geosearch://indexes",
        name="indexes",
        title="Index catalogue",
        mime_type="application/json",
        description="GeoSearch indexes under the server's data roots",
    )
    async def catalogue() -> str:
        return await _res(
            lambda: json.dumps({"roots": [str(r) for r in ws.roots], "indexes": ws.catalogue()}, indent=2),
            "indexes",
        )

    @mcp.resource(
        "geosearch://indexes/{+name}",
        name="index-info",
        title="Index info",
        mime_type="application/json",
        description="Model, tiles per scale, mosaic, bounds and layers",
    )
    async def index_info(name: str) -> str:
        def get() -> str:
            h = ws.handle(name)
            info = h.index.info()
            info["path"] = h.name
            info["layers"] = []
            try:
                from geosearch import db
                from geosearch.relations import list_layers

                con = db.connect(h.path, read_only=True)
                try:
                    info["layers"] = [li.as_dict() for li in list_layers(con)]
                finally:
                    con.close()
            except Exception:  # noqa: BLE001 - an index without layers support still has info
                pass
            return json.dumps(info, indent=2, default=str)

        return await _res(get, "index-info")

    @mcp.resource(
        "geosearch://answers/{answer_id}",
        name="answer",
        title="Cached answer (GeoJSON)",
        mime_type="application/geo+json",
        description="An answer returned by the answer tool",
    )
    async def cached_answer(answer_id: str) -> str:
        return await _res(lambda: json.dumps(ws.get_answer(answer_id)), "answer")

    @mcp.resource(
        "geosearch://answers/{answer_id}/map",
        name="answer-map",
        title="Answer map (HTML)",
        mime_type="text/html",
        description="A self-contained map page of an answer: imagery, regions by confidence, near-misses, evidence",
    )
    async def answer_map(answer_id: str) -> str:
        def get() -> str:
            from geosearch.mapview import answer_map_html

            gj = ws.get_answer(answer_id)
            with ws.using(str(gj["properties"]["index"])) as h:
                return answer_map_html(h.index, gj)

        return await _res(get, "answer-map")

    @mcp.resource(
        "geosearch://previews/{preview_id}",
        name="preview",
        title="Preview (PNG)",
        mime_type="image/png",
        description="A PNG preview made by zoom_tile / segment_region / explain",
    )
    async def preview(preview_id: str) -> bytes:
        return await _res(lambda: ws.get_preview(preview_id), "preview")

    @mcp.resource(
        "geosearch://tile-previews/{tile_id}/{+name}",
        name="tile-preview",
        title="Tile preview (PNG)",
        mime_type="image/png",
        description="A PNG of one tile of an index",
    )
    async def tile_preview(tile_id: str, name: str) -> bytes:
        def get() -> bytes:
            from geosearch.render import render_png

            with ws.using(name) as h:
                i = h.index.position(tile_id)
                return render_png(h.index, tuple(float(v) for v in h.index.bounds[i]))

        return await _res(get, "tile-preview")

    @mcp.prompt(
        name="answer_region_query",
        title="Answer a region query",
        description="How to answer 'where is ...' questions over an index with these tools",
    )
    def answer_region_query(question: str, index: str = "") -> str:
        from geosearch_prompts import render

        return render("answer_region_query", question=question, index=index or "(read geosearch://indexes)")

    return mcp


def _version() -> str:
    try:
        from geosearch import __version__

        return __version__
    except Exception:  # noqa: BLE001
        return "0"


# --- HTTP ----------------------------------------------------------------------------------
def is_local_host(host: str) -> bool:
    if host in ("localhost", "127.0.0.1", "::1"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def http_app(
    mcp: MCPServer,
    host: str,
    port: int,
    token: str | None = None,
    allowed_hosts: Sequence[str] = (),
    allowed_origins: Sequence[str] = (),
):
    """The streamable-HTTP ASGI app behind exact Host / Origin checks (DNS rebinding) and bearer
    auth. Loopback names are always served on ``port``; a non-loopback bind needs a token."""
    from geosearch.settings import get_settings
    from geosearch_server.http_guard import BearerAuth, BodyLimit, HostOriginGuard, host_rules

    if not is_local_host(host) and not token:
        raise GeoSearchError(f"binding to {host} (not loopback) needs --token (or GEOSEARCH_BEARER_TOKEN)")
    extra = [h.strip() for h in allowed_hosts if h.strip()]
    any_host = "*" in extra
    if any_host and not token:
        raise GeoSearchError("allowing any Host header ('*') needs --token (or GEOSEARCH_BEARER_TOKEN)")
    names = [f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")]
    if host not in ("0.0.0.0", "::") and not is_local_host(host):
        names.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    try:
        rules = host_rules(names + [h for h in extra if h != "*"])
    except ValueError as exc:
        raise GeoSearchError(f"--allowed-host: {exc}") from exc
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)  # checked exactly below
    app = mcp.streamable_http_app(transport_security=security, host=host)
    app = BodyLimit(app, get_settings().max_request_bytes)
    app = HostOriginGuard(app, rules, allowed_origins, any_host=any_host)
    return BearerAuth(app, token) if token else app


def serve(
    roots: Sequence[str] | None,
    *,
    http: bool = False,
    host: str | None = None,
    port: int | None = None,
    token: str | None = None,
    allowed_hosts: Sequence[str] = (),
    allowed_origins: Sequence[str] = (),
    log_level: str = "warning",
    remote_prefixes: Sequence[str] = (),
) -> None:
    from geosearch.settings import get_settings

    settings = get_settings()
    if remote_prefixes:
        settings = settings.model_copy(
            update={"remote_prefixes": [*remote_prefixes, *settings.remote_prefixes]}
        )
    mcp = create_server(roots or None, settings=settings)
    ws = mcp.workspace  # type: ignore[attr-defined]
    n = len(ws.catalogue())
    where = ", ".join(map(str, ws.roots))
    if ws.policy.url_prefixes:  # the operator sees which remote rasters indexes may name
        where += f"; remote rasters under {', '.join(ws.policy.url_prefixes)}"
    if not http:
        # stdout is the protocol: say on stderr what is served, so a terminal user sees it is alive
        print(
            f"GeoSearch MCP server {_version()} on stdio: {n} index(es) under {where} "
            f"(waiting for a client; Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )
        mcp.run("stdio")
        return
    import uvicorn

    host = host or settings.http_host
    port = port or settings.http_port
    token = token or settings.bearer_token
    app = http_app(
        mcp,
        host,
        port,
        token,
        [*allowed_hosts, *settings.allowed_hosts],
        [*allowed_origins, *settings.allowed_origins],
    )
    _check_can_bind(host, port)
    print(
        f"GeoSearch MCP server {_version()} on http://{host}:{port}/mcp: {n} index(es) under {where}",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def _check_can_bind(host: str, port: int) -> None:
    """A port in use or an address not on this machine: one line, not uvicorn's traceback."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, OverflowError) as exc:
        raise GeoSearchError(f"cannot serve on {host}:{port}: {exc}") from exc
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            raise GeoSearchError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from exc


def serve_from_args(args: argparse.Namespace) -> None:
    """Serve with the options :func:`add_arguments` defined (``geosearch serve`` and ``python -m``)."""
    serve(
        args.root,
        http=args.http,
        host=args.host,
        port=args.port,
        token=args.token,
        allowed_hosts=args.allowed_host,
        allowed_origins=args.allowed_origin,
        log_level=args.log_level,
        remote_prefixes=getattr(args, "remote_prefix", []),
    )


def main(argv: list[str] | None = None) -> int:
    from geosearch_server.commands.serve import add_arguments

    p = argparse.ArgumentParser(
        prog="python -m geosearch_server.mcp_server", description="GeoSearch MCP server"
    )
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        serve_from_args(args)
    except GeoSearchError as exc:
        print(f"geosearch: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
