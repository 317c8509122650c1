"""Time in queries and change scoring between two dates of one index.

:func:`parse_time` turns "new buildings since 2015", "fields that disappeared", "what changed in the
past year" into a :class:`TimeQuery`: the change kind (``new`` / ``disappeared`` / ``changed``), the
subject left after removing the time words, and the from / to dates asked for (years or dates, not
yet matched to the index). :func:`resolve_dates` matches them to the dates an index holds.

:func:`change_scores` scores every grid cell present at both dates::

    s_from, s_to = text score of the subject at each date (cosine)
    change       = 1 - cos(embedding_from, embedding_to)          (same tile_id, both dates)
    new          = z(s_to - s_from) + W_LEVEL * z(s_to)   + W_CHANGE * z(change)
    disappeared  = z(s_from - s_to) + W_LEVEL * z(s_from) + W_CHANGE * z(change)
    changed      = W_CHANGE * z(change) [+ z(|s_to - s_from|) when a subject is given]

where ``z`` standardises over the tiles of one scale (so scales mix fairly).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

import numpy as np

from geosearch.errors import InputError
from geosearch.index import TileIndex

W_LEVEL = 0.5
W_CHANGE = 1.0

_NEW = r"\b(new|newly|appeared|appearing|built|constructed|added|emerged)\b"
_GONE = r"\b(disappeared|vanished|removed|demolished|gone|lost|destroyed|no longer there)\b"
_CHANGED = r"\b(changed|changes|change|different|altered|transformed)\b"
_YEAR = r"(?:19|20)\d\d"
_DATE = rf"{_YEAR}(?:-\d\d(?:-\d\d)?)?"
_STOP = r"\b(that|which|where|have|has|had|were|was|been|are|is|what|any|areas?\s+that|places?\s+that)\b"


@dataclass
class TimeQuery:
    kind: str | None  # "new" | "disappeared" | "changed" | None (no change asked)
    subject: str  # the query without its time words ("buildings")
    date_from: str | None = None  # "2015" / "2015-09" / "2015-09-26" as written
    date_to: str | None = None
    relative_days: int | None = None  # "in the past year" -> 365 (from = latest date - that)
    phrases: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def parse_time(text: str) -> TimeQuery:
    """Deterministic parse of the time part of a query (see the module docstring)."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("empty query: give some words to search for")
    t = " " + text.strip() + " "
    phrases: list[str] = []
    date_from = date_to = None
    rel = None

    def take(pattern: str) -> re.Match | None:
        nonlocal t
        m = re.search(pattern, t, flags=re.IGNORECASE)
        if m:
            phrases.append(m.group(0).strip())
            t = t[: m.start()] + " " + t[m.end() :]
        return m

    if m := take(rf"\bbetween\s+({_DATE})\s+and\s+({_DATE})\b"):
        date_from, date_to = m.group(1), m.group(2)
    elif m := take(rf"\bfrom\s+({_DATE})\s+(?:to|until|till)\s+({_DATE})\b"):
        date_from, date_to = m.group(1), m.group(2)
    else:
        if m := take(rf"\b(?:since|after|from)\s+({_DATE})\b"):
            date_from = m.group(1)
        if m := take(rf"\b(?:until|till|by|before|to)\s+({_DATE})\b"):
            date_to = m.group(1)
        if date_from is None and date_to is None and (m := take(rf"\bin\s+({_YEAR})\b")):
            date_to = m.group(1)
    if m := take(
        r"\b(?:in|over|during|within)\s+the\s+(?:past|last)\s+(?:(\d+|two|three|four|five|ten)\s+)?"
        r"(year|month|decade)s?\b"
    ):
        words = {"two": 2, "three": 3, "four": 4, "five": 5, "ten": 10}
        n = m.group(1)
        n = int(words.get(n.lower(), n)) if n else 1
        rel = n * {"year": 365, "month": 30, "decade": 3650}[m.group(2).lower()]
    kind = None
    for name, pattern in (("disappeared", _GONE), ("new", _NEW), ("changed", _CHANGED)):
        if re.search(pattern, t, flags=re.IGNORECASE):
            kind = name
            break
    if kind:
        for pattern in (_GONE, _NEW, _CHANGED):
            while take(pattern):
                pass
    subject = re.sub(_STOP, " ", t, flags=re.IGNORECASE)
    subject = re.sub(r"\b(the|a|an|of|since|in|to)\s*$", " ", subject.strip(), flags=re.IGNORECASE)
    subject = re.sub(r"^\s*(the|a|an|of|in)\b", " ", subject, flags=re.IGNORECASE)
    subject = re.sub(r"\s+", " ", subject).strip(" ,.;:?!")
    if kind is None and (date_from or rel):  # "flooded fields since 2012": the later state is asked
        kind = "new" if subject else "changed"
    return TimeQuery(kind, subject, date_from, date_to, rel, phrases)


def _as_date(value: str) -> dt.date:
    return dt.date.fromisoformat(value[:10]) if len(value) >= 10 else dt.date(int(value[:4]), 1, 1)


def match_date(index: TileIndex, value: str, *, latest: bool = False) -> str:
    """The index date meant by ``value`` (exact date, or the first / last date of a year or month)."""
    dates = index.date_list
    if not dates:
        raise InputError(f"index {index.path.name} has no dates: build it with `geosearch index ... --date`")
    value = str(value).strip()
    if not re.fullmatch(_DATE, value):
        raise InputError(f"not a date or year: {value!r} (use YYYY, YYYY-MM or YYYY-MM-DD)")
    hits = [d for d in dates if d.startswith(value)]
    if hits:
        return hits[-1] if latest else hits[0]
    raise InputError(f"the index has no date matching {value!r}; dates: {', '.join(dates)}")


def resolve_dates(
    index: TileIndex, tq: TimeQuery | None = None, date_from: str | None = None, date_to: str | None = None
) -> tuple[str, str]:
    """Earlier and later index dates: explicit arguments first, then the parsed query, then the
    earliest and latest dates. "since 2015" means the index's first 2015 date; "in the past year"
    the earlier date closest to one year before the later date."""
    dates = index.date_list
    if len(dates) < 2:
        raise InputError(
            f"change queries need an index with at least two dates; {index.path.name} has "
            f"{len(dates)} ({', '.join(dates) or 'none'}); add one with "
            "`geosearch index MOSAIC --out INDEX --date YYYY-MM-DD`"
        )
    tq = tq or TimeQuery(None, "")
    d_to = match_date(index, date_to or tq.date_to, latest=True) if (date_to or tq.date_to) else dates[-1]
    if date_from or tq.date_from:
        d_from = match_date(index, date_from or tq.date_from)
    elif tq.relative_days:  # the date closest to "later date minus the period"
        limit = _as_date(d_to) - dt.timedelta(days=tq.relative_days)
        earlier = [d for d in dates if _as_date(d) < _as_date(d_to)] or dates[:1]
        d_from = min(earlier, key=lambda d: (abs((_as_date(d) - limit).days), d))
    else:
        d_from = dates[0]
    if _as_date(d_from) >= _as_date(d_to):
        if tq.date_from and not (date_from or date_to or tq.date_to) and d_from == dates[-1]:
            raise InputError(
                f"nothing later than {d_from} in the index to compare with; dates: {', '.join(dates)}"
            )
        raise InputError(f"the earlier date ({d_from}) must come before the later one ({d_to})")
    return d_from, d_to


@dataclass
class ChangeScores:
    date_from: str
    date_to: str
    rows_from: np.ndarray  # positions in the index of each aligned tile at date_from
    rows_to: np.ndarray
    score: np.ndarray  # combined change score
    s_from: np.ndarray
    s_to: np.ndarray
    change: np.ndarray  # 1 - cosine between the dates
    kind: str


def aligned_rows(index: TileIndex, d_from: str, d_to: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the tiles present at both dates, paired by tile_id."""
    a = np.flatnonzero(index.dates == d_from)
    b = np.flatnonzero(index.dates == d_to)
    pos_b = {str(index.tile_ids[i]): i for i in b}
    pairs = [(i, pos_b[str(index.tile_ids[i])]) for i in a if str(index.tile_ids[i]) in pos_b]
    if not pairs:
        raise InputError(f"no grid cell of the index is present at both {d_from} and {d_to}")
    ra, rb = (np.array(x, dtype=np.int64) for x in zip(*pairs))
    return ra, rb


def zscore_by_group(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values), dtype=np.float64)
    for g in np.unique(groups):
        m = groups == g
        v = values[m].astype(np.float64)
        sd = v.std()
        out[m] = (v - v.mean()) / sd if sd > 1e-12 else 0.0
    return out


def change_scores(
    index: TileIndex,
    d_from: str,
    d_to: str,
    kind: str | None,
    text_vec: np.ndarray | None = None,
    extra: np.ndarray | None = None,
    w_change: float = W_CHANGE,
    w_level: float = W_LEVEL,
) -> ChangeScores:
    """Score every aligned grid cell for a change query (see the module docstring).

    ``extra`` (one value per aligned cell, already standardised) is added as is (spectral change)."""
    ra, rb = aligned_rows(index, d_from, d_to)
    e0, e1 = index.embeddings[ra], index.embeddings[rb]
    change = 1.0 - np.sum(e0 * e1, axis=1)
    groups = index.scales[ra]
    kind = kind or "changed"
    if text_vec is not None:
        s0, s1 = e0 @ text_vec, e1 @ text_vec
    else:
        s0 = s1 = np.zeros(len(ra), np.float32)
    zc = zscore_by_group(change, groups)
    if text_vec is None:
        score = w_change * zc
    elif kind == "new":
        score = zscore_by_group(s1 - s0, groups) + w_level * zscore_by_group(s1, groups) + w_change * zc
    elif kind == "disappeared":
        score = zscore_by_group(s0 - s1, groups) + w_level * zscore_by_group(s0, groups) + w_change * zc
    else:
        score = (
            zscore_by_group(np.abs(s1 - s0), groups)
            + w_level * zscore_by_group(np.maximum(s0, s1), groups)
            + w_change * zc
        )
    if extra is not None:
        score = score + extra
    return ChangeScores(d_from, d_to, ra, rb, score, s0, s1, change, kind)
