"""Atomic file writes: a reader never sees a half-written file.

Indexes, weights, checkpoints, caches and result files are read by other processes (and by the
next run after a crash or Ctrl-C). Each write here goes to a temporary file in the destination's
folder, is flushed to disk, and is then renamed over the destination with :func:`os.replace`, so a
reader finds either the old file or the new one in full, never a truncated mix. Use
:func:`atomic_path` for writers that take a file name (``np.save``, ``torch.save``, safetensors,
PIL, matplotlib, rasterio); the temporary name keeps the destination's suffix, so writers that
infer the format from the extension still work.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_json", "atomic_write_text"]

from geosearch.errors import InputError


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable (POSIX only; best effort)."""
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on normal exit rename it over ``path``.

    The temporary file already exists (empty) and is named ``.<name>.<random><suffix>``, where
    ``suffix`` defaults to the destination's own suffix. Pass ``suffix`` when a writer appends an
    extension it does not see (``np.save`` adds ``.npy``, ``np.savez`` adds ``.npz``). On any
    exception the temporary file is removed and the exception re-raised; ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _check_not_redirected(tmp)
        _fsync_file(tmp)
        os.chmod(tmp, _default_mode())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _check_not_redirected(tmp: Path) -> None:
    """Fail (instead of installing an empty file) when the writer appended its own extension."""
    if tmp.stat().st_size:
        return
    strays = [p for p in tmp.parent.iterdir() if p.name.startswith(tmp.name + ".")]
    if strays:
        for p in strays:
            p.unlink(missing_ok=True)
        raise ValueError(
            f"the writer wrote {strays[0].name} instead of {tmp.name}; "
            f"pass atomic_path(..., suffix={strays[0].name[len(tmp.name) :]!r})"
        )


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


def atomic_write_json(path: str | os.PathLike, data, **json_kwargs) -> None:
    """Write ``data`` as JSON (``indent=2, default=str`` unless overridden) plus a newline, atomically."""
    json_kwargs = {"indent": 2, "default": str, **json_kwargs}
    atomic_write_text(path, json.dumps(data, **json_kwargs) + "\n")


def check_regular_file(path: Path, what: str, *, must_exist: bool = True) -> os.stat_result | None:
    """Refuse a FIFO, device, folder or symlink loop before anything reads it (a FIFO would hang)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if must_exist:
            raise InputError(f"{what} not found: {path}") from None
        return None
    except OSError as exc:
        why = "a symlink loop" if exc.errno == 40 else (exc.strerror or str(exc))
        raise InputError(f"{what} {path} cannot be opened: {why}") from None
    except RuntimeError:
        raise InputError(f"{what} {path} cannot be opened: a symlink loop") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{what} {path} is refused: it is a folder")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{what} {path} is refused: not a regular file (a FIFO or device)")
    return st
