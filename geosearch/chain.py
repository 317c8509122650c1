"""The answering chain: the one path from a question in words to ranked regions or "not found".

    parse -> retrieve (coarse + pyramid) -> refine (segment, rescore, merge) -> relate -> calibrate / abstain -> explain

Each stage is a plain function over one query type (:class:`Query`) and the engine's candidate
and region types. :func:`answer` runs them all; it is the registered method ``answer`` (what
``geosearch eval`` scores by default) and what ``geosearch ask``, the MCP ``answer`` tool and the
Python API serve. The LLM planner picks regions with the step-by-step tools and hands them to
:func:`finish` (relate -> calibrate -> explain), so an LLM answer is calibrated like this one.
The component methods ``pyramid`` and ``segment`` are ablations built from the same stages
(``coarse`` and ``single-scale`` live in :mod:`geosearch.pipeline`).

Every constant of the chain is a field of :class:`~geosearch.settings.Settings`
(:data:`~geosearch.settings.CHAIN_FIELDS`); ``MethodContext.options`` overrides them by name.
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from shapely.geometry import box

from geosearch.errors import InputError
from geosearch.geo import to_wgs84
from geosearch.index import TileIndex
from geosearch.pipeline import Answer, MethodContext, Region, not_found_sentence, register_method
from geosearch.query import ParsedQuery, parse_query
from geosearch.refine import calibrate as cal
from geosearch.refine.common import query_vector
from geosearch.refine.flags import add_flags
from geosearch.refine.heatmap import Candidate
from geosearch.refine.proposed import proposal_candidates
from geosearch.refine.pyramid import PyramidResult, pyramid_search
from geosearch.refine.regions import refine_candidates, window_candidates
from geosearch.refine.rerank import negative_prompts, rerank
from geosearch.refine.vocabulary import check_vocabulary
from geosearch.relations.apply import FLAG_NOT_CHECKABLE, RelationReport, apply_relations
from geosearch.settings import CHAIN_FIELDS, Settings, check_options, get_settings

FLAG_INCOMPLETE = "index_incomplete"
FLAG_BELOW = "below_threshold"  # a lower region whose own confidence is under the abstention threshold
FIND_ALL_K = 100  # regions considered for a "find all" query (those above the threshold are kept)

STAGES = ("parse", "retrieve", "refine", "relate", "calibrate", "explain")
ProgressFn = Callable[[float, float | None, str | None], None]


# --- the query --------------------------------------------------------------------------------
@dataclass
class Query:
    """A parsed question, with what the user gave besides the words."""

    text: str
    parsed: ParsedQuery
    k: int = 10
    area: Any = None  # shapely geometry in EPSG:4326, or None
    look_for: str = ""  # the text embedded for the image model
    negatives: list[str] = field(default_factory=list)  # negative prompts (exclusions + hard negatives)

    @property
    def relations(self):
        return [r for r in self.parsed.relations if r.layer]


def chain_config(settings: Settings | None = None, options: dict | None = None) -> dict:
    """The chain's constants: the Settings fields, overridden by per-call ``options`` of the same
    name (and ``w_<name>`` rerank weights)."""
    st = settings or get_settings()
    cfg: dict[str, Any] = {name: getattr(st, name) for name in CHAIN_FIELDS}
    for key, value in check_options(options).items():
        if key in cfg or key.startswith("w_"):
            cfg[key] = value
    return cfg


def parse(
    text: str, *, k: int = 10, area=None, exclude: Sequence[str] = (), parsed: ParsedQuery | None = None
) -> Query:
    """Stage 1: the words -> targets, relations, time, exclusions (rules, or a given LLM parse)."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("empty query: give some words to search for")
    if not 1 <= int(k) <= 100:
        raise InputError(f"k must be between 1 and 100 (got {k})")
    parsed = parsed or parse_query(text)
    if parsed.find_all:  # every instance above the abstention threshold, not only the best k
        k = FIND_ALL_K
    look = parsed.look_for()
    exclusions = list(dict.fromkeys([*parsed.exclusions, *exclude]))
    return Query(
        text=text,
        parsed=parsed,
        k=int(k),
        area=area,
        look_for=look,
        negatives=negative_prompts(look, exclusions),
    )


# --- retrieve ---------------------------------------------------------------------------------
@dataclass
class Retrieval:
    vector: np.ndarray
    pyramid: PyramidResult
    notes: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # flags for every region (e.g. time_not_matched)
    dates: list[str] | None = None  # the dates the query may answer from (None: all)


def tile_mask(index: TileIndex, q: Query) -> tuple[np.ndarray | None, list[str], list[str]]:
    """Tiles the query may answer from: inside its area and of the dates its time names. Returns
    (mask or None, notes, flags)."""
    mask = None
    notes: list[str] = []
    flags: list[str] = []
    if q.area is not None:
        from geosearch.search import area_mask

        mask = area_mask(index, q.area, "EPSG:4326")
    t = q.parsed.time
    dates = [d for d in index.date_list if d]
    if t.constrains and t.change is None:
        if len(dates) <= 1:
            notes.append(
                "the index holds one date"
                + (f" ({dates[0]})" if dates else "")
                + ": the query's time is not used to choose tiles"
            )
        else:
            chosen = [d for d in dates if t.matches(d)]
            if chosen:
                dm = np.isin(index.dates, chosen)
                mask = dm if mask is None else mask & dm
                notes.append(f"tiles dated {', '.join(chosen)} (the query's time: {t.phrase})")
            else:
                notes.append(f"no tiles match the query's time ({t.phrase}); all dates searched")
                flags.append("time_not_matched")
    if mask is not None and not mask.any():
        raise InputError("no tile of the index lies in the query's area and time")
    return mask, notes, flags


def retrieve(index: TileIndex, q: Query, cfg: dict, *, zoom: bool | None = None) -> Retrieval:
    """Stage 2: coarse search over the tile index (restricted to the query's area and dates), then
    the coarse-to-fine pyramid over the best distinct tiles when refinement needs its windows
    (``zoom``; default: unless the index's region proposals are ranked on their own)."""
    vec = query_vector(index, [q.look_for])
    mask, notes, flags = tile_mask(index, q)
    if zoom is None:
        zoom = not _from_proposals(index, cfg) or bool(cfg["proposal_pyramid"])
    pr = pyramid_search(
        index,
        vec,
        _pool_size(q, cfg),
        top_n=int(cfg["pyramid_top_n"]),
        depth=int(cfg["pyramid_depth"]) if zoom else 0,
        budget=int(cfg["pyramid_budget"]) if zoom else 0,
        keep=int(cfg["pyramid_keep"]),
        mask=mask,
        context=float(cfg["search_context"]),
    )
    dates = sorted({str(d) for d in index.dates[mask]}) if mask is not None and index.date_list else None
    return Retrieval(vec, pr, notes, flags, dates)


def _from_proposals(index: TileIndex, cfg: dict) -> bool:
    """Whether refinement ranks the index's stored region proposals (built with them, and on)."""
    return bool(cfg["use_proposals"]) and index.proposals() is not None


def _pool_size(q: Query, cfg: dict) -> int:
    """Candidates kept through refinement: more when relations may drop some."""
    return q.k * int(cfg["relation_pool"]) if q.relations else q.k


# --- refine -----------------------------------------------------------------------------------
def refine(index: TileIndex, q: Query, r: Retrieval, cfg: dict, *, segment: bool = True) -> list[Candidate]:
    """Stage 3: region candidates at their own extent, best first: the index's region proposals
    over the whole mosaic (one per thing), and/or segmentation inside the pyramid's windows with
    rescoring and merging; with ``segment=False`` the pyramid's best windows (the ``pyramid``
    ablation)."""
    n = _pool_size(q, cfg)
    if not segment:
        cands = window_candidates(index, r.pyramid, n)
    elif _from_proposals(index, cfg):
        cands = proposal_candidates(index, r.vector, q.negatives, cfg, area=q.area, dates=r.dates)
        if cfg["proposal_pyramid"]:
            cands = _merge_sources(
                cands, refine_candidates(index, r.pyramid, r.vector, q.negatives, n, cfg), cfg
            )
    else:
        cands = refine_candidates(index, r.pyramid, r.vector, q.negatives, n, cfg)
    if q.area is not None:
        cands = [c for c in cands if c.polygon_wgs84.intersects(q.area)]
    return cands


def _merge_sources(a: list[Candidate], b: list[Candidate], cfg: dict) -> list[Candidate]:
    """Two candidate lists as one, best first, one region per thing (box NMS)."""
    from geosearch.geo import nms_boxes

    both = sorted(a + b, key=lambda c: -c.score)
    keep = nms_boxes(
        np.array([c.bbox_map for c in both], float).reshape(-1, 4), len(both), float(cfg["proposal_nms_iou"])
    )
    return [both[i] for i in keep]


# --- relate -----------------------------------------------------------------------------------
def relate(
    index: TileIndex, q: Query, cands: Sequence[Candidate], layers_dir: str | None = None
) -> RelationReport:
    """Stage 4: the query's relations checked on the vector layers (the benchmark's ``layers_dir``,
    or the index's own layers). No relation in the query: nothing is opened."""
    if not q.relations or not cands:
        return RelationReport(results={})
    from geosearch.relations.apply import layers_connection

    with layers_connection(index.path, layers_dir) as con:
        return apply_relations(
            con, [(_cid(i), c.polygon_wgs84) for i, c in enumerate(cands)], q.relations, q.parsed.time
        )


def _cid(i: int) -> str:
    return f"c{i}"


# --- calibrate / abstain ----------------------------------------------------------------------
def own_extent_scores(index: TileIndex, q: Query, vec: np.ndarray, cands: list[Candidate]) -> None:
    """Give candidates that lack one (e.g. picked by an LLM) their own-extent score, the way
    refinement scores its own (:func:`geosearch.refine.rerank.rerank`)."""
    todo = [c for c in cands if "s_region" not in c.features]
    if todo:
        rerank(index, todo, vec, negatives=q.negatives)


def to_region(index: TileIndex, c: Candidate, region_id: str, conf: float | None, shape: str) -> Region:
    geom84 = c.polygon_wgs84 if shape == "polygon" else to_wgs84(box(*c.bbox_map), index.crs)
    feats = {k: round(float(v), 5) for k, v in c.features.items() if isinstance(v, (int, float))}
    return Region(
        region_id=region_id,
        polygon_wgs84=geom84,
        score=float(c.score),
        confidence=conf,
        scale_m=None if c.scale_m is None else round(float(c.scale_m), 3),
        evidence_tiles=list(c.evidence_tiles),
        flags=list(c.flags),
        details={"bbox_map": [round(v, 3) for v in c.bbox_map], "merged": c.merged, "features": feats},
    )


def calibrate(
    index: TileIndex,
    q: Query,
    vec: np.ndarray,
    cands: list[Candidate],
    report: RelationReport,
    cfg: dict,
    method: str = "answer",
    *,
    abstain: bool = True,
    threshold: float | None = None,
) -> Answer:
    """Stage 5: candidates that fail a relation become near-misses; the rest get calibrated
    confidences (gallery reference ``d_ref`` from their own-extent scores); the answer abstains
    when the best confidence is below the fitted threshold, or when nothing survives."""
    keyed = [(_cid(i), c) for i, c in enumerate(cands)]  # the ids relate() checked them under
    for key, c in keyed:
        c.flags = sorted(set(c.flags) | set(report.flags(key)))
    passed = [(key, c) for key, c in keyed if report.holds(key)]
    failed = [(key, c) for key, c in keyed if not report.holds(key)]
    top = passed[: q.k]
    params = cal.load_calibration(index.meta.get("model_name"), model_id=index.meta.get("model_id"))
    s_all = [float(c.features.get("s_region", c.score)) for _, c in passed if not c.features.get("fill")]
    embs = [c.embedding for _, c in passed if not c.features.get("fill") and c.embedding is not None]
    best_embs = np.stack(embs[: max(cal.REF_REGIONS, cal.IMAGE_REGIONS)]) if embs else None
    gen = [c.features.get("s_generic") for _, c in top]
    confs, best_feats = cal.region_confidences(
        index,
        vec,
        [
            (float(c.features.get("s_region", c.score)), None if g is None else float(g))
            for (_, c), g in zip(top, gen)
        ],
        params,
        all_scores=s_all,
        embeddings=best_embs,
    )

    def region(key: str, c: Candidate, region_id: str, conf: float | None) -> Region:
        reg = to_region(index, c, region_id, conf, cfg["region_shape"])
        reg.details["relations"] = [{**r, "region_id": region_id} for r in report.results.get(key, [])]
        return reg

    regions = [region(key, c, f"{method}-{r}", conf) for r, ((key, c), conf) in enumerate(zip(top, confs), 1)]
    near = [
        region(key, c, f"{method}-near-{i}", None)
        for i, (key, c) in enumerate(failed[: int(cfg["max_near_misses"])], 1)
    ]
    thr = float(params["threshold"] if threshold is None else threshold)
    details = {
        "calibrated": bool(params.get("calibrated", False)),
        "calibration_features": {k: round(float(v), 5) for k, v in best_feats.items()},
        "relations_checked": report.checked,
        "relations_unchecked": report.unchecked,
        "relations_failed": len(failed),  # every candidate that failed, not only those shown
    }
    ans = Answer(q.text, method, regions, near_misses=near, details=details)
    if not abstain:
        return ans
    details["abstain_threshold"] = thr
    vocab = check_vocabulary(index, q.look_for)
    if vocab is not None:
        details["vocabulary"] = vocab.as_dict()
    best = regions[0].confidence if regions else None
    # the confidence the threshold decides on; None where something else decides (an unknown
    # word, nothing left after the relations): eval's abstention curve sweeps the threshold
    details["best_confidence"] = None if (vocab is not None and vocab.unknown) or best is None else best
    if vocab is not None and vocab.unknown:  # nothing like it in what the model knows
        ans.abstained = True
        ans.reason = vocab.reason(q.look_for)
    elif not regions:
        ans.abstained = True
        ans.reason = (
            "not found: no candidate satisfies the query's relations (" + "; ".join(report.checked) + ")"
            if failed
            else "not found: no region of the index matches the query"
        )
    elif best is None or best < thr:
        ans.abstained = True
        ans.reason = cal.abstain_reason(best, thr, best_feats, cal.scene_labels(index, vec, best_embs))
    if ans.abstained:
        ans.near_misses = (regions + near)[: max(int(cfg["max_near_misses"]), len(near))]
        ans.regions = []
    elif q.parsed.find_all:  # every instance: the regions the calibration would answer with
        ans.regions = [r for r in regions if r.confidence is not None and r.confidence >= thr]
        details["find_all"] = len(ans.regions)
    else:  # the best region passed; the others are listed, and say when they alone would not
        for r in ans.regions[1:]:
            if r.confidence is not None and r.confidence < thr and FLAG_BELOW not in r.flags:
                r.flags = sorted([*r.flags, FLAG_BELOW])
    return ans


# --- explain ----------------------------------------------------------------------------------
def explain(q: Query, ans: Answer) -> str:
    """Stage 6: a short account of the answer from what the chain measured (no re-embedding)."""
    f = ans.details.get("calibration_features", {})
    shown = ans.regions or ans.near_misses
    lines = []
    if ans.abstained:
        lines.append(not_found_sentence(q.text, ans.reason))
    if shown:
        b = shown[0]
        s = b.details.get("features", {}).get("s_region", b.score)
        conf = "" if b.confidence is None else f", confidence {b.confidence:.2f}"
        lines.append(
            f'{"Best near-miss" if ans.abstained else "Best region"} for "{q.look_for}": {b.region_id}, '
            f"own-extent score "
            f"{s:.3f}{conf}"
            + (
                f" (d_ref {f['d_ref']:+.3f} against the reference gallery"
                + (f"; scene-label agreement {f['g_agree']:.2f}" if "g_agree" in f else "")
                + (f"; {f['g_above']:.1%} of real scenes score higher" if "g_above" in f else "")
                + (f"; image likeness to real examples {f['g_image']:.2f}" if "g_image" in f else "")
                + ")"
                if "d_ref" in f
                else ""
            )
            + "."
        )
        if len(ans.regions) > 1:
            lines.append(f"{len(ans.regions)} regions returned, best first.")
    if q.parsed.exclusions:
        lines.append(f"Pushed away from {', '.join(q.parsed.exclusions)}.")
    checked, unchecked = ans.details.get("relations_checked", []), ans.details.get("relations_unchecked", [])
    if checked:
        shown = sum(1 for r in ans.near_misses if "relation_failed" in r.flags)
        n_fail = max(int(ans.details.get("relations_failed", 0)), shown)
        lines.append(
            f"Relations checked on vector layers: {', '.join(checked)}"
            + (
                f"; {n_fail} candidate(s) failed them"
                + (f", the best {shown} shown as near-misses" if shown < n_fail else " and are near-misses")
                if n_fail
                else ""
            )
            + "."
        )
    if unchecked:
        lines.append("Not checkable: " + "; ".join(unchecked[:3]) + ".")
    for note in ans.details.get("notes", []):
        lines.append(note[0].upper() + note[1:] + ".")
    if not ans.details.get("calibrated", True):
        lines.append("Confidences are uncalibrated for this model (no fitted calibration).")
    return " ".join(lines)


# --- the whole chain --------------------------------------------------------------------------
def finish(
    index: TileIndex,
    q: Query,
    vec: np.ndarray,
    cands: list[Candidate],
    cfg: dict,
    *,
    layers_dir: str | None = None,
    method: str = "answer",
    retrieval: Retrieval | None = None,
    abstain: bool = True,
    with_explanation: bool = True,
    threshold: float | None = None,
    progress: ProgressFn | None = None,
) -> Answer:
    """relate -> calibrate / abstain -> explain, for candidates from refinement or from an LLM."""
    _report(progress, 3, "checking relations")
    own_extent_scores(index, q, vec, cands)
    cands.sort(key=lambda c: -c.score)
    report = relate(index, q, cands, layers_dir)
    _report(progress, 4, "calibrating")
    ans = calibrate(index, q, vec, cands, report, cfg, method, abstain=abstain, threshold=threshold)
    if retrieval is not None:
        for reg in ans.regions + ans.near_misses:
            reg.flags = sorted(set(reg.flags) | set(retrieval.flags))
        ans.details["notes"] = list(retrieval.notes) + report.notes
    else:
        ans.details["notes"] = list(report.notes)
    if q.relations and not report.checked and not report.unchecked:
        ans.details["relations_unchecked"] = [r.phrase or r.predicate for r in q.relations]
    ans.details["look_for"] = q.look_for
    ans.details["negatives"] = q.negatives
    ans.details["provenance"] = index.provenance()
    if not index.complete:  # a build that was stopped: never served as if it were whole
        for reg in ans.regions + ans.near_misses:
            if FLAG_INCOMPLETE not in reg.flags:
                reg.flags.append(FLAG_INCOMPLETE)
        ans.details["notes"] = [*ans.details.get("notes", []), index.incomplete_note()]
    if with_explanation:
        _report(progress, 5, "explaining")
        ans.explanation = explain(q, ans)
    _report(progress, 6, "done")
    return ans


def _report(progress: ProgressFn | None, step: int, message: str) -> None:
    if progress is not None:
        try:
            progress(step, len(STAGES), message)
        except Exception:  # noqa: BLE001 - progress must never break the chain
            pass


_CACHE: OrderedDict = OrderedDict()  # retrieval + refinement of identical calls (tuning, repeats)


def _refined(index: TileIndex, q: Query, cfg: dict, segment: bool) -> tuple[Retrieval, list[Candidate], int]:
    area = None if q.area is None else shapely.to_wkb(q.area, hex=True)
    key = (
        str(index.path),
        str(index.meta.get("model_id")),
        len(index),
        q.look_for,
        tuple(q.negatives),
        q.k,
        len(q.relations),
        area,
        q.parsed.time.model_dump_json(),
        segment,
        json.dumps(cfg, sort_keys=True, default=str),
    )
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return copy.deepcopy(hit)
    mosaic = index.mosaic()
    reads0 = mosaic.stats.full_res_reads
    r = retrieve(index, q, cfg, zoom=None if segment else True)  # the pyramid ablation zooms
    cands = refine(index, q, r, cfg, segment=segment)
    out = (r, cands, mosaic.stats.full_res_reads - reads0)
    _CACHE[key] = copy.deepcopy(out)
    while len(_CACHE) > 256:
        _CACHE.popitem(last=False)
    return out


def run_chain(
    index: TileIndex,
    q: Query,
    ctx: MethodContext | None = None,
    *,
    method: str = "answer",
    segment: bool = True,
    relations: bool = True,
    abstain: bool = True,
) -> Answer:
    """The stages in order, with the component switches the ablations use."""
    ctx = ctx or MethodContext()
    cfg = chain_config(ctx.settings, ctx.options)
    progress = ctx.progress
    asked_relations = bool(q.relations)
    if not relations:  # the ablations look at the image only
        q = copy.copy(q)
        q.parsed = q.parsed.model_copy(update={"relations": []})
    _report(progress, 1, "coarse search and pyramid")
    r, cands, reads = _refined(index, q, cfg, segment)
    _report(progress, 2, "refined")
    add_flags(cands[: q.k], r.pyramid.windows)
    ans = finish(
        index,
        q,
        r.vector,
        cands,
        cfg,
        layers_dir=ctx.layers_dir,
        method=method,
        retrieval=r,
        abstain=abstain,
        with_explanation=bool(ctx.options.get("explain", True)),
        threshold=ctx.options.get("abstain_threshold"),
        progress=progress,
    )
    if asked_relations and not relations:
        for reg in ans.regions:
            if FLAG_NOT_CHECKABLE not in reg.flags:
                reg.flags.append(FLAG_NOT_CHECKABLE)
    ans.full_res_reads = reads
    pr = r.pyramid
    ans.details.update(
        {
            "windows_embedded": pr.windows_embedded,
            "finest_scale_m": pr.finest_scale_m,
            "pyramid_full_res_reads": pr.full_res_reads,
        }
    )
    return ans


def _query(text: str, k: int, ctx: MethodContext) -> Query:
    return parse(
        text, k=min(int(k), 100), area=ctx.area, exclude=ctx.options.get("exclude", ()), parsed=ctx.parsed
    )


@register_method(
    "answer",
    "the served chain: parse, pyramid, segmentation, relations, calibrated abstention, "
    "explanation (geosearch ask / MCP answer)",
)
def answer(index: TileIndex, text: str, k: int, ctx: MethodContext) -> Answer:
    return run_chain(index, _query(text, k, ctx), ctx)


@register_method("segment", "ablation of answer: no relations, no abstention")
def segment_method(index: TileIndex, text: str, k: int, ctx: MethodContext) -> Answer:
    return run_chain(index, _query(text, k, ctx), ctx, method="segment", relations=False, abstain=False)


@register_method(
    "pyramid", "ablation of answer: the pyramid's best windows, no segmentation, relations or abstention"
)
def pyramid_method(index: TileIndex, text: str, k: int, ctx: MethodContext) -> Answer:
    return run_chain(
        index, _query(text, k, ctx), ctx, method="pyramid", segment=False, relations=False, abstain=False
    )
