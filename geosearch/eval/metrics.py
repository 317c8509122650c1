"""Scoring ranked region answers against graded truth regions (FORMAT.md "Scoring").

Everything here works on polygons already in one projected (metric) CRS. A returned region *hits*
a truth region when IoU >= the benchmark's threshold (equality counts). Results are taken in rank
order and each relevant truth region can be hit once: a returned region is matched, greedily by
rank, to the still-unmatched relevant truth region with the highest grade, then the highest IoU.
Only relevant regions of the query take part in matching; a result that overlaps only
non-relevant regions is a false discovery. An abstained answer counts as an empty list.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from geosearch.geo import iou  # the one IoU, re-exported for the scorer

MAX_RESULTS = 100
EPS = 1e-9


@dataclass
class RankMatch:
    rank: int  # 1-based
    score: float
    truth_id: str | None  # the relevant truth region this result hit, if any
    grade: int  # 0 when it hit nothing relevant
    iou: float  # IoU with the matched region (0 when none)

    @property
    def hit(self) -> bool:
        return self.truth_id is not None


def match_ranked(
    predicted: Sequence,
    scores: Sequence[float],
    truth: Mapping[str, object],
    relevant: Mapping[str, int],
    iou_threshold: float,
    max_results: int = MAX_RESULTS,
) -> list[RankMatch]:
    """Greedy by rank: each returned polygon hits at most one relevant truth region, once."""
    free = {rid: truth[rid] for rid in relevant if rid in truth}
    out: list[RankMatch] = []
    for i, poly in enumerate(list(predicted)[:max_results]):
        best: tuple[int, float, str] | None = None
        for rid, tpoly in free.items():
            v = iou(poly, tpoly)
            if v + EPS >= iou_threshold:
                cand = (int(relevant[rid]), v, rid)
                if best is None or cand[:2] > best[:2]:
                    best = cand
        if best is None:
            out.append(RankMatch(i + 1, float(scores[i]), None, 0, 0.0))
        else:
            grade, v, rid = best
            del free[rid]
            out.append(RankMatch(i + 1, float(scores[i]), rid, grade, float(v)))
    return out


@dataclass
class QueryScore:
    query_id: str
    qtype: str
    relevant: dict[str, int]
    abstained: bool
    matches: list[RankMatch] = field(default_factory=list)

    @property
    def answerable(self) -> bool:
        return bool(self.relevant)

    @property
    def has_exact(self) -> bool:
        return any(g == 2 for g in self.relevant.values())

    @property
    def ranked(self) -> list[RankMatch]:
        """The scored list: empty when the system abstained."""
        return [] if self.abstained else self.matches[:MAX_RESULTS]

    @property
    def first_hit_rank(self) -> int | None:
        return next((m.rank for m in self.ranked if m.hit), None)

    @property
    def first_exact_rank(self) -> int | None:
        return next((m.rank for m in self.ranked if m.grade == 2), None)

    def hit_at(self, k: int) -> bool:
        r = self.first_hit_rank
        return r is not None and r <= k

    def exact_at(self, k: int) -> bool:
        r = self.first_exact_rank
        return r is not None and r <= k

    def average_precision(self) -> float:
        n_rel = len(self.relevant)
        if not n_rel:
            return 0.0
        hits, total = 0, 0.0
        for m in self.ranked:
            if m.hit:
                hits += 1
                total += hits / m.rank
        return total / n_rel

    def ndcg(self, k: int = 10) -> float:
        dcg = sum(m.grade / math.log2(m.rank + 1) for m in self.ranked[:k] if m.hit)
        ideal = sorted(self.relevant.values(), reverse=True)[:k]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        return dcg / idcg if idcg > 0 else 0.0

    def reciprocal_rank(self) -> float:
        r = self.first_hit_rank
        return 1.0 / r if r else 0.0

    def false_at(self, k: int = 10) -> tuple[int, int]:
        """(results in the top k that hit nothing relevant, results returned in the top k)."""
        top = self.ranked[:k]
        return sum(1 for m in top if not m.hit), len(top)


def _mean(values: list[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def aggregate(scores: Sequence[QueryScore], ks: Sequence[int]) -> dict:
    """The FORMAT.md metrics over a set of scored queries (None where a metric has no queries)."""
    answerable = [s for s in scores if s.answerable]
    absent = [s for s in scores if not s.answerable]
    exact = [s for s in answerable if s.has_exact]
    answered = [s for s in scores if not s.abstained]
    out: dict = {"n_queries": len(scores), "n_answerable": len(answerable), "n_absent": len(absent)}
    for k in ks:
        out[f"hit@{k}"] = _mean([float(s.hit_at(k)) for s in answerable])
    for k in ks:
        out[f"exact@{k}"] = _mean([float(s.exact_at(k)) for s in exact])
    out["map"] = _mean([s.average_precision() for s in answerable])
    out["ndcg@10"] = _mean([s.ndcg(10) for s in answerable])
    out["mrr"] = _mean([s.reciprocal_rank() for s in answerable])
    out["abstain_recall"] = _mean([float(s.abstained) for s in absent])
    out["false_abstain_rate"] = _mean([float(s.abstained) for s in answerable])
    false_n = returned = 0
    for s in answered:
        f, n = s.false_at(10)
        false_n += f
        returned += n
    out["fdr@10"] = false_n / returned if returned else None
    return out


def hit_curve(first_hit_ranks: Sequence[int | None], max_k: int = MAX_RESULTS) -> list[float]:
    """hit@k for k = 1..max_k from the first-hit ranks of the answerable queries."""
    n = len(first_hit_ranks)
    if not n:
        return [0.0] * max_k
    return [sum(1 for r in first_hit_ranks if r is not None and r <= k) / n for k in range(1, max_k + 1)]


def abstention_curve(confidences: Sequence[float | None], answerable: Sequence[bool]) -> list[dict]:
    """abstain_recall vs false_abstain_rate of "abstain when the confidence is below t", for every
    threshold t that changes a decision. ``confidences``: what the method's threshold decides on
    (for the chain, its best candidate's confidence, answered or not); None always abstains (an
    abstention something else decided). The threshold also goes below the one that was served,
    so methods can be compared at the same false_abstain_rate whatever operating point they were
    fitted to."""
    n_abs = sum(1 for a in answerable if not a)
    n_ans = len(answerable) - n_abs
    if not n_abs or not n_ans:
        return []
    vals = sorted({float(c) for c in confidences if c is not None})
    out = []
    for t in [*vals, math.inf]:
        decide = [c is None or c < t for c in confidences]
        out.append(
            {
                "threshold": t if math.isfinite(t) else None,
                "abstain_recall": sum(d for d, a in zip(decide, answerable) if not a) / n_abs,
                "false_abstain_rate": sum(d for d, a in zip(decide, answerable) if a) / n_ans,
            }
        )
    return out


def abstain_recall_at(curve: list[dict], max_false: float) -> float | None:
    """The best abstain_recall of ``curve`` with false_abstain_rate <= ``max_false``."""
    ok = [p["abstain_recall"] for p in curve if p["false_abstain_rate"] <= max_false + 1e-12]
    return max(ok) if ok else None
