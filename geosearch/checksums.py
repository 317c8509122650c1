"""sha256 of weight files, hashed once per file version (a small JSON cache): no torch here, so
that a process which only checks weights (``geosearch search`` over a starter index) stays light."""

from __future__ import annotations

import os
import threading


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


CHECKSUM_CACHE_ENTRIES = 64
_checksum_lock = threading.Lock()


def _file_key(st: os.stat_result) -> list[int]:
    # any write changes the size or mtime; ctime and inode also change when a file is replaced or
    # its mtime is set back by hand, so a stale entry never matches a different file
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def sha256_cached(path: str | os.PathLike, cache_file: str | os.PathLike | None = None) -> str:
    """:func:`sha256_file`, hashed once per file version: the digest is remembered in a small JSON
    cache (``<cache_dir>/sha256.json``) keyed by the file's absolute path, size, mtime, ctime and
    inode, and the file is hashed again whenever any of them changes. A missing, unreadable or
    unwritable cache only costs the hashing."""
    import json
    from pathlib import Path

    from geosearch.fileio import atomic_write_json

    if cache_file is None:
        from geosearch.settings import get_settings

        cache_file = Path(get_settings().cache_dir) / "sha256.json"
    cache_file = Path(cache_file)
    path = Path(path).absolute()
    key = _file_key(os.stat(path))
    with _checksum_lock:
        try:
            entries = json.loads(cache_file.read_text())
            if not isinstance(entries, dict):
                entries = {}
        except (OSError, ValueError):
            entries = {}
        hit = entries.get(str(path))
        if isinstance(hit, dict) and hit.get("key") == key and isinstance(hit.get("sha256"), str):
            return hit["sha256"]
        digest = sha256_file(path)
        if _file_key(os.stat(path)) != key:  # changed while hashing: do not remember it
            return digest
        entries.pop(str(path), None)
        entries[str(path)] = {"key": key, "sha256": digest}
        while len(entries) > CHECKSUM_CACHE_ENTRIES:
            entries.pop(next(iter(entries)))
        try:
            atomic_write_json(cache_file, entries)
        except OSError:
            pass
        return digest
