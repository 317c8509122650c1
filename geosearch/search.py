"""Coarse search: text (or a vector) against every tile, cosine top-k, optional area / scale / date.

Tiles are ranked by their cosine score; with ``search_context`` > 0 (``geosearch search --context
W``, the ``coarse_search`` tool's ``context``) by that score averaged with their neighbourhood's
(the same-scale tiles whose centres lie within half a side, itself included; W its weight), so that
a tile that merely looks like the query, as a piece of something else, ranks below one inside a
place that matches all around it. That answers "where is the X" over scenes larger than the tiles:
on the dev pointing grid (one AID dev chip of ~1 km per class, five seeds) the top-1 tile lies in a
chip of the queried class for 0.75 of the classes with W = 1, against 0.51 by own score. It also
moves the top tiles to the smallest scale, inside things, away from tiles that fit a thing's
extent: on the tuning bench ``aid-dev-tune`` (chips of 225-450 m) the ``coarse`` method's hit@10 at
IoU 0.5 falls from 0.356 to 0.197. So it is off by default, and the answering chain (whose regions
come from the index's proposals) is unchanged by it on the dev benches (the model card,
geosearch/models/weights/MODEL_CARD.md, has the numbers).

The top-k runs through the index's ANN when it has one (:mod:`geosearch.vectors`: IVF candidates
rescored with the exact float32 vectors, filters applied exactly), else as an exact scan;
:meth:`TileIndex.search_mode` says which.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import shapely
from shapely.geometry import mapping

from geosearch.errors import InputError
from geosearch.geo import Bounds, boxes_to_wgs84
from geosearch.index import TileIndex


@dataclass
class SearchHit:
    rank: int
    tile_id: str
    scale_m: float
    score: float
    bounds: Bounds  # mosaic CRS
    bbox_wgs84: Bounds
    polygon_wgs84: object  # shapely Polygon (EPSG:4326)
    date: str | None = None
    tile_score: float | None = None  # the tile's own cosine score (``score`` also weighs its neighbours)
    index: str | None = None  # the shard's file name, for a search over several indexes

    def as_dict(self) -> dict:
        shard = {"index": self.index} if self.index is not None else {}
        return {
            "rank": self.rank,
            "tile_id": self.tile_id,
            "scale_m": self.scale_m,
            "score": round(self.score, 6),
            "tile_score": None if self.tile_score is None else round(self.tile_score, 6),
            "bounds": list(self.bounds),
            "bbox_wgs84": list(self.bbox_wgs84),
            "polygon_wgs84": mapping(self.polygon_wgs84),
            "date": self.date,
            **shard,
        }


def text_vector(index: TileIndex, texts: str | list[str]) -> np.ndarray:
    """Mean of the unit text embeddings of ``texts`` (prompt ensemble), renormalised."""
    if isinstance(texts, str):
        texts = [texts]
    texts = [t.strip() for t in texts if t and t.strip()]
    if not texts:
        raise InputError("empty query: give some words to search for")
    from geosearch.settings import get_settings

    limit = get_settings().max_prompts
    if len(set(texts)) > limit:
        raise InputError(f"too many prompts: {len(set(texts))} (at most {limit}, GEOSEARCH_MAX_PROMPTS)")
    vec = index.text_model().encode_text(texts).mean(axis=0)
    return vec / (np.linalg.norm(vec) + 1e-12)


def area_mask(index: TileIndex, area, area_crs) -> np.ndarray:
    """Tiles intersecting ``area`` (any CRS); refuses an area entirely outside the mosaic."""
    geom = index.area_to_mosaic_crs(area, area_crs)
    b = index.bounds
    gx0, gy0, gx1, gy1 = geom.bounds
    # a box test on the arrays first: shapely geometries only for the tiles near the area
    near = np.flatnonzero((b[:, 0] <= gx1) & (b[:, 2] >= gx0) & (b[:, 1] <= gy1) & (b[:, 3] >= gy0))
    mask = np.zeros(len(b), bool)
    if len(near):
        nb = np.asarray(b[near])
        mask[near] = shapely.intersects(shapely.box(nb[:, 0], nb[:, 1], nb[:, 2], nb[:, 3]), geom)
    if not mask.any():
        raise InputError(
            "the search area does not overlap the indexed mosaic "
            f"(mosaic bbox in EPSG:4326: {[round(v, 6) for v in index.bounds_wgs84]})"
        )
    return mask


def query_vec(index: TileIndex, query: str | list[str] | np.ndarray) -> np.ndarray:
    vec = query if isinstance(query, np.ndarray) else text_vector(index, query)
    if vec.shape[-1] != index.embeddings.shape[1]:
        raise InputError(f"query vector has dimension {vec.shape[-1]}, index has {index.embeddings.shape[1]}")
    return vec.astype(np.float32)


def scores(index: TileIndex, query: str | list[str] | np.ndarray) -> np.ndarray:
    """Exact scores of every tile (a full scan: the top-k of :func:`search` avoids it)."""
    return index.embeddings @ query_vec(index, query)


STATS_SAMPLE = 20_000


def score_stats(index: TileIndex, vec: np.ndarray, best: float | None = None) -> dict[str, float]:
    """mean / std / max / median of the tile scores: over every tile, or for an index with a vector
    store and more than ``STATS_SAMPLE`` tiles over an evenly spaced sample of them (``max`` is
    then the best hit's score when given), so that describing a search does not scan the index."""
    vec = vec.astype(np.float32)
    n = len(index)
    if index.store is None or n <= STATS_SAMPLE:
        s = index.embeddings @ vec
    else:
        s = index.store.rows(np.linspace(0, n - 1, STATS_SAMPLE).astype(np.int64)) @ vec
    out = {
        "mean": float(s.mean()),
        "std": float(s.std()),
        "max": float(s.max()),
        "median": float(np.median(s)),
    }
    if len(s) < n:
        out["max"] = max(out["max"], best if best is not None else out["max"])
        out["sampled_tiles"] = float(len(s))
    return out


def ranked(
    index: TileIndex, vec: np.ndarray, k: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The k best tile positions (descending, ties by position) within ``mask`` and their exact
    scores: through the ANN when the index has one and the filter leaves enough tiles, else by
    an exact scan (of the masked rows only, when they are few)."""
    from geosearch.settings import get_settings

    vec = vec.astype(np.float32)
    if index.store is not None:
        found = index.store.search(vec, k, mask, get_settings())
        if found is not None:
            return found
    emb = index.embeddings
    if mask is not None and mask.sum() < len(mask) // 4:
        rows = np.flatnonzero(mask)
        sub = np.asarray(emb[rows]) @ vec
        order = top_k(sub, k)
        return rows[order], sub[order]
    s = emb @ vec
    order = top_k(s, k, mask)
    return order, s[order]


CONTEXT_POOL = 256  # tiles (best by own score) that the neighbourhood ranking reorders


def context_ranked(
    index: TileIndex, vec: np.ndarray, k: int, mask: np.ndarray | None = None, weight: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k best tile positions by ``(own + weight * neighbourhood mean) / (1 + weight)``, with
    their own and ranking scores. The :data:`CONTEXT_POOL` best tiles by own score (within
    ``mask``; through the ANN when the index has one) are reordered, reading only their
    neighbours' vectors; neighbours outside ``mask`` still count as context. ``weight`` defaults
    to the setting ``search_context``; 0 gives the plain top-k."""
    from geosearch.settings import get_settings

    w = float(get_settings().search_context if weight is None else weight)
    order, own = ranked(index, vec, k if w <= 0 else max(k, CONTEXT_POOL), mask)
    if w <= 0 or not len(order):
        return order, own, own
    hoods = index.neighbourhoods(order)
    cols, at = np.unique(np.concatenate(hoods), return_inverse=True)
    near = np.asarray(index.embeddings[cols], np.float32) @ vec.astype(np.float32)
    ends = np.cumsum([len(h) for h in hoods])
    mean = np.array([near[at[e - len(h) : e]].mean() for e, h in zip(ends, hoods)])
    score = (own + w * mean) / (1 + w)
    best = np.lexsort((order, -score))[:k]
    return order[best], own[best], score[best]


def top_k(values: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Indices of the k largest values (descending), restricted to ``mask``; ties by position."""
    candidates = np.flatnonzero(mask) if mask is not None else np.arange(len(values))
    if k <= 0 or not len(candidates):
        return np.zeros(0, dtype=np.int64)
    sub = values[candidates]
    if k < len(sub):
        part = np.argpartition(-sub, k - 1)[:k]
    else:
        part = np.arange(len(sub))
    order = part[np.lexsort((candidates[part], -sub[part]))]
    return candidates[order]


def search(
    index: TileIndex,
    query: str | list[str] | np.ndarray,
    k: int = 10,
    *,
    area=None,
    area_crs="EPSG:4326",
    scales: list[float] | None = None,
    date: str | None = None,
    context: float | None = None,
) -> list[SearchHit]:
    """Top-k tiles for a text query (or prompt list, or query vector), ranked with their
    neighbourhood (``context``: its weight, default the setting ``search_context``)."""
    if k < 1:
        raise InputError("k must be at least 1")
    vec = query_vec(index, query)
    mask = None
    if area is not None:
        mask = area_mask(index, area, area_crs)
    if scales:
        if index.store is not None:
            at = index.store.scale_mask(scales)
        else:
            at = np.isin(index.scales, np.asarray(scales, dtype=float))
        mask = at if mask is None else mask & at
        if not mask.any():
            raise InputError(f"no tiles at scale(s) {scales}; index has {sorted(set(index.scales.tolist()))}")
    if date is not None:
        if date not in index.date_list:
            raise InputError(
                f"no tiles dated {date!r} in the index; dates: {', '.join(index.date_list) or 'none'}"
            )
        on = index.store.date_mask(date) if index.store is not None else index.dates == date
        mask = on if mask is None else mask & on
    order, own, s = context_ranked(index, vec, k, mask, context)
    polys = boxes_to_wgs84(index.bounds[order], index.crs) if len(order) else []
    hits = []
    for rank, (i, score, tile_score, poly) in enumerate(zip(order, s, own, polys), start=1):
        hits.append(
            SearchHit(
                rank,
                str(index.tile_ids[i]),
                float(index.scales[i]),
                float(score),
                tuple(index.bounds[i]),
                tuple(poly.bounds),
                poly,
                index.dates[i],
                tile_score=float(tile_score),
            )
        )
    return hits


def search_shards(
    indexes: Sequence[TileIndex],
    query: str | list[str] | np.ndarray,
    k: int = 10,
    *,
    area=None,
    area_crs="EPSG:4326",
    scales: list[float] | None = None,
    date: str | None = None,
    context: float | None = None,
) -> list[SearchHit]:
    """Top-k over several indexes of one model: the shards of an area too large for one index
    (docs/scale.md). The query is embedded once; each shard returns its own top-k with exact
    scores, so merging by score gives the top-k of the union. A shard that the area, scales or
    date leave out is skipped; when every shard is, the first shard's reason is raised."""
    if not indexes:
        raise InputError("no index to search")
    if k < 1:
        raise InputError("k must be at least 1")
    models = {ix.meta.get("model_id") for ix in indexes}
    if len(models) > 1:
        names = ", ".join(f"{ix.path.name}: {ix.meta.get('model_id')}" for ix in indexes)
        raise InputError(
            f"the shards were built with different models, so their scores do not compare ({names})"
        )
    vec = query_vec(indexes[0], query)
    names = [ix.path.name for ix in indexes]
    if len(set(names)) < len(names):  # shards named alike in different folders: full paths
        names = [str(ix.path) for ix in indexes]
    found: list[tuple[float, int, int, SearchHit]] = []
    refused: list[InputError] = []
    for i, (ix, name) in enumerate(zip(indexes, names)):
        try:
            hits = search(ix, vec, k, area=area, area_crs=area_crs, scales=scales, date=date, context=context)
        except InputError as exc:  # this shard lies outside the area, or lacks the scale / date
            refused.append(exc)
            continue
        found += [(-h.score, i, h.rank, replace(h, index=name)) for h in hits]
    if len(refused) == len(indexes):
        raise refused[0]
    found.sort(key=lambda t: t[:3])
    return [replace(t[3], rank=r) for r, t in enumerate(found[:k], start=1)]
