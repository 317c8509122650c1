"""The refinement stage of the answering chain: from the pyramid's scored windows to ranked region
candidates at their own extent.

Heatmap proposals inside the context of the best windows (stored tile scores, or multi-scale
crops), whole windows as candidates too, near-duplicates dropped, every candidate rescored at its
own extent (:func:`geosearch.refine.rerank.rerank`), overlapping ones merged, and a short list
padded with the next best distinct windows. ``cfg`` is the chain configuration
(:func:`geosearch.chain.chain_config`: the ``Settings`` fields of the chain plus per-call options).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from shapely.geometry import box

from geosearch.geo import Bounds, boxes_to_wgs84, nms_boxes, overlap_ratios, to_wgs84
from geosearch.index import TileIndex
from geosearch.refine.heatmap import Candidate, HeatmapBackend, SegmentBackend, StoredHeatmapBackend
from geosearch.refine.merge import merge_candidates
from geosearch.refine.pyramid import PyramidResult, Window
from geosearch.refine.rerank import RerankWeights, rerank


def rerank_weights(cfg: dict) -> RerankWeights:
    """Rerank weights with ``w_<name>`` overrides from the configuration."""
    w = RerankWeights()
    for k, v in cfg.items():
        if k.startswith("w_") and hasattr(w, k[2:]):
            setattr(w, k[2:], float(v))
    return w


def nms_windows(windows: Sequence[Window], n: int, iou: float = 0.5) -> list[Window]:
    """At most ``n`` windows (already best first), none overlapping a kept one by IoU >= ``iou``."""
    if not windows:
        return []
    keep = nms_boxes(np.array([w.bounds for w in windows], float), n, iou)
    return [windows[i] for i in keep]


def window_candidate(index: TileIndex, w: Window) -> Candidate:
    poly = box(*w.bounds)
    return Candidate(
        poly,
        to_wgs84(poly, index.crs),
        w.score,
        tuple(w.bounds),
        scale_m=w.scale_m,
        window_score=w.score,
        evidence_tiles=[w.tile_id] if w.tile_id else [],
        features={"s_source": w.score, "level": w.level, "whole_window": 1.0},
    )


def fit_inside(b: Bounds, mb: Bounds) -> Bounds:
    """Shift a square window inside the mosaic bounds (shrink it when it is larger)."""
    x0, y0, x1, y1 = b
    side = min(x1 - x0, mb[2] - mb[0], y1 - y0, mb[3] - mb[1])
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    cx = min(max(cx, mb[0] + side / 2), mb[2] - side / 2)
    cy = min(max(cy, mb[1] + side / 2), mb[3] - side / 2)
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def segmentation_windows(index: TileIndex, pr: PyramidResult, cfg: dict) -> list[Window]:
    """The squares to segment: ``seg_context`` times the coarse tile's side around each of the best
    windows, inside the mosaic, skipping squares mostly covered by an earlier one."""
    mb = index.mosaic().bounds
    out: list[Window] = []
    for w in pr.windows:  # best first
        if len(out) >= int(cfg["seg_windows"]):
            break
        if w.tile_id is not None:
            tb = index.bounds[index.position(w.tile_id)]
            side = tb[2] - tb[0]
        else:
            side = w.bounds[2] - w.bounds[0]
        cx, cy = (w.bounds[0] + w.bounds[2]) / 2, (w.bounds[1] + w.bounds[3]) / 2
        half = side * float(cfg["seg_context"]) / 2
        ctx_b = fit_inside((cx - half, cy - half, cx + half, cy + half), mb)
        if any(overlap_ratios(box(*ctx_b), box(*s.bounds))[1] >= 0.6 for s in out):
            continue
        out.append(Window(ctx_b, w.score, w.scale_m, w.level, w.tile_id))
    return out


def propose(index: TileIndex, pr: PyramidResult, vec: np.ndarray, cfg: dict) -> list[Candidate]:
    """Heatmap proposals inside the segmentation windows, plus the best whole windows."""
    if cfg["seg_source"] == "stored":
        backend: SegmentBackend = StoredHeatmapBackend(
            grid=int(cfg["seg_grid"]), threshold=float(cfg["seg_threshold"]), windows=pr.windows
        )
    else:
        backend = HeatmapBackend(
            crop_fracs=tuple(cfg["seg_fracs"]),
            threshold=float(cfg["seg_threshold"]),
            grid=int(cfg["seg_grid"]),
        )
    cands: list[Candidate] = []
    for w in segmentation_windows(index, pr, cfg):
        for c in backend.propose(
            index, w.bounds, vec, window_score=w.score, evidence=[w.tile_id] if w.tile_id else []
        ):
            c.features["s_source"] = c.score
            cands.append(c)
    if cfg["whole_windows"]:
        wins = nms_windows(pr.windows, int(cfg["whole_windows"]))
        # the coarse tiles the pyramid zoomed into stay candidates too: a tile that fits the thing
        # better than any of its (higher-scoring, smaller) children must be able to win the rerank
        seen = {tuple(w.bounds) for w in wins}
        wins += [w for w in pr.explored if tuple(w.bounds) not in seen]
        cands += [window_candidate(index, w) for w in wins]
    return cands


def refine_candidates(
    index: TileIndex, pr: PyramidResult, vec: np.ndarray, negatives: Sequence[str], k: int, cfg: dict
) -> list[Candidate]:
    """Proposals -> near-duplicates dropped -> rescored at their own extent -> merged -> padded to k."""
    cands = propose(index, pr, vec, cfg)
    # near-duplicates go first (cheap), then every candidate is rescored at its own extent, and
    # only then are overlapping ones merged, by their reranked score
    dedup = merge_candidates(cands, iou=0.9)[: int(cfg["rerank_max"])]
    ranked = rerank(index, dedup, vec, negatives=negatives, weights=rerank_weights(cfg))
    merged = merge_candidates(ranked, iou=float(cfg["merge_iou"]), contain=float(cfg["merge_contain"]))
    if len(merged) < k and cfg["fill"]:
        merged += fill_candidates(index, merged, pr.windows, k - len(merged))
    return merged


def window_candidates(index: TileIndex, pr: PyramidResult, k: int) -> list[Candidate]:
    """The pyramid baseline: the best windows (NMS'd) as candidates, scored as they were found."""
    cands = [window_candidate(index, w) for w in nms_windows(pr.windows, k)]
    for c in cands:
        c.features["s_region"] = c.score
    return cands


def fill_candidates(
    index: TileIndex, have: list[Candidate], windows: list[Window], n: int
) -> list[Candidate]:
    """Lower-ranked extra regions (the next best windows, not rescored) so that a long result list
    has distinct places after the refined ones; each scores below the last refined candidate."""
    floor = min((c.score for c in have), default=0.0)
    taken = [box(*c.bbox_map) for c in have]
    picked: list[Window] = []
    for w in nms_windows(windows, n + len(have) + 10):
        p = w.polygon()
        if any(overlap_ratios(p, t)[0] >= 0.5 for t in taken):
            continue
        picked.append(w)
        if len(picked) >= n:
            break
    if not picked:
        return []
    polys = boxes_to_wgs84(np.array([w.bounds for w in picked], float), index.crs)
    return [
        Candidate(
            box(*w.bounds),
            p84,
            floor - 1.0 - j * 1e-4,
            tuple(w.bounds),
            scale_m=w.scale_m,
            window_score=w.score,
            evidence_tiles=[w.tile_id] if w.tile_id else [],
            features={"s_source": w.score, "s_region": w.score, "fill": 1.0},
        )
        for j, (w, p84) in enumerate(zip(picked, polys))
    ]
