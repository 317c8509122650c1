"""Registered retrieval methods: ``change``, ``change+spectral``, ``by-example``, ``coarse+prior``.

Options (``MethodContext.options``; ``geosearch eval --option key=value``):

* change: ``date_from`` / ``date_to`` (override the dates parsed from the text), ``w_change``,
  ``w_level``, ``scales``, ``nms`` (IoU above which a lower-ranked overlapping tile is dropped, 0.3;
  0 keeps all); ``change+spectral`` also ``band_roles`` and ``w_spectral``.
* by-example: ``example_tile`` (tile id) or ``example_bbox`` ([minx, miny, maxx, maxy] EPSG:4326),
  ``negative_tiles`` (list), ``lambda``, ``date``, ``prior``; the query text is the modification
  (e.g. "but closer to the river"; "like" / "similar" alone means none).
* coarse+prior: ``prior`` (AlphaEarth-format file, else the index meta key ``embedding_prior``),
  ``prior_top`` (text hits whose prior centroid defines the cluster, 20), ``prior_keep`` (share of
  tiles kept by prior similarity, 0.5), ``prior_weight`` (0.5).
"""

from __future__ import annotations

import numpy as np

from geosearch.change import spectral
from geosearch.change.compose import Example, prior_rerank, query_by_example
from geosearch.change.priors import centroid, index_prior, prior_path
from geosearch.change.temporal import (
    W_CHANGE,
    W_LEVEL,
    change_scores,
    parse_time,
    resolve_dates,
    zscore_by_group,
)
from geosearch.errors import InputError
from geosearch.geo import nms_boxes
from geosearch.index import TileIndex
from geosearch.pipeline import Answer, MethodContext, Region, hits_to_regions, register_method
from geosearch.search import scores, search, text_vector, top_k

W_SPECTRAL = 1.0
NMS_IOU = 0.3


def suppress(boxes: np.ndarray, order: np.ndarray, iou_max: float) -> np.ndarray:
    """Greedy non-maximum suppression: drop a tile overlapping a better-ranked kept one with
    IoU > ``iou_max`` (overlapping tiles of one change would otherwise fill the ranks)."""
    keep = nms_boxes(boxes, len(boxes), iou_max, strict=True)
    return order[np.array(keep, dtype=np.int64)]


_SPECTRAL_CACHE: dict[tuple, dict[str, np.ndarray]] = {}


def _spectral_delta(index: TileIndex, cs, subject: str, roles=None) -> tuple[np.ndarray | None, dict]:
    direction = spectral.query_direction(subject)
    if not direction:
        return None, {}
    if cs.kind == "disappeared":  # "vegetation that disappeared": the index must fall, not rise
        direction = {k: -v for k, v in direction.items()}
    feats = {}
    for d, rows in ((cs.date_from, cs.rows_from), (cs.date_to, cs.rows_to)):
        key = (str(index.path), d, len(index))
        if key not in _SPECTRAL_CACHE:
            m = index.mosaic(d)
            _SPECTRAL_CACHE[key] = spectral.tile_features(m, index.bounds, roles)
        feats[d] = {k: v[rows] for k, v in _SPECTRAL_CACHE[key].items()}
    groups = index.scales[cs.rows_from]
    extra = np.zeros(len(cs.rows_from))
    for feat, sign in direction.items():
        delta = np.nan_to_num(feats[cs.date_to][feat] - feats[cs.date_from][feat])
        extra += sign * zscore_by_group(delta, groups)
    return extra, direction


def run_change(
    index: TileIndex, text: str, k: int, ctx: MethodContext, use_spectral: bool = False, name: str = "change"
) -> Answer:
    tq = parse_time(text)
    opts = ctx.options
    d_from, d_to = resolve_dates(index, tq, opts.get("date_from"), opts.get("date_to"))
    kind = tq.kind or ("new" if tq.subject else "changed")
    vec = text_vector(index, tq.subject) if tq.subject else None
    cs = change_scores(
        index,
        d_from,
        d_to,
        kind,
        vec,
        w_change=float(opts.get("w_change", W_CHANGE)),
        w_level=float(opts.get("w_level", W_LEVEL)),
    )
    details = {
        "date_from": d_from,
        "date_to": d_to,
        "kind": kind,
        "subject": tq.subject,
        "time_phrases": tq.phrases,
    }
    if use_spectral:
        extra, direction = _spectral_delta(index, cs, tq.subject, opts.get("band_roles"))
        if extra is not None:
            cs.score = cs.score + float(opts.get("w_spectral", W_SPECTRAL)) * extra
            details["spectral"] = direction
    mask = None
    if opts.get("scales"):
        mask = np.isin(index.scales[cs.rows_from], np.asarray(opts["scales"], dtype=float))
    order = top_k(cs.score, max(k * 20, 200), mask)
    nms = float(opts.get("nms", NMS_IOU))
    if 0 < nms < 1:
        order = suppress(index.bounds[cs.rows_from[order]], order, nms)
    polys = index.polygons_wgs84()
    regions = []
    for j in order[:k]:
        i0, i1 = int(cs.rows_from[j]), int(cs.rows_to[j])
        tid = str(index.tile_ids[i0])
        regions.append(
            Region(
                tid,
                polys[i0],
                float(cs.score[j]),
                scale_m=float(index.scales[i0]),
                evidence_tiles=[tid],
                details={
                    "dates": [d_from, d_to],
                    "score_from": round(float(cs.s_from[j]), 6),
                    "score_to": round(float(cs.s_to[j]), 6),
                    "embedding_change": round(float(cs.change[j]), 6),
                    "evidence": [
                        {"tile_id": tid, "date": d_from, "row": i0},
                        {"tile_id": tid, "date": d_to, "row": i1},
                    ],
                },
            )
        )
    return Answer(text, name, regions, details=details)


@register_method(
    "change",
    "change between two dates: text score at the later vs the earlier date "
    "plus embedding change (1 - cosine) of the same tile",
)
def change_method(index: TileIndex, text: str, k: int, ctx: MethodContext) -> Answer:
    return run_change(index, text, k, ctx)


@register_method(
    "change+spectral", "change plus the NDVI / NDWI / bare-soil change the query implies (needs a NIR band)"
)
def change_spectral_method(index: TileIndex, text: str, k: int, ctx: MethodContext) -> Answer:
    return run_change(index, text, k, ctx, use_spectral=True, name="change+spectral")


@register_method(
    "by-example", "a region as the query (options example_tile / example_bbox), text as the modification"
)
def by_example_method(index: TileIndex, text: str, k: int, ctx: MethodContext) -> Answer:
    o = ctx.options
    if o.get("example_tile"):
        pos = [Example(tile_id=str(o["example_tile"]))]
    elif o.get("example_bbox"):
        pos = [Example.bbox(o["example_bbox"], o.get("example_crs", "EPSG:4326"))]
    else:
        raise InputError(
            "by-example needs an example: options example_tile=ID or example_bbox=[minx,miny,maxx,maxy]"
        )
    neg = [Example(tile_id=str(t)) for t in (o.get("negative_tiles") or [])]
    mod = None if text.strip().lower() in {"like", "like example", "similar", "more like this"} else text
    ans = query_by_example(
        index, pos, neg, mod, k, lam=float(o.get("lambda", 0.5)), date=o.get("date"), prior=o.get("prior")
    )
    ans.query = text
    return ans


@register_method(
    "coarse+prior",
    "coarse search narrowed and reranked by an AlphaEarth-format embedding "
    "field (cluster of the top text hits)",
)
def coarse_prior_method(index: TileIndex, text: str, k: int, ctx: MethodContext) -> Answer:
    o = ctx.options
    path = prior_path(index, o)
    s = scores(index, text).astype(np.float64)
    pv, has = index_prior(index, path)
    top = top_k(s, int(o.get("prior_top", 20)))
    c = centroid(pv[top], has[top])
    if c is None:  # the prior does not cover the best hits: plain coarse search
        return Answer(
            text,
            "coarse+prior",
            hits_to_regions(search(index, text, k)),
            details={"prior": str(path), "prior_used": False},
        )
    p = pv @ c
    mask = np.ones(len(index), bool)
    keep = float(o.get("prior_keep", 0.5))
    if 0 < keep < 1 and has.any():
        mask &= ~has | (p >= np.quantile(p[has], 1.0 - keep))
        mask[top] = True
    final = prior_rerank(s, p, has, mask, float(o.get("prior_weight", 0.5)))
    polys = index.polygons_wgs84()
    regions = [
        Region(
            str(index.tile_ids[i]),
            polys[i],
            float(final[i]),
            scale_m=float(index.scales[i]),
            evidence_tiles=[str(index.tile_ids[i])],
            details={"text_score": round(float(s[i]), 6), "prior_similarity": round(float(p[i]), 6)},
        )
        for i in top_k(final, k, mask)
    ]
    return Answer(
        text, "coarse+prior", regions, details={"prior": str(path), "prior_used": True, "prior_keep": keep}
    )
