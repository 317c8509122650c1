"""Query by example and composed queries.

A region is the query: a tile id of the index (a result id), a bbox or a polygon (any CRS). Its
image embedding is the tile's stored embedding (tile ids, and boxes matching a tile with IoU >= 0.7)
or the model's embedding of the mosaic cropped to the box.

Composed query (RSCIR-style weighting of image and text)::

    q = normalize(λ · img + (1 - λ) · Σ sign_i · text_i)

``img`` is the example embedding, ``text_i`` the unit text embeddings of the modification's terms
(sign -1 for "without the ships", +1 for "with more trees"). λ = :data:`DEFAULT_LAMBDA` = 0.5 by
default: 1 ignores the text, 0 ignores the image. Several examples (GeoVibes' baseline)::

    img = normalize(2 · mean(positives) - mean(negatives))     (mean(positives) without negatives)

A *relational* modification ("but closer to the river", "far from the road") is not put in the
embedding: when the index has a matching layer (name or role), the top candidates are reranked by
``z(similarity) ∓ W_RELATION · z(log(1 + distance_m))`` from the relations API
(:func:`geosearch.relations.check_relation`); without a matching layer it falls back to a text term.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry import box

from geosearch.errors import GeoSearchError, InputError
from geosearch.geo import as_crs, reproject_geom
from geosearch.index import TileIndex
from geosearch.pipeline import Answer, Region
from geosearch.search import text_vector, top_k

DEFAULT_LAMBDA = 0.5
W_RELATION = 1.0
W_PRIOR = 0.5
TILE_IOU = 0.7


@dataclass
class Example:
    """One example region: a tile id, or a geometry (bbox / polygon) with its CRS."""

    tile_id: str | None = None
    geometry: object = None
    crs: object = "EPSG:4326"
    date: str | None = None

    @classmethod
    def bbox(cls, values, crs="EPSG:4326", date: str | None = None) -> Example:
        from geosearch.geo import area_from_bbox

        geom, c = area_from_bbox(values, crs)
        return cls(geometry=geom, crs=c, date=date)


@dataclass
class Modification:
    terms: list[tuple[float, str]] = field(default_factory=list)  # (sign, text)
    relation: tuple[str, str] | None = None  # (predicate, target words)
    text: str = ""

    def as_dict(self) -> dict:
        return {
            "text": self.text,
            "terms": [[s, t] for s, t in self.terms],
            "relation": list(self.relation) if self.relation else None,
        }


_REL = [
    (
        r"\b(?:closer|close|nearer|near|next|adjacent|beside|by|along)\s+(?:to\s+)?(?:the\s+|a\s+|an\s+)?(.+)$",
        "near",
    ),
    (r"\b(?:further|farther|far|away)\s+(?:away\s+)?from\s+(?:the\s+|a\s+|an\s+)?(.+)$", "far_from"),
]
_NEG = r"\b(?:without|no|minus|fewer|less|not|except)\s+(?:the\s+|any\s+|a\s+|an\s+)?(.+)$"


def parse_modification(text: str | None) -> Modification:
    """Split a modification ("but closer to the river", "without the ships") into text terms with
    signs and an optional relation (predicate, target)."""
    mod = Modification(text=(text or "").strip())
    t = re.sub(r"^\s*(?:but|and|with|yet|only|also)\b\s*", "", mod.text, flags=re.IGNORECASE).strip(" ,.;")
    if not t:
        return mod
    for part in re.split(r"\s*(?:,|;|\band\b|\bbut\b)\s*", t, flags=re.IGNORECASE):
        part = part.strip()
        if not part:
            continue
        for pattern, pred in _REL:
            m = re.search(pattern, part, flags=re.IGNORECASE)
            if m and mod.relation is None:
                mod.relation = (pred, m.group(1).strip(" .,"))
                break
        else:
            m = re.search(_NEG, part, flags=re.IGNORECASE)
            if m:
                mod.terms.append((-1.0, m.group(1).strip(" .,")))
            else:
                mod.terms.append((1.0, re.sub(r"^(?:more|with|some)\s+", "", part, flags=re.IGNORECASE)))
    return mod


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    if n < 1e-12:
        raise InputError("the composed query is the zero vector (examples cancel out); change the examples")
    return (v / n).astype(np.float32)


def compose_vector(
    img: np.ndarray, deltas: list[tuple[float, np.ndarray]], lam: float = DEFAULT_LAMBDA
) -> np.ndarray:
    """``normalize(λ·img + (1-λ)·Σ sign·text)``; ``img`` alone when there is no text term."""
    if not 0.0 <= lam <= 1.0:
        raise InputError(f"lambda must be in [0, 1], got {lam}")
    img = _unit(np.asarray(img, np.float64))
    if not deltas:
        return img
    text = sum(s * _unit(np.asarray(v, np.float64)) for s, v in deltas)
    return _unit(lam * img + (1.0 - lam) * np.asarray(text))


def examples_vector(positives: list[np.ndarray], negatives: list[np.ndarray] | None = None) -> np.ndarray:
    """GeoVibes baseline: ``normalize(2·mean(pos) - mean(neg))``, or ``normalize(mean(pos))``."""
    if not positives:
        raise InputError("give at least one positive example")
    pos = np.mean([_unit(np.asarray(p, np.float64)) for p in positives], axis=0)
    if not negatives:
        return _unit(pos)
    neg = np.mean([_unit(np.asarray(n, np.float64)) for n in negatives], axis=0)
    return _unit(2.0 * pos - neg)


def _default_date(index: TileIndex, date: str | None) -> str | None:
    dates = index.date_list
    if date is not None:
        if date not in dates:
            from geosearch.change.temporal import match_date

            return match_date(index, date, latest=True)
        return date
    return dates[-1] if len(dates) > 1 else None


def example_vector(index: TileIndex, ex: Example) -> tuple[np.ndarray, object]:
    """(unit embedding, footprint polygon in the mosaic CRS) of one example."""
    date = _default_date(index, ex.date)
    if ex.tile_id is not None:
        i = index.position(str(ex.tile_id), date) if date is not None else index.position(str(ex.tile_id))
        return index.embeddings[i], box(*index.bounds[i])
    if ex.geometry is None:
        raise InputError("an example needs a tile id, a bbox or a polygon")
    geom = reproject_geom(ex.geometry, as_crs(ex.crs), index.crs)
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    mb = box(*index.mosaic_bounds)
    if geom.is_empty or not geom.intersects(mb) or geom.intersection(mb).area < 0.5 * max(geom.area, 1e-12):
        raise InputError(
            "the example region lies outside the indexed mosaic "
            f"(mosaic bbox in EPSG:4326: {[round(v, 6) for v in index.bounds_wgs84]})"
        )
    sel = np.ones(len(index), bool) if date is None else index.dates == date
    boxes = shapely.box(index.bounds[:, 0], index.bounds[:, 1], index.bounds[:, 2], index.bounds[:, 3])
    inter = shapely.area(shapely.intersection(boxes, geom))
    iou = np.where(sel, inter / np.maximum(shapely.area(shapely.union(boxes, geom)), 1e-12), 0.0)
    best = int(np.argmax(iou))
    if iou[best] >= TILE_IOU:
        return index.embeddings[best], geom
    mosaic = index.mosaic(date) if date is not None else index.mosaic()
    model = index.model()
    img = mosaic.read(geom.bounds, model.image_size)
    if img.valid_fraction < 0.05:
        raise InputError("the example region has no valid pixels in the mosaic")
    return model.encode_images(img.rgb[None])[0], geom


def _zs(v: np.ndarray) -> np.ndarray:
    sd = v.std()
    return (v - v.mean()) / sd if sd > 1e-12 else np.zeros_like(v)


def prior_rerank(
    s: np.ndarray, p: np.ndarray, has: np.ndarray, mask: np.ndarray, weight: float
) -> np.ndarray:
    """``z(s) + weight · z(p)`` with both standardised over the candidate tiles (``mask``)."""
    out = np.full(len(s), -np.inf)
    if not mask.any():
        return out
    z = _zs(s[mask].astype(np.float64))
    pz = np.where(has[mask], p[mask], np.nan)
    ok = np.isfinite(pz)
    zp = np.zeros(len(pz))
    if ok.any():
        zp[ok] = _zs(pz[ok])
    out[mask] = z + weight * zp
    return out


_ROLE_WORDS = {
    "water": r"river|water|lake|sea|coast|shore|stream|canal|pond|harbou?r|reservoir",
    "roads": r"road|street|highway|motorway|freeway|route",
    "buildings": r"building|house|houses|town|village|settlement",
}


def match_layer(index: TileIndex, target: str) -> str | None:
    """The index layer a relation target names (by layer name, else by role), or None."""
    from geosearch.relations import list_layers

    try:
        layers = list_layers(str(index.path))
    except GeoSearchError:
        return None
    words = re.findall(r"[a-z]+", target.lower())
    for info in layers:
        if any(w.rstrip("s") and w.rstrip("s") in info.name.lower() for w in words):
            return info.name
    for role, pattern in _ROLE_WORDS.items():
        if re.search(rf"\b(?:{pattern})", target.lower()):
            for info in layers:
                if info.role == role:
                    return info.name
    return None


def query_by_example(
    index: TileIndex,
    positives: list[Example],
    negatives: list[Example] | None = None,
    text: str | None = None,
    k: int = 10,
    *,
    lam: float = DEFAULT_LAMBDA,
    date: str | None = None,
    exclude_examples: bool = True,
    prior: str | None = None,
    prior_weight: float = W_PRIOR,
    prior_keep: float = 1.0,
    scales: list[float] | None = None,
) -> Answer:
    """Rank tiles by similarity to the examples, optionally modified by ``text``."""
    if k < 1:
        raise InputError("k must be at least 1")
    pos = [example_vector(index, e) for e in positives]
    neg = [example_vector(index, e) for e in (negatives or [])]
    img = examples_vector([v for v, _ in pos], [v for v, _ in neg])
    mod = parse_modification(text)
    layer = match_layer(index, mod.relation[1]) if mod.relation else None
    terms = list(mod.terms)
    if mod.relation and layer is None:  # no layer to measure against: say it in words instead
        terms.append((1.0, ("near " if mod.relation[0] == "near" else "far from ") + mod.relation[1]))
    deltas = [(s, text_vector(index, t)) for s, t in terms if t]
    q = compose_vector(img, deltas, lam)
    s = index.embeddings @ q
    d = _default_date(index, date)
    mask = np.ones(len(index), bool) if d is None else index.dates == d
    if scales:
        mask &= np.isin(index.scales, np.asarray(scales, dtype=float))
    if exclude_examples:
        boxes = shapely.box(index.bounds[:, 0], index.bounds[:, 1], index.bounds[:, 2], index.bounds[:, 3])
        for _, g in pos + neg:
            inter = shapely.area(shapely.intersection(boxes, g))
            mask &= inter / np.maximum(np.minimum(shapely.area(boxes), g.area), 1e-12) < 0.5
    final = s.astype(np.float64).copy()
    details: dict = {
        "lambda": lam,
        "modification": mod.as_dict(),
        "examples": len(pos),
        "negatives": len(neg),
        "date": d,
    }
    if prior:
        from geosearch.change.priors import centroid, index_prior, pool_tiles

        pv, has = index_prior(index, prior)
        ev, ehas = pool_tiles(prior, np.array([g.bounds for _, g in pos]), index.crs)
        c = centroid(ev, ehas)
        if c is not None:
            p = pv @ c
            if prior_keep < 1.0:
                cand = mask & has
                if cand.any():
                    mask &= ~has | (p >= np.quantile(p[cand], 1.0 - prior_keep))
            final = prior_rerank(s, p, has, mask, prior_weight)
            details["prior"] = {"file": str(prior), "weight": prior_weight, "keep": prior_keep}
    order = top_k(final, max(k, 50) if layer else k, mask)
    dist = None
    if layer and len(order):
        from geosearch.relations import check_relation

        polys = index.polygons_wgs84()
        res = check_relation(str(index.path), [(str(i), polys[i]) for i in order], "near", layer, 1e9)
        dist = np.array([r.value if r.value is not None else 1e9 for r in res], dtype=np.float64)
        sign = -1.0 if mod.relation[0] == "near" else 1.0
        comb = _zs(final[order]) + sign * W_RELATION * _zs(np.log1p(dist))
        keep = np.lexsort((order, -comb))
        order, dist = order[keep], dist[keep]
        final = final.copy()
        final[order] = comb[keep]
        details["relation"] = {"predicate": mod.relation[0], "layer": layer, "weight": W_RELATION}
    order = order[:k]
    polys = index.polygons_wgs84()
    regions = []
    for j, i in enumerate(order):
        rid = str(index.tile_ids[i]) + (f"@{index.dates[i]}" if d is not None else "")
        det = {"similarity": round(float(s[i]), 6), "date": index.dates[i]}
        if dist is not None:
            det["distance_m"] = round(float(dist[j]), 1)
        regions.append(
            Region(
                rid,
                polys[i],
                float(final[i]),
                scale_m=float(index.scales[i]),
                evidence_tiles=[str(index.tile_ids[i])],
                details=det,
            )
        )
    query = "like example" + (f" {text}" if text else "")
    return Answer(query, "by-example", regions, details=details)
