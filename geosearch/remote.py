"""Remote rasters: URLs GDAL reads with HTTP range requests, and the few bytes GeoSearch reads itself.

A mosaic file may be a URL: ``http(s)://`` (GDAL's ``/vsicurl/``: only the byte ranges a read
needs, so a Cloud-Optimized GeoTIFF is never downloaded whole), or ``s3://``, ``gs://``, ``az://``
(rasterio's own handlers and credentials: ``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``...).
Such paths are kept as given (never turned into local paths) and recorded as given in an index.

Every open and read of a remote raster runs with :func:`gdal_env`: timeouts and a bounded retry
count, so an unreachable or stalled server gives an error instead of a hang. A value the user set
for GDAL (environment variable ``GDAL_HTTP_TIMEOUT``... or a ``rasterio.Env``) is kept.
"""

from __future__ import annotations

import posixpath
import re
import urllib.parse

from geosearch.errors import InputError

URL_SCHEMES = ("http", "https", "s3", "gs", "az", "azure", "oss", "adls")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# GDAL virtual file systems and the URL scheme each one reads
_VSI = {
    "/vsicurl/": "",
    "/vsis3/": "s3://",
    "/vsigs/": "gs://",
    "/vsiaz/": "az://",
    "/vsioss/": "oss://",
    "/vsiadls/": "adls://",
}
# Defaults for remote opens and reads; any of them the user set for GDAL wins
GDAL_REMOTE_DEFAULTS = {
    "GDAL_HTTP_CONNECTTIMEOUT": "10",  # seconds to connect
    "GDAL_HTTP_TIMEOUT": "30",  # seconds for one request
    "GDAL_HTTP_MAX_RETRY": "2",  # retries on 429 / 5xx / timeouts
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no folder listing, no sidecar probes per open
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "VSI_CACHE": "TRUE",
}
TIMEOUT_S = 30.0  # GeoSearch's own small reads (STAC JSON, fingerprint bytes)
MAX_JSON_BYTES = 64 << 20


def is_url(path: object) -> bool:
    """A remote raster or document: ``http(s)://``, ``s3://``, ``gs://``, ``az://``..."""
    m = _SCHEME.match(str(path))
    return bool(m) and m.group(1).lower() in URL_SCHEMES


def is_http(path: object) -> bool:
    return str(path).lower().startswith(("http://", "https://"))


def canonical_url(path: str) -> str:
    """The URL a GDAL path reads (``/vsicurl/https://h/a.tif`` -> ``https://h/a.tif``,
    ``/vsis3/b/k`` -> ``s3://b/k``); other paths unchanged."""
    for prefix, scheme in _VSI.items():
        if path.startswith(prefix):
            return scheme + path[len(prefix) :]
    return path


def url_name(url: str) -> str:
    """The file name a URL ends with (``https://h/a/b.tif?sig=...`` -> ``b.tif``)."""
    return posixpath.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path)) or url


def url_suffix(url: str) -> str:
    return posixpath.splitext(url_name(url))[1].lower()


def gdal_env() -> dict[str, str]:
    """GDAL config for remote opens and reads: :data:`GDAL_REMOTE_DEFAULTS` minus those already set."""
    from rasterio.env import get_gdal_config

    return {k: v for k, v in GDAL_REMOTE_DEFAULTS.items() if get_gdal_config(k) is None}


def describe_http_error(url: str, exc: BaseException) -> str:
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        return f"{url}: HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"{url}: cannot connect ({exc.reason})"
    if isinstance(exc, TimeoutError):
        return f"{url}: no answer within {TIMEOUT_S:g} s"
    return f"{url}: {type(exc).__name__}: {exc}"


def _request(url: str, byte_range: str | None = None):
    import urllib.error
    import urllib.request  # here: its imports (http, email, ssl) cost every command otherwise

    headers = {"User-Agent": "geosearch"}
    if byte_range:
        headers["Range"] = f"bytes={byte_range}"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
        raise InputError(f"cannot read {describe_http_error(url, exc)}") from None


def fetch_text(url: str, max_bytes: int = MAX_JSON_BYTES) -> str:
    """A small document over HTTP(S) (a STAC Item or ItemCollection), refused past ``max_bytes``."""
    if not is_http(url):
        raise InputError(f"cannot fetch {url}: only http(s) URLs are read as STAC documents")
    with _request(url) as resp:
        data = _read(resp, url, max_bytes + 1)
    if len(data) > max_bytes:
        raise InputError(f"{url} is larger than {max_bytes >> 20} MB: not a STAC document")
    return data.decode("utf-8", errors="replace")


def sniff(url: str, n: int = 512) -> tuple[str, bytes]:
    """(content type, first bytes) of an HTTP(S) URL, with one small range request."""
    with _request(url, f"0-{n - 1}") as resp:
        return resp.headers.get("Content-Type", "") or "", _read(resp, url, n)


def _read(resp, url: str, n: int) -> bytes:
    import http.client

    try:
        return resp.read(n)
    except (OSError, http.client.HTTPException) as exc:  # a reset or a stall mid-body
        raise InputError(f"cannot read {describe_http_error(url, exc)}") from None


def http_fingerprint_parts(url: str, chunk: int = 1 << 20) -> list[bytes]:
    """What :meth:`Mosaic.fingerprint` hashes of a local file (its size, first and last MiB), read
    with two range requests, so that a file and its copy on a server fingerprint alike."""
    with _request(url, f"0-{chunk - 1}") as resp:
        head = _read(resp, url, chunk)
        size = _total_size(resp, len(head))
        full = resp.status == 200  # the server ignored Range: the body is the whole file
        tail = b""
        if full and size > 2 * chunk:
            tail = head[-chunk:]
            while block := _read(resp, url, chunk):  # keep only the last MiB (bounded memory)
                tail = (tail + block)[-chunk:]
    parts = [str(size).encode(), head]
    if size > 2 * chunk:
        if not full:
            with _request(url, f"-{chunk}") as resp:
                tail = _read(resp, url, chunk)
        parts.append(tail)
    return parts


def _total_size(resp, got: int) -> int:
    rng = resp.headers.get("Content-Range", "")  # bytes 0-1048575/123456789
    if "/" in rng and rng.rsplit("/", 1)[1].strip().isdigit():
        return int(rng.rsplit("/", 1)[1])
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else got
