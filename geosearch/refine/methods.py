"""Retrieval methods of the refinement stage, registered with :mod:`geosearch.pipeline`.

``pyramid``  coarse-to-fine windows (regions = the best windows, NMS'd);
``segment``  pyramid + heatmap segmentation of the best windows + merging + reranking;
``abstain``  ``segment`` + calibrated confidence and "not found" decisions.

Options (``MethodContext.options``) override the defaults in :data:`DEFAULTS`.
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from shapely.geometry import box

from geosearch.index import TileIndex
from geosearch.pipeline import Answer, MethodContext, Region, register_method
from geosearch.refine import calibrate
from geosearch.refine.common import to_wgs84
from geosearch.refine.flags import add_flags
from geosearch.refine.heatmap import Candidate, HeatmapBackend, SegmentBackend, StoredHeatmapBackend
from geosearch.refine.merge import merge_candidates, overlap_ratios
from geosearch.refine.pyramid import PyramidResult, Window, dense_window_count, pyramid_search
from geosearch.refine.rerank import RerankWeights, negative_prompts, positive_text, rerank

DEFAULTS: dict = {
    "top_n": 4, "depth": 2, "budget": 54, "keep": 1,   # None: settings.pyramid_*
    "seg_windows": 4,             # windows segmented per query
    "seg_source": "stored",       # stored: heatmap from stored tiles + pyramid windows (no reads);
                                  # crops: read the window once and embed multi-scale crops
    "seg_context": 2.0,           # segment a square this many times the coarse tile's side, centred
                                  # on each of the best windows
    "seg_fracs": (0.5, 1 / 3, 1 / 4),   # heatmap crop sizes, share of the segmented window's side
    "seg_threshold": 0.6,         # heatmap threshold, share of the window's score range
    "seg_grid": 24,
    "merge_iou": 0.5,
    "merge_contain": 1.01,        # > 1: off; else also merge candidates this much inside a better one
    "rerank_max": 16,             # candidates re-embedded at their own extent
    "region_shape": "bbox",       # bbox | polygon
    "whole_windows": 12,          # this many best windows (NMS'd) are candidates too
    "max_near_misses": 3,
    "fill": True,                 # pad the list to k with the next best (unrefined) windows
}


def _opts(ctx: MethodContext) -> dict:
    return {**DEFAULTS, **{k: v for k, v in ctx.options.items() if k in DEFAULTS or k.startswith("w_")}}


def _weights(o: dict) -> RerankWeights:
    w = RerankWeights()
    for k, v in o.items():
        if k.startswith("w_") and hasattr(w, k[2:]):
            setattr(w, k[2:], float(v))
    return w


_DENSE: dict[tuple[str, float], int] = {}


def dense_count(index: TileIndex, scale_m: float | None) -> int | None:
    """:func:`dense_window_count` at ``scale_m``, cached per index and scale."""
    if scale_m is None:
        return None
    key = (str(index.path), round(float(scale_m), 6))
    if key not in _DENSE:
        _DENSE[key] = dense_window_count(index, float(scale_m))
    return _DENSE[key]


def _window_candidate(index: TileIndex, w: Window) -> Candidate:
    poly = box(*w.bounds)
    return Candidate(poly, to_wgs84(index, poly), w.score, tuple(w.bounds), scale_m=w.scale_m, window_score=w.score,
                     evidence_tiles=[w.tile_id] if w.tile_id else [],
                     features={"s_source": w.score, "level": w.level, "whole_window": 1.0})


def _fit_inside(b: tuple, mb: tuple) -> tuple:
    """Shift a window inside the mosaic bounds (shrink it when it is larger)."""
    x0, y0, x1, y1 = b
    w = min(x1 - x0, mb[2] - mb[0])
    h = min(y1 - y0, mb[3] - mb[1])
    side = min(w, h)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    cx = min(max(cx, mb[0] + side / 2), mb[2] - side / 2)
    cy = min(max(cy, mb[1] + side / 2), mb[3] - side / 2)
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def _nms_windows(windows: list[Window], n: int, iou: float) -> list[Window]:
    """Greedy NMS over windows (already best first), vectorised on their bounds."""
    if not windows:
        return []
    b = np.array([w.bounds for w in windows], float)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keep: list[int] = []
    for i in range(len(windows)):
        if keep:
            k = np.array(keep)
            ix = np.clip(np.minimum(b[k, 2], b[i, 2]) - np.maximum(b[k, 0], b[i, 0]), 0, None)
            iy = np.clip(np.minimum(b[k, 3], b[i, 3]) - np.maximum(b[k, 1], b[i, 1]), 0, None)
            inter = ix * iy
            if (inter / (area[k] + area[i] - inter)).max() >= iou:
                continue
        keep.append(i)
        if len(keep) >= n:
            break
    return [windows[i] for i in keep]


def _pyramid(index: TileIndex, text: str, k: int, o: dict) -> PyramidResult:
    return pyramid_search(index, [positive_text(text)], k, top_n=o["top_n"], depth=o["depth"], budget=o["budget"],
                          keep=int(o["keep"]))


def _to_region(index: TileIndex, c: Candidate, rank: int, method: str, shape: str, conf: float) -> Region:
    geom84 = c.polygon_wgs84 if shape == "polygon" else to_wgs84(index, box(*c.bbox_map))
    feats = {k: round(float(v), 5) for k, v in c.features.items() if isinstance(v, (int, float))}
    return Region(region_id=f"{method}-{rank}", polygon_wgs84=geom84, score=float(c.score), confidence=conf,
                  scale_m=None if c.scale_m is None else round(float(c.scale_m), 3),
                  evidence_tiles=list(c.evidence_tiles), flags=list(c.flags),
                  details={"bbox_map": [round(v, 3) for v in c.bbox_map], "merged": c.merged, "features": feats})


@dataclass
class Refined:
    candidates: list[Candidate]
    pyramid: PyramidResult
    vec: np.ndarray


def refine(index: TileIndex, text: str, k: int, ctx: MethodContext, *, segment: bool = True) -> Refined:
    """The shared pipeline: pyramid, then (``segment``) heatmap proposals, merge and rerank."""
    o = _opts(ctx)
    pr = _pyramid(index, text, k, o)
    vec = pr.text_vector
    if not segment:
        wins = _nms_windows(pr.windows, k, 0.5)
        cands = [_window_candidate(index, w) for w in wins]
        for c in cands:
            c.features["s_region"] = c.score
        return Refined(cands, pr, vec)
    if o["seg_source"] == "stored":
        backend: SegmentBackend = StoredHeatmapBackend(grid=int(o["seg_grid"]), threshold=float(o["seg_threshold"]),
                                                       windows=pr.windows)
    else:
        backend = HeatmapBackend(crop_fracs=tuple(o["seg_fracs"]), threshold=float(o["seg_threshold"]),
                                 grid=int(o["seg_grid"]))
    cands: list[Candidate] = []
    mb = index.mosaic().bounds
    seg_wins: list[Window] = []
    for w in pr.windows:   # best windows first; segment the context of their coarse tile
        if len(seg_wins) >= int(o["seg_windows"]):
            break
        side = w.scale_m
        if w.tile_id is not None:
            tb = index.bounds[index.position(w.tile_id)]
            side = tb[2] - tb[0]
        else:
            side = w.bounds[2] - w.bounds[0]
        cx, cy = (w.bounds[0] + w.bounds[2]) / 2, (w.bounds[1] + w.bounds[3]) / 2
        half = side * float(o["seg_context"]) / 2
        ctx_b = _fit_inside((cx - half, cy - half, cx + half, cy + half), mb)
        if any(overlap_ratios(box(*ctx_b), box(*s.bounds))[1] >= 0.6 for s in seg_wins):
            continue
        seg_wins.append(Window(ctx_b, w.score, w.scale_m, w.level, w.tile_id))
    for w in seg_wins:
        for c in backend.propose(index, w.bounds, vec, window_score=w.score,
                                 evidence=[w.tile_id] if w.tile_id else []):
            c.features["s_source"] = c.score
            cands.append(c)
    if o["whole_windows"]:
        cands += [_window_candidate(index, w) for w in _nms_windows(pr.windows, int(o["whole_windows"]), 0.5)]
    # near-duplicates go first (cheap), then every candidate is rescored at its own extent, and
    # only then are overlapping ones merged, by their reranked score
    dedup = merge_candidates(cands, iou=0.9)[: int(o["rerank_max"])]
    negatives = negative_prompts(text, ctx.options.get("exclude", ()))
    ranked = rerank(index, dedup, vec, negatives=negatives, weights=_weights(o))
    merged = merge_candidates(ranked, iou=float(o["merge_iou"]), contain=float(o["merge_contain"]))
    if len(merged) < k and o["fill"]:
        merged += _fill(index, merged, pr.windows, k - len(merged))
    return Refined(merged, pr, vec)


def _fill(index: TileIndex, have: list[Candidate], windows: list[Window], n: int) -> list[Candidate]:
    """Lower-ranked extra regions (the next best windows, not rescored) so that a long result list
    has distinct places after the refined ones; each scores below the last refined candidate."""
    from geosearch.index import tile_polygons_wgs84

    floor = min((c.score for c in have), default=0.0)
    taken = [box(*c.bbox_map) for c in have]
    picked: list[Window] = []
    for w in _nms_windows(windows, n + len(have) + 10, 0.5):
        p = w.polygon()
        if any(overlap_ratios(p, t)[0] >= 0.5 for t in taken):
            continue
        picked.append(w)
        if len(picked) >= n:
            break
    if not picked:
        return []
    polys = tile_polygons_wgs84(np.array([w.bounds for w in picked], float), index.crs)
    out = []
    for j, (w, p84) in enumerate(zip(picked, polys)):
        c = Candidate(box(*w.bounds), p84, floor - 1.0 - j * 1e-4, tuple(w.bounds),
                      scale_m=w.scale_m, window_score=w.score, evidence_tiles=[w.tile_id] if w.tile_id else [],
                      features={"s_source": w.score, "s_region": w.score, "fill": 1.0})
        out.append(c)
    return out


_CACHE: OrderedDict = OrderedDict()   # (index, query, k, options, stage) -> (Refined, full-res reads)


def _refine_cached(index: TileIndex, text: str, k: int, ctx: MethodContext, segment: bool) -> tuple[Refined, int]:
    """``refine`` with a small LRU cache, so that ``abstain`` after ``segment`` on the same query
    (evaluator, MCP answer after segment_region) costs nothing; the cached reads are reported."""
    key = (str(index.path), str(index.meta.get("model_id")), text, k, segment, ctx.layers_dir,
           json.dumps(_opts(ctx), sort_keys=True, default=str), json.dumps(ctx.options.get("exclude", []), default=str))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        ref, reads = _CACHE[key]
        return copy.deepcopy(ref), reads
    mosaic = index.mosaic()
    reads0 = mosaic.stats.full_res_reads
    ref = refine(index, text, k, ctx, segment=segment)
    reads = mosaic.stats.full_res_reads - reads0
    _CACHE[key] = (copy.deepcopy(ref), reads)
    if len(_CACHE) > 512:
        _CACHE.popitem(last=False)
    return ref, reads


def _answer(index: TileIndex, text: str, k: int, ctx: MethodContext, method: str, *, segment: bool,
            abstain: bool) -> Answer:
    o = _opts(ctx)
    ref, full_res = _refine_cached(index, text, k, ctx, segment)
    top = ref.candidates[:k]
    add_flags(top, ref.pyramid.windows, query=text, options=ctx.options, layers_dir=ctx.layers_dir)
    params = calibrate.load_calibration(index.meta.get("model_name"))
    s_all = [float(c.features.get("s_region", c.score)) for c in ref.candidates if not c.features.get("fill")]
    g = [c.features.get("s_generic") for c in top]
    confs, best_feats = calibrate.region_confidences(
        index, ref.vec, [(float(c.features.get("s_region", c.score)), None if x is None else float(x))
                         for c, x in zip(top, g)], params, all_scores=s_all)
    regions = [_to_region(index, c, rank, method, o["region_shape"], conf)
               for rank, (c, conf) in enumerate(zip(top, confs), start=1)]
    details = {"windows_embedded": ref.pyramid.windows_embedded, "finest_scale_m": ref.pyramid.finest_scale_m,
               "pyramid_full_res_reads": ref.pyramid.full_res_reads,
               "dense_windows_at_finest": dense_count(index, ref.pyramid.finest_scale_m),
               "calibrated": params.get("calibrated", False),
               "calibration_features": {k2: round(float(v), 5) for k2, v in best_feats.items()}}
    ans = Answer(text, method, regions, full_res_reads=full_res, details=details)
    if abstain:
        best = regions[0].confidence if regions else 0.0
        thr = float(ctx.options.get("abstain_threshold", params["threshold"]))
        details["abstain_threshold"] = thr
        if not regions or best is None or best < thr:
            ans.abstained = True
            ans.reason = calibrate.abstain_reason(best, thr, best_feats)
            ans.near_misses = regions[: int(o["max_near_misses"])]
            ans.regions = []
    return ans


@register_method("pyramid", "coarse-to-fine pyramid (Dynamic Image Pyramid): regions = best windows")
def pyramid_method(index: TileIndex, text: str, k: int, ctx: MethodContext) -> Answer:
    return _answer(index, text, k, ctx, "pyramid", segment=False, abstain=False)


@register_method("segment", "pyramid + heatmap segmentation + merging + reranking")
def segment_method(index: TileIndex, text: str, k: int, ctx: MethodContext) -> Answer:
    return _answer(index, text, k, ctx, "segment", segment=True, abstain=False)


@register_method("abstain", "segment + calibrated confidence and abstention ('not found')")
def abstain_method(index: TileIndex, text: str, k: int, ctx: MethodContext) -> Answer:
    return _answer(index, text, k, ctx, "abstain", segment=True, abstain=True)
