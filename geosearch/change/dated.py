"""Multi-date indexes from a list of files and a file-stem -> date mapping (bench.json ``dates``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from geosearch.errors import InputError
from geosearch.index import BuildReport, build_index

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def group_by_date(files: Sequence[str | Path], dates: dict[str, str]) -> dict[str, list[Path]]:
    """Files grouped by date (oldest first); every file needs a date, every date a file."""
    if not isinstance(dates, dict) or not dates:
        raise InputError("'dates' must map mosaic file stems to dates (YYYY-MM-DD)")
    bad = [d for d in dates.values() if not isinstance(d, str) or not _DATE.match(d)]
    if bad:
        raise InputError(f"dates must be YYYY-MM-DD, got {bad[:3]}")
    groups: dict[str, list[Path]] = {}
    missing = []
    for f in files:
        p = Path(f)
        if p.stem not in dates:
            missing.append(p.name)
            continue
        groups.setdefault(dates[p.stem], []).append(p)
    if missing:
        raise InputError(f"no date given for mosaic file(s) {missing[:3]} (add them to 'dates')")
    unknown = sorted(set(dates) - {Path(f).stem for f in files})
    if unknown:
        raise InputError(f"'dates' names file(s) not in the mosaic: {unknown[:3]}")
    return dict(sorted(groups.items()))


def build_dated_index(
    files: Sequence[str | Path], dates: dict[str, str], out: str | Path, **kwargs
) -> BuildReport:
    """Build (or resume) one index holding each date's mosaic on the first date's grid."""
    total: BuildReport | None = None
    for date, group in group_by_date(files, dates).items():
        rep = build_index(group, out, date=date, **kwargs)
        if total is None:
            total = rep
        else:
            for name in ("tiles_total", "tiles_embedded", "tiles_skipped_nodata"):
                setattr(total, name, getattr(total, name) + getattr(rep, name))
            for name in ("seconds", "model_seconds", "read_seconds"):
                setattr(total, name, getattr(total, name) + getattr(rep, name))
    assert total is not None
    return total
