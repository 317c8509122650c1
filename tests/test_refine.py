"""Refinement engine on a generated raster with a known answer (red square on a green field)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from shapely.geometry import box

from geosearch.errors import InputError
from geosearch.geo import reproject_geom
from geosearch.pipeline import MethodContext, run_method
from geosearch.refine import calibrate
from geosearch.refine.heatmap import Candidate, segment
from geosearch.refine.merge import merge_candidates
from geosearch.refine.pyramid import child_bounds, dense_window_count, pyramid_search, zoom
from geosearch.refine.rerank import negative_prompts
from geosearch.refine.testing import build_test_index


@pytest.fixture(scope="module")
def square_index(tmp_path_factory):
    return build_test_index(tmp_path_factory.mktemp("refine"))


def _iou(a, b) -> float:
    return a.intersection(b).area / a.union(b).area


def test_child_bounds_cover_parent():
    kids = child_bounds((0.0, 0.0, 100.0, 100.0), 0.5, 0.5)
    assert len(kids) == 9
    assert {k[2] - k[0] for k in kids} == {50.0}
    assert min(k[0] for k in kids) == 0.0 and max(k[2] for k in kids) == 100.0


def test_zoom_scores_sub_windows(square_index):
    index, sq = square_index
    i = int(np.argmax(index.embeddings @ index.model().encode_text(["red"])[0]))
    wins = zoom(index, tuple(index.bounds[i]), ["red"])
    assert len(wins) == 9
    assert wins[0].score >= wins[-1].score
    assert box(*wins[0].bounds).intersects(box(*sq))
    assert wins[0].level == 1 and wins[0].scale_m == pytest.approx(index.scales[i] / 2)


def test_pyramid_counts_full_res_reads(square_index):
    index, sq = square_index
    mosaic = index.mosaic()
    before = mosaic.stats.full_res_reads
    pr = pyramid_search(index, ["red"], 5, top_n=2, depth=2, budget=27, keep=1)
    assert pr.windows_embedded <= 27
    assert pr.finest_scale_m == pytest.approx(32.0)
    # 32 m windows read at the model's 32 px are full-resolution reads (1 m/px); 64 m ones are not
    level2 = [w for w in pr.windows if w.level == 2]
    assert level2 and pr.full_res_reads == len(level2)
    assert mosaic.stats.full_res_reads - before == pr.full_res_reads
    assert box(*pr.windows[0].bounds).within(box(*sq))
    # dense tiling of the 512 m mosaic at 32 m with 50 % overlap: 31 x 31 windows
    assert dense_window_count(index, 32.0) == 31 * 31


def test_heatmap_segmentation_finds_square(square_index):
    index, sq = square_index
    cands = segment(
        index, index.mosaic().bounds, ["red"], crop_fracs=(1 / 4, 1 / 6, 1 / 8), grid=32, threshold=0.6
    )
    assert cands
    best = cands[0]
    assert _iou(best.polygon_map, box(*sq)) >= 0.8
    assert best.mask is not None and best.mask.dtype == bool and best.mask.any()
    back = reproject_geom(best.polygon_wgs84, "EPSG:4326", index.crs)
    assert _iou(back, best.polygon_map) > 0.99
    assert -180 <= best.bbox_wgs84[0] <= 180


def test_overlapping_finds_merge_into_one():
    a = Candidate(box(0, 0, 10, 10), box(0, 0, 1, 1), 0.9, (0, 0, 10, 10), evidence_tiles=["t1"], scale_m=10)
    b = Candidate(box(1, 1, 11, 11), box(0, 0, 1, 1), 0.8, (1, 1, 11, 11), evidence_tiles=["t2"], scale_m=20)
    c = Candidate(box(50, 50, 60, 60), box(0, 0, 1, 1), 0.7, (50, 50, 60, 60), evidence_tiles=["t3"])
    out = merge_candidates([b, c, a], iou=0.5)
    assert len(out) == 2
    assert out[0].score == 0.9 and out[0].evidence_tiles == ["t1", "t2"] and out[0].merged == 2
    union = merge_candidates([a, b], iou=0.5, mode="union")
    assert union[0].bbox_map == (0.0, 0.0, 11.0, 11.0)


def test_segment_method_returns_the_square(square_index):
    index, sq = square_index
    ans = run_method("segment", index, "red", 5, MethodContext(options={"seg_source": "crops"}))
    assert ans.regions and not ans.abstained
    top = ans.regions[0]
    assert _iou(reproject_geom(top.polygon_wgs84, "EPSG:4326", index.crs), box(*sq)) >= 0.8
    assert top.confidence is not None and 0 <= top.confidence <= 1
    assert isinstance(ans.full_res_reads, int) and ans.full_res_reads >= 0
    json.dumps(ans.geojson())


def test_segment_method_stored_heatmap(square_index):
    index, sq = square_index
    ans = run_method("segment", index, "red", 5, MethodContext(options={"seg_source": "stored"}))
    assert _iou(reproject_geom(ans.regions[0].polygon_wgs84, "EPSG:4326", index.crs), box(*sq)) >= 0.5


def test_pyramid_method(square_index):
    index, sq = square_index
    ans = run_method("pyramid", index, "red", 3)
    assert len(ans.regions) == 3
    assert reproject_geom(ans.regions[0].polygon_wgs84, "EPSG:4326", index.crs).intersects(box(*sq))
    assert all(r.confidence is not None for r in ans.regions)


def test_abstains_on_query_matching_nothing(square_index):
    index, _ = square_index
    ans = run_method("answer", index, "a blue lake", 5)  # nothing blue in the raster
    assert ans.abstained and ans.regions == []
    assert ans.reason and "not found" in ans.reason
    assert ans.near_misses
    ok = run_method("answer", index, "red", 5)
    assert not ok.abstained and ok.regions[0].confidence > 0.5


def test_relation_without_layers_is_flagged_not_checkable(square_index):
    """A relation the index has no layer for is flagged, never silently passed or failed."""
    index, _ = square_index
    ans = run_method("answer", index, "red next to a road", 3)
    assert ans.regions and all("relation_not_checkable" in r.flags for r in ans.regions)
    assert ans.details["relations_unchecked"] and not ans.details["relations_checked"]
    plain = run_method("answer", index, "red", 3)
    assert all("relation_not_checkable" not in r.flags for r in plain.regions)


def test_negative_prompts():
    from geosearch.chain import parse

    q = parse("a playground without a pond")
    assert q.parsed.exclusions == ["pond"] and q.look_for == "a playground"
    negs = q.negatives
    assert negs == negative_prompts("a playground", ["pond"])
    assert any("pond" in n for n in negs) and any("stadium" in n for n in negs)


def test_size_term_ranks_the_larger_of_two_equal_matches_first(square_index):
    """``w_size``: of two regions the model scores alike, the larger one (less blown up) ranks
    first, by ``w_size`` per doubling of its side; with ``w_size`` 0 the order is the score's."""
    from geosearch.refine.rerank import RerankWeights, rerank, size_feature

    index, _ = square_index
    vec = index.text_model().encode_text(["red"])[0]
    emb = np.stack([vec, vec]).astype(np.float32)

    def ranked(size: float) -> list[tuple[float, float]]:
        cands = [
            Candidate(box(0, 0, 1, 1), box(0, 0, 1, 1), 0.5, (0, 0, 50, 50), scale_m=50.0),
            Candidate(box(0, 0, 1, 1), box(0, 0, 1, 1), 0.5, (0, 0, 400, 400), scale_m=400.0),
        ]
        out = rerank(index, cands, vec, weights=RerankWeights(size=size), embeddings=emb, context=[0.0, 0.0])
        return [(c.scale_m, c.score) for c in out]

    assert [s for s, _ in ranked(0.0)] == [50.0, 400.0]
    (big, top), (small, low) = ranked(0.1)
    assert (big, small) == (400.0, 50.0) and top - low == pytest.approx(0.1 * 3)
    assert size_feature(100.0) == 0.0 and size_feature(None) == 0.0 and size_feature(200.0) == 1.0


def test_calibration_fit_and_threshold():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(2, 1, (80, 2)), rng.normal(-1, 1, (40, 2))])
    y = np.concatenate([np.ones(80), np.zeros(40)])
    coef, b = calibrate.fit_logistic(x, y)
    p = 1 / (1 + np.exp(-(x @ coef + b)))
    t = calibrate.choose_threshold(p[y == 1], p[y == 0], max_false=0.15)
    assert np.mean(p[y == 1] < t) <= 0.15 and np.mean(p[y == 0] < t) >= 0.7


def _solid(rgb, n=4, size=32):
    return np.stack([np.full((size, size, 3), rgb, np.uint8)] * n)


def test_gallery_round_trip_and_reference(tmp_path):
    from geosearch.refine.gallery import read_gallery, save_gallery

    rng = np.random.default_rng(1)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    path = save_gallery(tmp_path / "m.gallery.npz", emb, [f"c{i % 3}" for i in range(50)], "m@1", "unit test")
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, no leftovers
    g = read_gallery(path)
    assert g.model_id == "m@1" and len(g) == 50
    assert np.abs(g.embeddings - emb).max() < 0.02  # int8 storage
    vec = emb[7]
    top3 = np.sort(emb @ vec)[-3:].mean()
    assert g.reference(vec) == pytest.approx(top3, abs=0.02)
    assert g.best_labels(vec, 1) == ["c1"]
    (tmp_path / "bad.npz").write_bytes(b"not a gallery")
    with pytest.raises(InputError):
        read_gallery(tmp_path / "bad.npz")
    with pytest.raises(InputError):
        save_gallery(tmp_path / "empty.npz", np.zeros((0, 8)), [], "m@1", "empty")


def test_gallery_agreement_compares_scene_labels(tmp_path):
    """``g_agree``: regions whose nearest real scenes carry the query's label agree (1.0), regions
    that look like another kind of scene do not (0.0), a mix is in between; an unlabelled gallery
    offers no agreement."""
    from geosearch.refine.gallery import read_gallery, save_gallery

    rng = np.random.default_rng(3)
    centres = np.eye(8, dtype=np.float32)[:3]  # three well-separated kinds of scene
    emb = np.concatenate([c + 0.05 * rng.normal(size=(20, 8)) for c in centres]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = ["Pond"] * 20 + ["River"] * 20 + ["Lake"] * 20
    g = read_gallery(save_gallery(tmp_path / "m.gallery.npz", emb, labels, "m@1", "unit test"))
    assert g.labelled
    query = centres[0]
    votes, names = g.label_votes(np.stack([query, centres[1]]))
    assert names == ["Lake", "Pond", "River"] and votes.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert votes[0, names.index("Pond")] == pytest.approx(1.0)
    assert votes[1, names.index("River")] == pytest.approx(1.0)
    assert g.agreement(query, np.stack([centres[0]] * 3)) == pytest.approx(1.0)
    assert g.agreement(query, np.stack([centres[1], centres[2]])) == pytest.approx(0.0)
    assert g.agreement(query, np.stack([centres[0], centres[1]])) == pytest.approx(0.5)
    assert g.nearest_label(np.stack([centres[2], centres[0]])) == ["Lake", "Pond"]
    unlabelled = read_gallery(save_gallery(tmp_path / "u.gallery.npz", emb, [""] * 60, "m@1", "no labels"))
    assert not unlabelled.labelled
    # g_above: how many real scenes beat a score (the query's own 20 ponds score near 1, the rest ~0)
    assert g.share_above(query, 0.5) == pytest.approx(20 / 60, abs=1e-6)
    assert g.share_above(query, 1.01) == 0.0 and g.share_above(query, -1.01) == 1.0
    # g_image: regions that are images of ponds resemble the query's best real examples; rivers don't
    assert g.image_match(query, np.stack([centres[0]] * 2)) > 0.95
    assert g.image_match(query, np.stack([centres[1], centres[2]])) < 0.3


def test_gallery_refuses_other_splits(tmp_path):
    from geosearch.refine.gallery import build_gallery
    from geosearch.refine.testing import colour_model

    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"path": "a.png", "class": "A", "split": "test"}) + "\n")
    for split in ("test", "dev"):
        with pytest.raises(InputError, match="train split only"):
            build_gallery(colour_model(), str(manifest), split, out=tmp_path / "g.npz")


def test_abstention_uses_gallery_reference(square_index, tmp_path, monkeypatch):
    """With a gallery of real red and green scenes, the query's best regions are compared with what
    real examples score: "red" (present) reaches the reference, "blue" (absent) falls far short,
    and the reason says so."""
    from geosearch.refine import gallery as G

    index, _ = square_index
    model = index.model()
    emb = model.encode_images(
        np.concatenate([_solid((220, 40, 40), 12), _solid((60, 150, 60), 12), _solid((40, 40, 220), 12)])
    )
    G.save_gallery(
        tmp_path / "test-colour.gallery.npz",
        emb,
        ["red"] * 12 + ["green"] * 12 + ["blue"] * 12,
        model.model_id,
        "solid colours",
    )
    monkeypatch.setattr(G, "PACKAGED_DIR", tmp_path)
    monkeypatch.setattr(G, "_LOADED", {})
    present = run_method("segment", index, "red", 5).details["calibration_features"]
    absent = run_method("segment", index, "blue", 5).details["calibration_features"]
    assert "d_ref" in present and "d_ref1" in absent
    # one region per thing: the one red square reaches the reference; blue falls far short
    assert present["d_ref1"] > -0.1 and absent["d_ref1"] < present["d_ref1"] - 0.3
    assert present["d_ref"] <= present["d_ref1"]  # the mean of the best three, one of them the square
    # the red square's nearest real scenes are red like the query's; blue's best regions are not blue
    assert present["g_agree"] > absent["g_agree"] + 0.2 and absent["g_agree"] < 0.2
    # red's best regions look like real red scenes (image to image); blue's are not blue
    assert "g_above" in present and present["g_image"] > absent["g_image"]
    params = {"features": ["d_ref1"], "coef": [20.0], "intercept": 2.0, "threshold": 0.5, "calibrated": True}
    monkeypatch.setattr(calibrate, "load_calibration", lambda *a, **k: params)
    ans = run_method("answer", index, "a blue lake", 5)
    assert ans.abstained and "reference gallery" in ans.reason
    assert "look most like" in ans.reason and "real examples of the query like blue" in ans.reason
    # a label shared with the query is not given as what the regions look like instead
    r = calibrate.abstain_reason(0.2, 0.5, {"d_ref": -0.05}, ("Port", ["Port", "Bridge", "Bridge"]))
    assert "2 of the best 3 look most like Bridge scenes, real examples of the query like Port" in r
    assert "look most like" not in calibrate.abstain_reason(0.2, 0.5, {"d_ref": -0.05}, ("Port", ["Port"]))
    one = calibrate.abstain_reason(0.2, 0.5, {"d_ref": -0.05}, ("Port", ["Port", "Bridge"]))
    assert "1 of the best 2 looks most like Bridge scenes" in one
    assert one.startswith("not found: best region confidence 0.20 is below 0.50 (")
    # just under the threshold: enough decimals to tell them apart (not "0.81 is below 0.81")
    close = calibrate.abstain_reason(0.8061, 0.8099, {"d_ref": -0.035})
    assert close.startswith("not found: best region confidence 0.806 is below 0.810 (")
    beaten = calibrate.abstain_reason(0.2, 0.5, {"d_ref": -0.05, "g_above": 0.123})
    assert "and 12.3% of the gallery's real scenes score higher than they do" in beaten
    red = run_method("answer", index, "red", 5)
    assert not red.abstained and "scene-label agreement" in red.explanation
    assert "of real scenes score higher" in red.explanation and "image likeness" in red.explanation
    # a calibration on g_above: each lower region gets the g_above a best region that much lower
    # would have, and never falls slower than REGION_SLOPE
    by_share = {
        "features": ["g_above"],
        "coef": [-8.0],
        "intercept": 3.0,
        "threshold": 0.5,
        "calibrated": True,
    }
    monkeypatch.setattr(calibrate, "load_calibration", lambda *a, **k: by_share)
    ranked = run_method("segment", index, "red", 5).regions
    conf = [r.confidence for r in ranked]
    s = [r.details["features"]["s_region"] for r in ranked]
    assert len(conf) >= 2 and all(a >= b for a, b in zip(conf, conf[1:])) and conf[-1] < conf[0]
    logit = [np.log(c / (1 - c)) for c in conf]
    assert all(logit[0] - lo >= calibrate.REGION_SLOPE * (s[0] - si) - 1e-6 for lo, si in zip(logit, s))
    # a gallery embedded with other weights is never used
    G.save_gallery(
        tmp_path / "test-colour.gallery.npz", emb, ["x"] * 12, "test-colour@other", "other weights"
    )
    monkeypatch.setattr(G, "_LOADED", {})
    assert G.find_gallery("test-colour", "test-colour@1") is None


def test_cross_validation_leaves_each_bench_out(monkeypatch):
    """tune.cross_validate fits on the other benches and scores the one left out: a feature that
    separates absent from answerable queries everywhere scores 1.0 on every fold; one that
    separates them only on the training benches does not transfer, and the worst fold says so."""
    from geosearch.refine import tune

    rng = np.random.default_rng(0)

    def fake(d, names, options=None):
        y = np.r_[np.ones(40), np.zeros(10)]
        good = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 0.1, 50)
        # "local" separates the classes on benches a and b only (reversed on c)
        local = good * (-1.0 if d == "c" else 1.0)
        cols = {"good": good, "local": local}
        return np.column_stack([cols[n] for n in names]), y, y == 1

    monkeypatch.setattr(tune, "bench_features", fake)
    res = tune.cross_validate(["a", "b", "c"], [["good"], ["local"]], max_false=0.1)
    good = res["good@0.1"]
    assert [f["held_out"] for f in good["folds"]] == ["a", "b", "c"]
    assert good["mean_abstain_recall"] == 1.0 and good["worst_false_abstain_rate"] <= 0.1
    assert good["mean_answered_hit@10"] == 1.0 and res["chosen"] == "good@0.1"
    local = res["local@0.1"]
    assert local["worst_abstain_recall"] == 0.0  # fitted on a and b, it abstains on nothing absent in c
    assert {f["held_out"]: f["abstain_recall"] for f in local["folds"]}["c"] == 0.0


def test_calibration_choice_prefers_answering_what_the_ranking_found():
    """tune.choose: among candidates that abstain well enough (mean and worst fold), the one that
    answers the most right rankings wins, even over a higher abstain_recall; a candidate under the
    floors never does; without any candidate over the floors, the highest abstain_recall does."""
    from geosearch.refine import tune

    def cand(feats, ar, worst, far, answered):
        fold = {"abstain_recall": worst}
        return {
            "features": feats,
            "folds": [fold],
            "mean_abstain_recall": ar,
            "worst_abstain_recall": worst,
            "mean_false_abstain_rate": far,
            "mean_answered_hit@10": answered,
        }

    res = {
        "strict@0.1": cand(["a"], 0.95, 0.9, 0.1, 0.80),
        "lenient@0.05": cand(["a", "b"], 0.78, 0.65, 0.05, 0.89),
        "too-lenient@0.02": cand(["a"], 0.6, 0.3, 0.02, 0.92),
        "bad-worst@0.05": cand(["a"], 0.8, 0.4, 0.05, 0.91),
    }
    assert tune.choose(res) == "lenient@0.05"
    del res["lenient@0.05"], res["strict@0.1"]
    assert tune.choose(res) == "bad-worst@0.05"  # nothing over the floors: best recall at FAR <= 0.1


def test_agree_term_ranks_the_region_that_looks_like_the_querys_real_examples_first(
    square_index, tmp_path, monkeypatch
):
    """``w_agree``: a query between red and green, nearer red (its best gallery scenes are red).
    Region 0 sits nearer the query in score but looks green; region 1 is a red scene. With a
    gallery of red and green scenes, region 1 has s_agree 1 and region 0 has 0, so ``w_agree`` > 0
    puts the red one first. With ``w_agree`` 0, or no gallery, the score's order stands."""
    from geosearch.refine import gallery as G
    from geosearch.refine.rerank import RerankWeights, rerank

    index, _ = square_index
    model = index.model()
    red, green = model.encode_images(np.concatenate([_solid((220, 40, 40), 1), _solid((60, 150, 60), 1)]))

    def unit(v: np.ndarray) -> np.ndarray:
        return (v / np.linalg.norm(v)).astype(np.float32)

    vec = unit(0.52 * red + 0.48 * green)
    emb = np.stack([unit(0.45 * red + 0.55 * green), red])
    assert emb[0] @ vec > emb[1] @ vec  # region 0 scores higher

    def ranked(agree: float) -> dict[int, float]:
        cands = [
            Candidate(
                box(0, 0, 1, 1), box(0, 0, 1, 1), 0.5, (0, 0, 100, 100), scale_m=100.0, features={"i": i}
            )
            for i in range(2)
        ]
        out = rerank(
            index,
            cands,
            vec,
            weights=RerankWeights(agree=agree, source=0.0),
            embeddings=emb,
            context=emb @ vec,
        )
        return {int(c.features["i"]): c.features.get("s_agree") for c in out}  # best first

    monkeypatch.setattr(G, "PACKAGED_DIR", tmp_path)
    monkeypatch.setattr(G, "_LOADED", {})
    assert list(ranked(5.0)) == [0, 1]  # no gallery: s_agree 0, the score decides
    G.save_gallery(
        tmp_path / "test-colour.gallery.npz",
        model.encode_images(np.concatenate([_solid((220, 40, 40), 12), _solid((60, 150, 60), 12)])),
        ["red"] * 12 + ["green"] * 12,
        model.model_id,
        "solid colours",
    )
    monkeypatch.setattr(G, "_LOADED", {})
    unweighted = ranked(0.0)
    assert list(unweighted) == [0, 1] and unweighted == {0: None, 1: None}  # not computed, not shown
    out = ranked(5.0)
    assert list(out) == [1, 0] and out == {1: pytest.approx(1.0), 0: pytest.approx(0.0)}


def test_bad_chain_options_are_refused_before_any_work(square_index):
    """The engine checks per-call overrides itself (the Python API and every method, not only the
    CLI): a refused value raises InputError instead of failing mid-chain or passing silently."""
    index, _ = square_index
    for options in ({"pyramid_top_n": 0}, {"region_shape": "circle"}, {"w_size": "big"}, {"w_nope": 1.0}):
        with pytest.raises(InputError):
            run_method("answer", index, "red", 5, MethodContext(options=options))
    ans = run_method("segment", index, "red", 5, MethodContext(options={"pyramid_top_n": "2"}))
    assert ans.regions
