"""The HTTP transport's guards, as ASGI middleware: Host and Origin headers parsed and matched
exactly (DNS-rebinding protection; a prefix match would let ``127.0.0.1:8765.evil.com`` through),
and the bearer token (auth scheme case-insensitive, token compared in constant time)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

_NAME = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_HOST = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]/@?#\s]+)(?::(?P<port>[0-9]{1,5}))?$")


def parse_host(value: str) -> tuple[str, int | None] | None:
    """``name[:port]`` or ``[v6]:port`` -> (lower-case name, port); None when malformed."""
    m = _HOST.match(value.strip())
    if not m:
        return None
    host, port = m.group("host").lower(), m.group("port")
    if not host.startswith("[") and not _NAME.match(host):
        return None
    if port is not None and not 0 < int(port) < 65536:
        return None
    return host, int(port) if port else None


@dataclass(frozen=True)
class HostRule:
    host: str
    port: int | None  # None: any port, or none

    def matches(self, host: str, port: int | None) -> bool:
        return host == self.host and (self.port is None or port == self.port)


def host_rules(entries: Iterable[str]) -> list[HostRule]:
    rules = []
    for e in entries:
        parsed = parse_host(e)
        if parsed is None:
            raise ValueError(f"not a host name or host:port: {e!r}")
        rules.append(HostRule(*parsed))
    return rules


class HostOriginGuard:
    """Refuse a request whose Host (421) or Origin (403) is not one this server answers to."""

    def __init__(self, app, hosts: list[HostRule], origins: Iterable[str] = (), any_host: bool = False):
        self.app = app
        self.hosts = hosts
        self.origins = {o.rstrip("/").lower() for o in origins}
        self.any_host = any_host

    def host_ok(self, value: str | None) -> bool:
        if self.any_host:
            return True
        parsed = parse_host(value or "")
        return parsed is not None and any(r.matches(*parsed) for r in self.hosts)

    def origin_ok(self, value: str | None) -> bool:
        if value is None:  # same-origin and non-browser clients send none
            return True
        if value.rstrip("/").lower() in self.origins:
            return True
        try:
            u = urlsplit(value)
            port = u.port
        except ValueError:
            return False
        if u.scheme not in ("http", "https") or u.username or u.password or u.path not in ("", "/"):
            return False
        if u.query or u.fragment or not u.hostname:
            return False
        host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname.lower()
        return self.any_host or any(r.matches(host, port) for r in self.hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []
            }
            if not self.host_ok(headers.get("host")):
                await _reply(send, 421, b'{"error": "misdirected request: this Host is not served here"}')
                return
            if not self.origin_ok(headers.get("origin")):
                await _reply(send, 403, b'{"error": "forbidden: this Origin is not allowed"}')
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse a request body over ``limit`` bytes (413), declared or streamed, before the app
    reads it: the body is buffered up to the limit and replayed."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _reply(send, 413, b'{"error": "request body too large"}')
            return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                break
            body = msg.get("body", b"")
            size += len(body)
            if size > self.limit:
                await _reply(send, 413, b'{"error": "request body too large"}')
                return
            chunks.append(body)
            more = msg.get("more_body", False)
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)


class BearerAuth:
    """Every HTTP request needs ``Authorization: Bearer <token>`` (scheme case-insensitive)."""

    def __init__(self, app, token: str):
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = {k.lower(): v for k, v in scope.get("headers") or []}
            scheme, _, got = headers.get(b"authorization", b"").strip().partition(b" ")
            if scheme.lower() != b"bearer" or not secrets.compare_digest(got.strip(), self.token):
                body = b'{"error": "unauthorized: send Authorization: Bearer <token>"}'
                await _reply(send, 401, body, [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)


async def _reply(send, status: int, body: bytes, headers: list | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})
