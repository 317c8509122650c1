"""One sandbox for every file a served request can reach.

An index names its mosaic files, and a VRT names its sources: a crafted index could make a server
read any file, or send HTTP requests through GDAL's virtual file systems (``/vsicurl/``) and
network drivers (WMS, WMTS...). :class:`FilePolicy` checks a raster path before anything opens it:

* local files must resolve (symlinks followed) inside the data roots, be regular files (no FIFO,
  device or symlink loop), and so must their GDAL sidecars (``.ovr``, ``.aux.xml``, ``.msk``);
* a VRT's sources are checked the same way, recursively; VRT pixel functions in Python are refused;
* ``/vsi*`` paths, URLs (``http://``, ``s3://``...) and GDAL connection strings (``NETCDF:...``)
  are refused unless they lie under a prefix the operator allowed (``GEOSEARCH_REMOTE_PREFIXES``,
  e.g. ``https://data.example.org/cogs/``). URLs are compared as URLs: ``/vsicurl/https://h/a`` is
  ``https://h/a``, ``/vsis3/b/k`` is ``s3://b/k``; scheme, host and port must be the prefix's own
  (``https://h.evil/`` is not under ``https://h``), and paths with ``..`` segments are refused;
* rasters are read only with file drivers (a remote one not with the VRT driver: a VRT names other
  files), and, when no URL is allowed, with GDAL's HTTP pointed at a closed local port, so that
  nothing can leave the machine even if a check were missed.

The CLI works on the user's own files and uses :data:`OPEN` (no restriction).
"""

from __future__ import annotations

import os
import re
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from geosearch.errors import InputError
from geosearch.fileio import check_regular_file
from geosearch.remote import canonical_url

FILE_DRIVERS = ("GTiff", "COG", "VRT", "PNG", "JPEG", "JP2OpenJPEG", "HFA", "ENVI")
SIDECARS = (".ovr", ".aux.xml", ".msk", ".aux")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_CONNECTION = re.compile(r"^[A-Za-z][A-Za-z0-9_]+:")  # NETCDF:..., GTIFF_DIR:..., HDF5:... (not C:)
MAX_VRT_DEPTH = 4
NO_NETWORK_ENV = {
    "GDAL_HTTP_PROXY": "127.0.0.1:9",  # any HTTP GDAL might still try goes to a closed local port
    "GDAL_HTTP_MAX_RETRY": "0",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".geosearch-refused",
    "GDAL_VRT_ENABLE_PYTHON": "NO",
}


def is_virtual(path: str) -> bool:
    """A GDAL virtual file system path, a URL or a driver connection string."""
    return path.startswith("/vsi") or bool(_URL.match(path)) or bool(_CONNECTION.match(path))


@dataclass(frozen=True)
class FilePolicy:
    roots: tuple[Path, ...] = ()  # empty: any local file (the CLI)
    url_prefixes: tuple[str, ...] = ()
    restricted: bool = False
    drivers: tuple[str, ...] = field(default=FILE_DRIVERS)

    @classmethod
    def for_roots(cls, roots: Sequence[Path], url_prefixes: Sequence[str] = ()) -> FilePolicy:
        return cls(tuple(Path(r).resolve() for r in roots), tuple(p for p in url_prefixes if p), True)

    # -- checks --------------------------------------------------------------------------------
    def check_raster(self, path: str | Path) -> str | Path:
        """The path to open, or an :class:`InputError` saying why it is refused."""
        if not self.restricted:
            return path
        return self._check(str(path), depth=0)

    def _check(self, s: str, depth: int) -> str | Path:
        if is_virtual(s):
            if any(under_prefix(s, p) for p in self.url_prefixes):
                return s
            if self.url_prefixes:
                raise InputError(
                    f"raster {_short(s)!r} is refused: it is not under the URL prefixes this server allows "
                    f"({', '.join(self.url_prefixes[:5])})"
                )
            raise InputError(
                f"raster {_short(s)!r} is refused: remote and virtual paths (URLs, /vsi*, GDAL connection "
                "strings) are not allowed here (an operator can allow URL prefixes: geosearch serve --remote-prefix "
                "URL, or GEOSEARCH_REMOTE_PREFIXES)"
            )
        p = self._check_local(Path(s))
        for sidecar in (p.with_name(p.name + ext) for ext in SIDECARS):
            if os.path.lexists(sidecar):
                self._check_local(sidecar)
        head = _head(p).lstrip()
        if p.suffix.lower() == ".vrt" or head.startswith(b"<"):
            self._check_xml(p, depth)
        elif head.startswith((b"{", b"[")):  # STAC / tile-matrix JSON descriptions fetch URLs
            raise InputError(f"raster {p.name!r} is refused: a JSON description, not a raster file")
        return p

    def _check_local(self, p: Path) -> Path:
        check_regular_file(p, "raster")  # FIFO, device, folder, symlink loop: before any read
        real = p.resolve(strict=True)
        if self.roots and not any(real.is_relative_to(r) for r in self.roots):
            raise InputError(
                f"raster {_short(str(p))!r} is refused: it is outside the data roots "
                "(serve its folder as a root too: --root FOLDER)"
            )
        return real

    def _check_xml(self, p: Path, depth: int) -> None:
        if depth >= MAX_VRT_DEPTH:
            raise InputError(f"raster {p.name!r} is refused: VRTs nested deeper than {MAX_VRT_DEPTH}")
        try:
            root = ET.parse(p).getroot()
        except (ET.ParseError, OSError) as exc:
            raise InputError(f"raster {p.name!r} is refused: an XML file that is not a readable VRT") from exc
        if root.tag != "VRTDataset":  # GDAL_WMS, WMTS, TMS... description files reach the network
            raise InputError(f"raster {p.name!r} is refused: a <{root.tag}> description, not a raster file")
        for el in root.iter():
            if el.tag == "PixelFunctionLanguage" and (el.text or "").strip().lower() == "python":
                raise InputError(f"raster {p.name!r} is refused: VRT pixel functions in Python")
            if el.tag in ("SourceFilename", "SourceDataset") and el.text:
                src = el.text.strip()
                if not is_virtual(src) and el.get("relativeToVRT", "0") == "1":
                    src = str(p.parent / src)
                self._check(src, depth + 1)

    # -- opening ---------------------------------------------------------------------------------
    def check_driver(self, driver: str, path: str | Path) -> None:
        """After an open: a restricted policy reads only with file drivers."""
        if self.restricted and driver not in self.drivers:
            raise InputError(
                f"raster {_short(str(path))!r} is refused: GDAL driver {driver} is not a file format"
            )
        if self.restricted and driver == "VRT" and is_virtual(str(path)):  # its sources go unchecked
            raise InputError(f"raster {_short(str(path))!r} is refused: a remote VRT names other files")

    def gdal_env(self) -> dict:
        """GDAL config for opens and reads: no network unless URLs are allowed."""
        return dict(NO_NETWORK_ENV) if self.restricted and not self.url_prefixes else {}


OPEN = FilePolicy()

_DEFAULT_PORTS = {"http": 80, "https": 443}
_DOT_SEGMENT = re.compile(r"(^|/)(\.|%2e){1,2}(/|$)", re.IGNORECASE)


def under_prefix(path: str, prefix: str) -> bool:
    """``path`` (a URL or GDAL path) lies under the allowed ``prefix``: as URLs, the same scheme, host
    and port and a path that starts with the prefix's path; otherwise a plain string prefix. Paths
    with ``..`` segments (plain or percent-encoded) are never under a prefix."""
    url, pre = canonical_url(path), canonical_url(prefix)
    if _DOT_SEGMENT.search(urllib.parse.urlsplit(url).path if "://" in url else url):
        return False
    if "://" not in url or "://" not in pre:
        return "://" not in url and "://" not in pre and url.startswith(pre)
    try:
        u, p = urllib.parse.urlsplit(url), urllib.parse.urlsplit(pre)
        u_port = u.port or _DEFAULT_PORTS.get(u.scheme.lower())
        p_port = p.port or _DEFAULT_PORTS.get(p.scheme.lower())
    except ValueError:  # a malformed port
        return False
    return (
        u.scheme.lower() == p.scheme.lower()
        and (u.hostname or "") == (p.hostname or "")
        and u_port == p_port
        and u.username is None
        and u.path.startswith(p.path or "/")
    )


def _head(p: Path, n: int = 64) -> bytes:
    try:
        with open(p, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def _short(s: str, n: int = 120) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."
