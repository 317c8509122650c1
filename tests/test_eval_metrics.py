"""Hand-made cases for the benchmark metrics (FORMAT.md "Scoring")."""

from __future__ import annotations

import math

import pytest
from shapely.geometry import box

from geosearch.eval.metrics import (
    QueryScore,
    abstain_recall_at,
    abstention_curve,
    aggregate,
    hit_curve,
    iou,
    match_ranked,
)

TRUTH = {"a": box(0, 0, 10, 10), "b": box(20, 0, 30, 10), "c": box(40, 0, 50, 10)}
MISS = box(100, 100, 110, 110)


def score(preds, relevant, abstained=False, qtype="scene", qid="q", scores=None):
    scores = scores if scores is not None else [1.0 - 0.01 * i for i in range(len(preds))]
    return QueryScore(qid, qtype, relevant, abstained, match_ranked(preds, scores, TRUTH, relevant, 0.5))


def test_iou_basic():
    assert iou(box(0, 0, 1, 1), box(0, 0, 1, 1)) == 1.0
    assert iou(box(0, 0, 1, 1), box(2, 2, 3, 3)) == 0.0
    assert iou(box(0, 0, 2, 1), box(0, 0, 1, 1)) == pytest.approx(0.5)


def test_iou_exactly_at_threshold_counts_as_hit():
    half = box(0, 0, 5, 10)  # IoU with "a" is exactly 0.5
    assert iou(half, TRUTH["a"]) == 0.5
    s = score([half], {"a": 2})
    assert s.matches[0].hit and s.first_hit_rank == 1
    just_below = box(0, 0, 4.99, 10)
    assert not score([just_below], {"a": 2}).matches[0].hit


def test_same_truth_region_hit_only_once():
    s = score([TRUTH["a"], TRUTH["a"], TRUTH["b"]], {"a": 2, "b": 1})
    assert [m.truth_id for m in s.matches] == ["a", None, "b"]
    m = aggregate([s], [1, 5, 10])
    assert m["fdr@10"] == pytest.approx(1 / 3)
    assert m["map"] == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_ties_keep_rank_order():
    # equal scores: the returned order decides, a tie never reorders the list
    s = score([MISS, TRUTH["a"]], {"a": 2}, scores=[0.7, 0.7])
    assert s.first_hit_rank == 2
    assert s.reciprocal_rank() == 0.5
    # a region overlapping two relevant truths equally: the higher grade wins
    wide = box(5, 0, 25, 10)  # IoU 1/5 with a and b -> below threshold; use a lower threshold
    ms = match_ranked([wide], [1.0], TRUTH, {"a": 1, "b": 2}, 0.2)
    assert ms[0].truth_id == "b" and ms[0].grade == 2


def test_non_relevant_truth_is_a_false_discovery():
    s = score([TRUTH["c"], TRUTH["a"]], {"a": 2})
    assert [m.hit for m in s.matches] == [False, True]
    assert aggregate([s], [1])["hit@1"] == 0.0


def test_absent_queries_abstain_or_not():
    abstain = score([], {}, abstained=True, qtype="absent", qid="x")
    answered = score([TRUTH["a"], MISS], {}, abstained=False, qtype="absent", qid="y")
    m = aggregate([abstain, answered], [1, 10])
    assert m["abstain_recall"] == 0.5
    assert m["n_answerable"] == 0 and m["hit@1"] is None and m["false_abstain_rate"] is None
    assert m["fdr@10"] == 1.0  # everything returned for an absent query is a false discovery


def test_false_abstain_counts_as_empty_answer():
    s = score([TRUTH["a"]], {"a": 2}, abstained=True)
    m = aggregate([s], [1])
    assert m["false_abstain_rate"] == 1.0 and m["hit@1"] == 0.0 and m["mrr"] == 0.0
    assert m["fdr@10"] is None  # no answered query


def test_empty_answer():
    s = score([], {"a": 2, "b": 1})
    m = aggregate([s], [1, 5])
    assert m["hit@1"] == 0.0 and m["exact@5"] == 0.0 and m["map"] == 0.0 and m["ndcg@10"] == 0.0
    assert m["false_abstain_rate"] == 0.0 and m["fdr@10"] is None


def test_exact_needs_grade2_and_only_counts_queries_with_grade2():
    only1 = score([TRUTH["b"]], {"b": 1}, qid="g1")
    with2 = score([TRUTH["b"], TRUTH["a"]], {"a": 2, "b": 1}, qid="g2")
    m = aggregate([only1, with2], [1, 5])
    assert m["exact@1"] == 0.0 and m["exact@5"] == 1.0  # denominator: the one query with a grade 2
    assert m["hit@1"] == 1.0


def test_ndcg_graded():
    s = score([MISS, TRUTH["b"], TRUTH["a"]], {"a": 2, "b": 1})
    dcg = 1 / math.log2(3) + 2 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert s.ndcg(10) == pytest.approx(dcg / idcg)
    assert s.average_precision() == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_only_100_results_scored():
    preds = [MISS] * 100 + [TRUTH["a"]]
    s = score(preds, {"a": 2})
    assert len(s.matches) == 100 and s.first_hit_rank is None


def test_per_type_and_curves():
    a = score([TRUTH["a"]], {"a": 2}, qtype="object")
    b = score([MISS, MISS, TRUTH["b"]], {"b": 2}, qtype="scene")
    assert hit_curve([a.first_hit_rank, b.first_hit_rank], 3) == [0.5, 0.5, 1.0]


def test_abstention_curve_sweeps_below_the_served_threshold():
    # answerable: 0.9, 0.6 (served: answered), 0.3 (served: abstained); absent: 0.5, 0.2, and one
    # that something else decided (None: always abstains)
    conf = [0.9, 0.6, 0.3, 0.5, 0.2, None]
    answerable = [True, True, True, False, False, False]
    curve = abstention_curve(conf, answerable)
    assert curve[0] == {"threshold": 0.2, "abstain_recall": 1 / 3, "false_abstain_rate": 0.0}
    assert curve[-1] == {"threshold": None, "abstain_recall": 1.0, "false_abstain_rate": 1.0}
    assert [p["threshold"] for p in curve[:-1]] == [0.2, 0.3, 0.5, 0.6, 0.9]
    assert abstain_recall_at(curve, 0.0) == 2 / 3  # t = 0.3: both absent scores below, no answerable
    assert abstain_recall_at(curve, 1 / 3) == 1.0  # t = 0.6 abstains on 0.3 as well
    assert abstention_curve([0.5], [True]) == []  # no absent query: no curve
