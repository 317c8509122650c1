"""Calibrated confidence and abstention.

Raw cosine scores mean different things for different queries and indexes, so each query's best
region is normalised twice before it is turned into a probability:

``z_index``    (s - mean) / std of the query's scores over *every tile of the index* (the same
               prompt vector; the tile-score distribution is computed once per prompt and index and
               cached);
``d_generic``  s minus the mean over :data:`~geosearch.refine.rerank.GENERIC_PROMPTS` ("an aerial
               image", ...) of their best tile score in this index (cached per index): how much
               better the query does than a prompt that matches anything;
``d_region``   s_region - s_generic at the region itself (specific vs generic at the same crop).

Query-level features (:func:`query_features`, no region needed): ``z_top`` (the best tile's
z-score), ``bank_count`` / ``bank_margin`` (the query is mapped to its nearest scene of
:data:`SCENE_BANK` in text space; how many tiles of the index are zero-shot classified as that
scene, and the best such tile's margin), ``bank_sim``, and, when the model has a reference gallery
(:mod:`geosearch.refine.gallery`), ``ref_top`` (what the query's best real examples score).
``d_ref`` (:func:`reference_gap`, set by the methods once the regions are refined) is the mean
own-extent score of the best regions minus ``ref_top``; ``g_agree``
(:meth:`~geosearch.refine.gallery.Gallery.agreement`, from the best regions' own-extent embeddings)
is how far their nearest real scenes carry the labels of the query's: ``d_ref`` asks whether the
best regions score like real examples, ``g_agree`` whether they look like the same kind of scene
(look-alikes score high but have other neighbours).

``confidence = sigmoid(b0 + b . x)`` over the features named in the fitted parameters, fitted by
logistic regression (L2, Newton steps) on the dev *tuning* benchmark only, with label 1 for
answerable queries and 0 for ``absent`` ones; lower-ranked regions get the top logit shifted by
``region_slope`` times their own-extent score gap to the best region. A query is
answered "not found" when its best region's confidence is below ``threshold`` (chosen on the same
tuning data, by leave-one-bench-out cross-validation, for a false-abstain budget). Region features
alone reached abstain_recall 0.28 (false_abstain_rate <= 0.15) and ``bank_count`` 0.56 on one
tuning benchmark but 0.28 on the reported one. ``g_above`` (:func:`gallery_rank_features`) is the
share of gallery scenes that score above the best regions and ``g_image`` their image-to-image
likeness to the query's best real examples; the fitted starter calibration uses ``g_agree``,
``g_above`` and ``g_image`` (leave-one-bench-out over nine dev benches, chosen for the most
answerable queries answered with a right region; docs/refinement.md).
Fitted values live in ``calibration.json`` next to this module, with
a note of the data and model that fitted them; for another model the hand-set fallback
:data:`FALLBACK` is used and marked as uncalibrated.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geosearch.fileio import atomic_write_text
from geosearch.index import TileIndex
from geosearch.refine.gallery import Gallery, index_gallery
from geosearch.refine.rerank import GENERIC_PROMPTS

CALIBRATION_PATH = Path(__file__).parent / "calibration.json"
FEATURES = ["z_index", "d_generic", "d_region"]
FALLBACK = {
    "model": None,
    "features": FEATURES,
    "coef": [0.8, 4.0, 4.0],
    "intercept": -3.0,
    "threshold": 0.5,
    "fitted_on": "hand-set fallback (not fitted)",
}


@dataclass
class IndexStats:
    """Per-index score statistics used to normalise query scores."""

    generic_top: float  # mean over generic prompts of their best tile score
    generic_mean: float  # mean tile score of the generic prompts
    _prompt_cache: OrderedDict  # prompt vector key -> (mean, std, max)

    def prompt_stats(self, index: TileIndex, vec: np.ndarray) -> tuple[float, float, float]:
        key = vec.astype(np.float32).tobytes()
        hit = self._prompt_cache.get(key)
        if hit is not None:
            self._prompt_cache.move_to_end(key)
            return hit
        s = index.embeddings @ vec.astype(np.float32)
        out = (float(s.mean()), float(s.std() + 1e-6), float(s.max()))
        self._prompt_cache[key] = out
        if len(self._prompt_cache) > 512:
            self._prompt_cache.popitem(last=False)
        return out


_STATS: dict[tuple[str, str, int], IndexStats] = {}


def index_stats(index: TileIndex) -> IndexStats:
    """Score statistics of the generic prompts over the index (computed once per index)."""
    key = (str(index.path), str(index.meta.get("model_id")), len(index))
    st = _STATS.get(key)
    if st is None:
        g = index.text_model().encode_text(GENERIC_PROMPTS)
        s = index.embeddings @ g.T
        st = IndexStats(float(s.max(axis=0).mean()), float(s.mean()), OrderedDict())
        _STATS[key] = st
    return st


def load_calibration(
    model_name: str | None = None, path: Path = CALIBRATION_PATH, model_id: str | None = None
) -> dict:
    """Fitted parameters for ``model_name`` (or the fallback, marked ``calibrated: false``). With
    ``model_id``, a fit recorded for other embeddings of that name (other weights, other image
    views) is not used: its features would come from another space."""
    if path.is_file():
        data = json.loads(path.read_text())
        entry = data.get("models", {}).get(model_name or "")
        if entry and (model_id is None or entry.get("model_id") in (None, model_id)):
            return {**entry, "calibrated": True}
    return {**FALLBACK, "calibrated": False}


# A general remote-sensing scene vocabulary (land cover, facilities, objects): the query is mapped to
# its nearest scene in text space, and the index is asked whether any tile looks more like that
# scene than like every other one (zero-shot tile classification, computed once per index).
SCENE_BANK: list[str] = [
    "airport",
    "runway",
    "bare land",
    "baseball field",
    "beach",
    "bridge",
    "city center",
    "church",
    "commercial area",
    "dense residential area",
    "desert",
    "farmland",
    "forest",
    "industrial area",
    "meadow",
    "medium residential area",
    "mountain",
    "park",
    "parking lot",
    "playground",
    "pond",
    "lake",
    "port",
    "harbour with boats",
    "railway station",
    "resort",
    "river",
    "school",
    "sparse residential area",
    "square",
    "stadium",
    "storage tanks",
    "viaduct",
    "highway",
    "golf course",
    "tennis court",
    "greenhouses",
    "snow",
    "cloud",
    "sea",
    "island",
    "wetland",
    "quarry",
    "solar panels",
    "construction site",
    "cemetery",
]


def _bank(index: TileIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bank text vectors, per-tile argmax over the bank, per-tile margin of that argmax); cached."""
    key = ("bank", str(index.path), str(index.meta.get("model_id")), len(index))
    hit = _BANK.get(key)
    if hit is None:
        b = index.text_model().encode_text([f"an aerial image of a {x}" for x in SCENE_BANK])
        s = index.embeddings @ b.T
        arg = s.argmax(axis=1)
        top2 = np.sort(s, axis=1)[:, -2:]
        hit = (b, arg, top2[:, 1] - top2[:, 0])
        _BANK[key] = hit
    return hit


_BANK: dict = {}


def query_features(index: TileIndex, vec: np.ndarray) -> dict:
    """Query-level features (no region needed): ``z_top`` (best tile's z-score for the query),
    ``bank_count`` (log1p of the tiles whose nearest bank scene is the query's nearest one),
    ``bank_margin`` (best such tile's margin over its second scene, or minus the smallest gap to
    it), ``bank_sim`` (text similarity of the query to its nearest bank scene)."""
    st = index_stats(index)
    mean, std, top = st.prompt_stats(index, vec)
    b, arg, margin = _bank(index)
    tsim = b @ vec
    j = int(tsim.argmax())
    mine = arg == j
    if mine.any():
        bm = float(margin[mine].max())
    else:
        s = index.embeddings @ b.T
        bm = -float((s.max(axis=1) - s[:, j]).min())
    out = {
        "z_top": (top - mean) / std,
        "bank_count": float(np.log1p(mine.sum())),
        "bank_margin": bm,
        "bank_sim": float(tsim[j]),
    }
    gal = index_gallery(index)
    if gal is not None:
        out["ref_top"] = gal.reference(vec)
    return out


REGION_SLOPE = 10.0  # confidence of lower regions: logit shifted by 10 x their score gap to the top one


def region_slope(params: dict) -> float:
    """How fast a lower region's confidence (logit) falls with its own-extent score gap to the best
    one: the calibration's fitted ``region_slope`` (chosen for "find all" answers on the dev
    benches, :func:`geosearch.refine.tune.fit_region_slope`) when it has one; else the fitted
    coefficient of the gallery gap (``d_ref*``), so that a region scoring like the best region
    minus x is as sure as a best region x lower would be; else :data:`REGION_SLOPE`."""
    if params.get("region_slope") is not None:
        return float(params["region_slope"])
    for name, coef in zip(params.get("features", []), params.get("coef", [])):
        if str(name).startswith("d_ref") and float(coef) > 0:
            return float(coef)
    return REGION_SLOPE


REF_REGIONS = 3  # d_ref compares the mean own-extent score of this many best regions to the gallery
IMAGE_REGIONS = 5  # g_image compares this many best regions' images with the query's real examples


def reference_gap(s_regions: list[float], query_feats: dict, n: int = REF_REGIONS) -> float | None:
    """``d_ref``: mean own-extent score of the best ``n`` regions minus the gallery reference of
        the query (``None`` without a gallery or regions); ``d_ref1`` / ``d_ref5`` are the same for the
    best one / five."""
    ref = query_feats.get("ref_top")
    if ref is None or not s_regions:
        return None
    best = sorted(s_regions, reverse=True)[:n]
    return float(np.mean(best) - ref)


def _labelled_gallery(index: TileIndex, embeddings: np.ndarray | None) -> Gallery | None:
    """The index model's gallery when it is labelled and there are region embeddings to compare."""
    if embeddings is None or not len(embeddings):
        return None
    return index_gallery(index, labelled=True)


def gallery_rank_features(
    index: TileIndex, vec: np.ndarray, s_regions: list[float], embeddings: np.ndarray | None
) -> dict:
    """``g_above`` (share of gallery scenes scoring above the mean own-extent score of the best
    :data:`REF_REGIONS` regions) and ``g_image`` (the best :data:`IMAGE_REGIONS` regions' image
    similarity to the query's best real examples); empty without a gallery."""
    gal = index_gallery(index)
    out: dict = {}
    if gal is None:
        return out
    if s_regions:
        out["g_above"] = gal.share_above(vec, float(np.mean(sorted(s_regions, reverse=True)[:REF_REGIONS])))
    if embeddings is not None and len(embeddings):
        out["g_image"] = gal.image_match(vec, np.asarray(embeddings, np.float32)[:IMAGE_REGIONS])
    return out


def gallery_agreement(index: TileIndex, vec: np.ndarray, embeddings: np.ndarray | None) -> float | None:
    """``g_agree`` of the best :data:`REF_REGIONS` regions (``None`` without a labelled gallery or
    region embeddings)."""
    gal = _labelled_gallery(index, embeddings)
    return None if gal is None else gal.agreement(vec, np.asarray(embeddings, np.float32)[:REF_REGIONS])


def region_confidences(
    index: TileIndex,
    vec: np.ndarray,
    regions: list[tuple[float, float | None]],
    params: dict,
    query_feats: dict | None = None,
    all_scores: list[float] | None = None,
    embeddings: np.ndarray | None = None,
) -> tuple[list[float], dict]:
    """Calibrated confidence of ranked regions, given each one's own-extent score and (or ``None``)
    the generic prompts' score at the same crop. The query-level logit (fitted features, including
    ``d_ref`` from the best own-extent scores among ``all_scores``, default the regions' own, and
    ``g_agree`` from ``embeddings``, the own-extent embeddings of the best regions, best first) is
    shifted by :func:`region_slope` times each region's score gap to the first region. Returns the
    confidences and the features of the first region (query-level + region-level)."""
    qf = dict(query_feats) if query_feats is not None else query_features(index, vec)
    scores = list(all_scores) if all_scores is not None else [r[0] for r in regions]
    d_ref = reference_gap(scores, qf)
    if d_ref is not None:
        qf["d_ref"] = d_ref
        qf["d_ref1"] = reference_gap(scores, qf, 1)
        qf["d_ref5"] = reference_gap(scores, qf, 5)
    agree = gallery_agreement(index, vec, embeddings)
    if agree is not None:
        qf["g_agree"] = agree
    qf.update(gallery_rank_features(index, vec, scores, embeddings))
    if not regions:
        return [], qf
    s_top = float(regions[0][0])
    slope = region_slope(params)
    confs, best = [], qf
    for rank, (s_reg, s_gen) in enumerate(regions):
        feats = {**qf, **features_for(index, vec, float(s_reg), s_gen)}
        p = confidence(feats, params)
        logit = np.log(max(p, 1e-12) / max(1 - p, 1e-12)) + slope * min(0.0, float(s_reg) - s_top)
        confs.append(float(1 / (1 + np.exp(-logit))))
        if rank == 0:
            best = feats
    return confs, best


def scene_labels(
    index: TileIndex, vec: np.ndarray, embeddings: np.ndarray | None
) -> tuple[str, list[str]] | None:
    """The gallery label nearest the query and those nearest each of the best regions (what
    ``g_agree`` compares), for the "not found" sentence; ``None`` without a labelled gallery."""
    gal = _labelled_gallery(index, embeddings)
    if gal is None:
        return None
    labels = gal.nearest_label(np.vstack([np.asarray(vec, np.float32)[None], embeddings[:REF_REGIONS]]))
    return labels[0], labels[1:]


def _distinct(a: float, b: float) -> tuple[str, str]:
    """``a`` and ``b`` with 2 decimals, or as many more (up to 4) as it takes to tell them apart:
    a confidence just under the threshold must not read "0.81 is below 0.81"."""
    for places in (2, 3, 4):
        sa, sb = f"{a:.{places}f}", f"{b:.{places}f}"
        if sa != sb:
            break
    return sa, sb


def abstain_reason(
    best: float | None, thr: float, f: dict, labels: tuple[str, list[str]] | None = None
) -> str:
    """The "not found" sentence: by how much the best regions fall short of the gallery's real
    examples and what real scenes they look like instead (or, without a gallery, how they compare
    with the index and generic prompts)."""
    conf, limit = _distinct(0.0 if best is None else best, thr)
    head = f"not found: best region confidence {conf} is below {limit}"
    look = ""
    others = [x for x in labels[1] if x != labels[0]] if labels is not None else []
    if labels is not None and others:
        seen = ", ".join(dict.fromkeys(others))
        who = (
            "they look"
            if len(others) == len(labels[1])
            else f"{len(others)} of the best {len(labels[1])} look{'s' if len(others) == 1 else ''}"
        )
        look = f"; {who} most like {seen} scenes, real examples of the query like {labels[0]}"
    if "d_ref" in f:
        beaten = (
            f", and {f['g_above']:.1%} of the gallery's real scenes score higher than they do"
            if "g_above" in f
            else ""
        )
        return (
            f"{head} (the best regions score {-f['d_ref']:.3f} below what real examples of the query "
            f"score in the reference gallery{beaten}{look})"
            if f["d_ref"] < 0
            else f"{head} (the best regions score {f['d_ref']:.3f} above the gallery's real examples, "
            f"which is still too little for this query{beaten}{look})"
        )
    return (
        f"{head} (its score is {f.get('z_index', 0):.1f} SD above this index's tile scores for the query "
        f"and {f.get('d_generic', 0):+.3f} vs generic aerial prompts)"
    )


def features_for(index: TileIndex, vec: np.ndarray, s_region: float, s_generic: float | None) -> dict:
    st = index_stats(index)
    mean, std, _ = st.prompt_stats(index, vec)
    return {
        "z_index": (s_region - mean) / std,
        "d_generic": s_region - st.generic_top,
        "d_region": 0.0 if s_generic is None else s_region - s_generic,
    }


def confidence(feats: dict, params: dict) -> float:
    x = np.array([feats.get(f, 0.0) for f in params["features"]], float)
    z = float(params["intercept"] + np.dot(params["coef"], x))
    return float(1.0 / (1.0 + np.exp(-np.clip(z, -50, 50))))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 50) -> tuple[np.ndarray, float]:
    """Logistic regression by Newton steps on standardised features; returns (coef, intercept) in
    the original feature units."""
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-9
    xs = np.column_stack([np.ones(len(x)), (x - mu) / sd])
    w = np.zeros(xs.shape[1])
    reg = np.eye(len(w)) * l2
    reg[0, 0] = 0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-xs @ w))
        g = xs.T @ (p - y) + reg @ w
        h = (xs * (p * (1 - p))[:, None]).T @ xs + reg
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    coef = w[1:] / sd
    return coef, float(w[0] - np.dot(coef, mu))


def tradeoff(
    conf_answerable: np.ndarray, conf_absent: np.ndarray, thresholds: np.ndarray | None = None
) -> list[dict]:
    """abstain_recall and false_abstain_rate for each threshold (abstain when conf < t)."""
    if thresholds is None:
        thresholds = np.unique(np.concatenate([conf_answerable, conf_absent, [0.0, 1.0]]))
    return [
        {
            "threshold": float(t),
            "abstain_recall": float(np.mean(conf_absent < t)) if len(conf_absent) else 0.0,
            "false_abstain_rate": float(np.mean(conf_answerable < t)) if len(conf_answerable) else 0.0,
        }
        for t in thresholds
    ]


def choose_threshold(conf_answerable: np.ndarray, conf_absent: np.ndarray, max_false: float = 0.15) -> float:
    """The threshold with the best abstain recall whose false-abstain rate stays <= ``max_false``
    (midway to the next confidence value, for a margin)."""
    curve = tradeoff(conf_answerable, conf_absent)
    ok = [c for c in curve if c["false_abstain_rate"] <= max_false]
    best = max(ok, key=lambda c: (c["abstain_recall"], -c["false_abstain_rate"], -c["threshold"]))
    t = best["threshold"]
    below = conf_answerable[conf_answerable < t]
    lower = float(below.max()) if len(below) else 0.0
    absent_ok = conf_absent[conf_absent < t]
    top_abs = float(absent_ok.max()) if len(absent_ok) else lower
    return float((max(lower, top_abs) + t) / 2)


def save_calibration(model_name: str, params: dict, path: Path = CALIBRATION_PATH) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {"models": {}}
    data.setdefault("models", {})[model_name] = params
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")  # never a half-written calibration file
