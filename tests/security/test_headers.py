"""Host, Origin and Authorization headers are parsed and matched exactly: none of the prefix
tricks that fool a startswith() check gets through, and the documented remote setup works."""

from __future__ import annotations

import pytest

PORT = 8765
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from starlette.testclient import TestClient

    from geosearch_server.mcp_server import create_server, http_app

    root = tmp_path_factory.mktemp("hdr")
    app = http_app(
        create_server([str(root)]), "0.0.0.0", PORT, "tok", ["geo.example.org"], ["https://app.example.org"]
    )
    with TestClient(app) as c:
        yield c


def _post(client, **headers) -> int:
    h = {**ACCEPT, "Authorization": "Bearer tok", "Host": f"127.0.0.1:{PORT}", **headers}
    return client.post("/mcp", json=INIT, headers=h).status_code


BAD_HOSTS = [
    f"127.0.0.1:{PORT}.evil.com",
    f"127.0.0.1:{PORT}evil",
    f"localhost:{PORT}@evil.com",
    f"evil.com#127.0.0.1:{PORT}",
    f"127.0.0.1:{PORT},evil.com",
    f"127.0.0.1:{PORT}/x",
    f"127.0.0.1:{PORT + 1}",
    "127.0.0.1",
    f"127.0.0.2:{PORT}",
    f"[::1]:{PORT}]",
    f"geo.example.org.evil.com:{PORT}",
    "evil.geo.example.org",
    "",
    f"127.0.0.1:{PORT}:1",
]
GOOD_HOSTS = [
    f"127.0.0.1:{PORT}",
    f"LOCALHOST:{PORT}",
    f"[::1]:{PORT}",
    "geo.example.org",
    "geo.example.org:443",
]
BAD_ORIGINS = [
    "http://localhost:1@evil.com",
    f"http://127.0.0.1:{PORT}@evil.com",
    f"http://localhost:{PORT}.evil.com",
    f"http://evil.com/?localhost:{PORT}",
    "null",
    "file://",
    f"http://127.0.0.1:{PORT}/path",
    "https://app.example.org.evil.com",
    "http://geo.example.org.evil.com",
    f"ftp://localhost:{PORT}",
]
GOOD_ORIGINS = [
    f"http://localhost:{PORT}",
    f"http://127.0.0.1:{PORT}",
    "https://geo.example.org",
    "https://app.example.org",
]


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_foreign_hosts_are_refused(client, host):
    assert _post(client, Host=host) == 421


@pytest.mark.parametrize("host", GOOD_HOSTS)
def test_served_hosts_are_answered(client, host):
    assert _post(client, Host=host) == 200


@pytest.mark.parametrize("origin", BAD_ORIGINS)
def test_foreign_origins_are_refused(client, origin):
    assert _post(client, Origin=origin) == 403


@pytest.mark.parametrize("origin", GOOD_ORIGINS)
def test_served_origins_are_answered(client, origin):
    assert _post(client, Origin=origin) == 200


@pytest.mark.parametrize(
    "auth, status",
    [
        ("Bearer tok", 200),
        ("bearer tok", 200),
        ("BEARER  tok ", 200),
        ("Bearer tok2", 401),
        ("Bearer to", 401),
        ("Basic tok", 401),
        ("Bearertok", 401),
        ("tok", 401),
        ("", 401),
    ],
)
def test_the_auth_scheme_is_case_insensitive_and_the_token_exact(client, auth, status):
    assert _post(client, Authorization=auth) == status


def test_bad_allowed_host_values_are_refused_at_start(tmp_path):
    from geosearch.errors import GeoSearchError
    from geosearch_server.mcp_server import create_server, http_app

    with pytest.raises(GeoSearchError, match="allowed-host"):
        http_app(create_server([str(tmp_path)]), "127.0.0.1", PORT, None, ["geo.example.org/x"])


def test_an_oversized_body_is_refused_before_it_is_read(client):
    big = b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": "' + b"y" * 5_000_000 + b'"}}'
    h = {**ACCEPT, "Authorization": "Bearer tok", "Host": f"127.0.0.1:{PORT}"}
    assert client.post("/mcp", content=big, headers=h).status_code == 413

    def chunks():
        for _ in range(50):
            yield b"y" * 100_000

    assert client.post("/mcp", content=chunks(), headers=h).status_code == 413
    assert _post(client) == 200  # and the server still answers
