"""Helpers shared by CLI commands: output formatting and atomic file writes."""

from __future__ import annotations

# The atomic writers live in the engine; re-exported here because many commands import them from here.
from geosearch.fileio import atomic_write_json, atomic_write_text

__all__ = ["atomic_write_json", "atomic_write_text", "check_output_file", "format_table", "positive_int"]


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number of at least 1 (argparse turns the error into exit 2)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def check_output_file(flag: str, target: str) -> None:
    """Refuse, before any work, an output file that cannot be written: its folder missing, not
    writable (a file is created there and removed), or the path itself a folder (an :class:`~geosearch.errors.InputError`, exit 2)."""
    import os
    import tempfile
    from pathlib import Path

    from geosearch.errors import InputError

    path = Path(target).expanduser()
    folder = path.absolute().parent
    if not folder.is_dir():
        raise InputError(f"{flag} {target!r}: the folder {folder} does not exist")
    if path.is_dir():
        raise InputError(f"{flag} {target!r} is a folder: give a file name")
    try:  # a real probe: os.access says yes to root even where the kernel refuses (/sys, /proc)
        fd, probe = tempfile.mkstemp(prefix=".geosearch-probe-", dir=folder)
    except OSError as exc:
        raise InputError(
            f"{flag} {target!r}: the folder {folder} is not writable ({exc.strerror or exc})"
        ) from None
    os.close(fd)
    os.unlink(probe)


def format_table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "(no rows)"
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return "" if v is None else str(v)
