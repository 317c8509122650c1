"""Coarse search: text (or a vector) against every tile, exact cosine top-k, optional area."""

from __future__ import annotations

from dataclasses import dataclass

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

    def as_dict(self) -> dict:
        return {
            "rank": self.rank,
            "tile_id": self.tile_id,
            "scale_m": self.scale_m,
            "score": round(self.score, 6),
            "bounds": list(self.bounds),
            "bbox_wgs84": list(self.bbox_wgs84),
            "polygon_wgs84": mapping(self.polygon_wgs84),
            "date": self.date,
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
    vec = index.model().encode_text(texts).mean(axis=0)
    return vec / (np.linalg.norm(vec) + 1e-12)


def area_mask(index: TileIndex, area, area_crs) -> np.ndarray:
    """Tiles intersecting ``area`` (any CRS); refuses an area entirely outside the mosaic."""
    geom = index.area_to_mosaic_crs(area, area_crs)
    boxes = shapely.box(index.bounds[:, 0], index.bounds[:, 1], index.bounds[:, 2], index.bounds[:, 3])
    mask = shapely.intersects(boxes, geom)
    if not mask.any():
        raise InputError(
            "the search area does not overlap the indexed mosaic "
            f"(mosaic bbox in EPSG:4326: {[round(v, 6) for v in index.bounds_wgs84]})"
        )
    return mask


def scores(index: TileIndex, query: str | list[str] | np.ndarray) -> np.ndarray:
    vec = query if isinstance(query, np.ndarray) else text_vector(index, query)
    if vec.shape[-1] != index.embeddings.shape[1]:
        raise InputError(f"query vector has dimension {vec.shape[-1]}, index has {index.embeddings.shape[1]}")
    return index.embeddings @ vec.astype(np.float32)


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
) -> list[SearchHit]:
    """Top-k tiles for a text query (or prompt list, or query vector)."""
    if k < 1:
        raise InputError("k must be at least 1")
    s = scores(index, query)
    mask = np.ones(len(index), bool)
    if area is not None:
        mask &= area_mask(index, area, area_crs)
    if scales:
        mask &= np.isin(index.scales, np.asarray(scales, dtype=float))
        if not mask.any():
            raise InputError(f"no tiles at scale(s) {scales}; index has {sorted(set(index.scales.tolist()))}")
    if date is not None:
        if date not in set(index.dates.tolist()):
            raise InputError(
                f"no tiles dated {date!r} in the index; dates: {', '.join(index.date_list) or 'none'}"
            )
        mask &= index.dates == date
    order = top_k(s, k, mask)
    polys = boxes_to_wgs84(index.bounds[order], index.crs) if len(order) else []
    hits = []
    for rank, (i, poly) in enumerate(zip(order, polys), start=1):
        hits.append(
            SearchHit(
                rank,
                str(index.tile_ids[i]),
                float(index.scales[i]),
                float(s[i]),
                tuple(index.bounds[i]),
                tuple(poly.bounds),
                poly,
                index.dates[i],
            )
        )
    return hits
