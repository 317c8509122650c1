"""Wall-clock phases of one process: ``geosearch ask --timings`` prints them and
``scripts/bench_ask.py`` collects them. Recording costs two clock reads a phase, so it is always on."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

_phases: dict[str, float] = {}
_start: dict[str, float] = {}


def start() -> None:
    """Mark the start of a command and forget earlier phases (``geosearch`` calls it first thing in
    ``main``)."""
    _phases.clear()
    _start["unix"] = time.time()
    _start["perf"] = time.perf_counter()


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the block's wall time to phase ``name`` (phases may nest: each records its own time)."""
    t = time.perf_counter()
    try:
        yield
    finally:
        _phases[name] = _phases.get(name, 0.0) + time.perf_counter() - t


def report() -> dict:
    """``{"start_unix", "end_unix", "total_s", "phases": {name: seconds}}`` up to now."""
    now = time.perf_counter()
    begin = _start.get("perf", now)
    return {
        "start_unix": _start.get("unix", time.time()),
        "end_unix": time.time(),
        "total_s": round(now - begin, 4),
        "phases": {k: round(v, 4) for k, v in _phases.items()},
    }


def report_line() -> str:
    """One line for stderr: ``geosearch-timings {json}``."""
    return "geosearch-timings " + json.dumps(report())
