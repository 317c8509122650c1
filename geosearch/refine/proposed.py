"""Region candidates from the index's stored proposals: the whole mosaic, no reads.

Every proposal (:mod:`geosearch.proposals`) was embedded at its own extent when the index was
built, so one matrix product scores all of them against the query. The best ``proposal_pool``
(inside the query's area and dates) get the reranker's features from their stored embeddings
(negative and generic prompts) and an ``s_context`` from the stored tiles around them (the tiles
about twice the region's side that hold its centre), and are ranked with the weights of
:mod:`geosearch.refine.rerank` plus the settings' ``proposal_w_specific``, ``proposal_w_size`` (a
larger region outranks a piece of it that the model scores alike) and ``proposal_w_agree`` (a
region that looks like the query's real examples in the reference gallery gains; 0 by default),
then one region per thing is kept (box NMS in metres, ``proposal_nms_iou``).
"""

from __future__ import annotations

import numpy as np
import shapely

from geosearch.geo import box_areas, box_intersections, box_ious, crs_units_per_metre, nms_boxes, to_wgs84
from geosearch.index import ProposalSet, TileIndex
from geosearch.refine.heatmap import Candidate
from geosearch.refine.regions import rerank_weights
from geosearch.refine.rerank import rerank


def proposal_mask(index: TileIndex, ps: ProposalSet, area, dates: list[str] | None) -> np.ndarray:
    """Proposals inside the query's area (EPSG:4326 geometry) and of its dates."""
    mask = np.ones(len(ps), bool)
    if dates is not None:
        mask &= np.isin(ps.dates, dates)
    if area is not None:
        zone = index.area_to_mosaic_crs(area, "EPSG:4326")
        b = ps.bounds
        mask &= shapely.intersects(shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3]), zone)
    return mask


def context_scores(index: TileIndex, bounds: np.ndarray, tile_scores: np.ndarray) -> np.ndarray:
    """For each region: the mean stored score of the tiles at the scale nearest twice its side
    that hold its centre (its surroundings, as the index saw them); its own score stands in when
    no such tile exists."""
    scales = np.unique(index.scales)
    out = np.full(len(bounds), np.nan)
    side = np.maximum(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1])
    cx = (bounds[:, 0] + bounds[:, 2]) / 2
    cy = (bounds[:, 1] + bounds[:, 3]) / 2
    unit = _crs_units_per_metre(index)
    want = np.array([scales[np.argmin(np.abs(np.log(scales * unit / (2 * s))))] for s in side])
    tb = index.bounds
    for sc in np.unique(want):
        rows = np.flatnonzero(index.scales == sc)
        sel = np.flatnonzero(want == sc)
        for i in sel:
            hit = rows[
                (tb[rows, 0] <= cx[i])
                & (tb[rows, 2] >= cx[i])
                & (tb[rows, 1] <= cy[i])
                & (tb[rows, 3] >= cy[i])
            ]
            if len(hit):
                out[i] = float(tile_scores[hit].mean())
    return out


def _crs_units_per_metre(index: TileIndex) -> float:
    m = index.meta.get("mosaic") or {}
    try:
        return crs_units_per_metre(m["bounds"], m["size_px"], m["pixel_size_m"])[0]
    except (KeyError, TypeError, ZeroDivisionError):
        return 1.0


def grown(
    bounds: np.ndarray, scores: np.ndarray, pool: np.ndarray, allowed: np.ndarray, tol: float
) -> np.ndarray:
    """Adjacent segments merge while the text score holds: each pooled proposal is replaced by the
    largest allowed proposal that holds it (>= 85 % of its box inside) and scores at least its
    score minus ``tol``. A piece of a thing gives way to the whole thing; the order and the
    uniqueness of the pool are kept."""
    b = bounds[allowed]
    area = box_areas(b)
    out: list[int] = []
    for i in pool:
        ca = box_areas(bounds[i])[0]
        ok = (
            (box_intersections(b, bounds[i]) >= 0.85 * ca)
            & (area > ca)
            & (scores[allowed] >= scores[i] - tol)
        )
        j = int(allowed[np.flatnonzero(ok)[np.argmax(area[ok])]]) if ok.any() else int(i)
        if j not in out:
            out.append(j)
    return np.array(out, dtype=np.int64)


def proposal_candidates(
    index: TileIndex,
    vec: np.ndarray,
    negatives: list[str],
    cfg: dict,
    *,
    area=None,
    dates: list[str] | None = None,
) -> list[Candidate]:
    """The query's best proposals as reranked candidates, one per thing, best first."""
    ps = index.proposals()
    if ps is None:
        return []
    scores = ps.embeddings @ vec
    mask = proposal_mask(index, ps, area, dates)
    idx = np.flatnonzero(mask)
    if not len(idx):
        return []
    pool = idx[np.argsort(-scores[idx], kind="stable")[: int(cfg["proposal_pool"])]]
    grow = float(cfg.get("proposal_grow", 0.0))
    if grow > 0:
        pool = grown(ps.bounds, scores, pool, idx, grow)
    tile_scores = index.embeddings @ vec
    ctx = context_scores(index, ps.bounds[pool], tile_scores)
    ctx = np.where(np.isnan(ctx), scores[pool], ctx)
    unit = _crs_units_per_metre(index)
    cands = []
    for i in pool:
        b = tuple(float(v) for v in ps.bounds[i])
        outline = ps.outline(int(i))
        cands.append(
            Candidate(
                outline,
                to_wgs84(outline, index.crs),
                float(scores[i]),
                b,
                scale_m=float(max(b[2] - b[0], b[3] - b[1])) / unit,
                window_score=float(scores[i]),
                features={"s_source": float(scores[i]), "proposal": float(ps.prop_ids[i])},
            )
        )
    ranked = rerank(
        index,
        cands,
        vec,
        negatives=negatives,
        weights=rerank_weights(
            {
                "w_specific": cfg["proposal_w_specific"],
                "w_size": cfg["proposal_w_size"],
                "w_agree": cfg["proposal_w_agree"],
                **cfg,
            }
        ),
        embeddings=ps.embeddings[pool],
        context=ctx,
    )
    keep = one_per_thing(
        np.array([c.bbox_map for c in ranked], float).reshape(-1, 4),
        float(cfg["proposal_nms_iou"]),
        float(cfg.get("proposal_contain", 1.01)),
    )
    return [ranked[i] for i in keep]


def one_per_thing(boxes: np.ndarray, iou: float, contain: float) -> list[int]:
    """Greedy suppression over boxes ranked best first: a box is dropped when it overlaps a kept one
    by IoU >= ``iou``, or lies inside one by >= ``contain`` of its own area (> 1: never)."""
    if contain > 1:
        return nms_boxes(boxes, len(boxes), iou)
    keep: list[int] = []
    area = box_areas(boxes)
    for i, b in enumerate(boxes):
        if keep:
            if box_ious(boxes[keep], b).max() >= iou:
                continue
            if box_intersections(boxes[keep], b).max() >= contain * area[i]:
                continue
        keep.append(i)
    return keep
