"""Reranking of region candidates.

Each candidate gets these features (cosine similarities with the unit text vectors):

``s_region``   the candidate's own extent re-embedded: a square crop centred on its bbox (side =
               the bbox's longer side) read at the model's input size, against the query prompts;
``s_source``   the score it was proposed with (mean heatmap score of its component, or the window
               score for whole windows);
``s_neg``      the crop's best score among negative prompts: the parsed query's exclusions ("not X",
               "without X", plus options ``exclude``) and hard negatives from :data:`CONFUSABLE`, the
               table of scene pairs that models confuse (playground / stadium, ...);
``s_generic``  the crop's best score among :data:`GENERIC_PROMPTS` ("an aerial image", ...);
``s_context``  the score of a square crop twice the region's side around it (only when
               ``w_context`` != 0): a region whose surroundings match as well as itself is
               probably a piece of something larger, so the contrast ``s_region - s_context``
               rewards extents that fit the object.

Final score::

    score = w_region * s_region + w_source * s_source
            - w_neg * max(0, s_neg - s_region + neg_margin)
            + w_specific * (s_region - s_generic)
            + w_context * (s_region - s_context)
            + sum(w_e * features[e] for e in extras)

``extras`` are hooks for relation results and GIS priors: any per-candidate feature (e.g.
``relation`` in [0, 1], ``prior`` in [0, 1]) with its weight; absent features count 0.

Default weights (tuned on the dev *tuning* benchmark ``out/aid-dev-tune``, seed 7, only; see
docs/refinement.md): w_region 1.0, w_source 0.5, w_neg 0.5, neg_margin 0.0, w_specific 0.0,
w_context 1.0, extras {"relation": 0.2, "prior": 0.1}.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from geosearch.geo import Bounds
from geosearch.index import TileIndex
from geosearch.refine.common import embed_windows, query_vector
from geosearch.refine.heatmap import Candidate

GENERIC_PROMPTS: list[str] = [
    "an aerial image",
    "a satellite image",
    "a remote sensing image",
    "an aerial photograph of the ground",
    "a top-down view of land",
]

# Scene pairs that CLIP-style models confuse, both ways (AID / RSICD vocabulary).
CONFUSABLE: dict[str, list[str]] = {
    "playground": ["stadium", "baseball field", "school"],
    "stadium": ["playground", "baseball field"],
    "baseball": ["playground", "stadium"],
    "dense residential": ["medium residential", "commercial area"],
    "medium residential": ["dense residential", "sparse residential"],
    "sparse residential": ["medium residential", "farmland"],
    "commercial": ["industrial area", "dense residential", "city center"],
    "industrial": ["commercial area", "storage tanks", "railway station"],
    "center": ["commercial area", "church", "square"],
    "church": ["city center", "square"],
    "square": ["city center", "park"],
    "park": ["resort", "square", "meadow"],
    "resort": ["park", "beach"],
    "pond": ["river", "lake"],
    "lake": ["pond", "river"],
    "river": ["pond", "bridge", "viaduct"],
    "bridge": ["viaduct", "river"],
    "viaduct": ["bridge", "railway station"],
    "meadow": ["farmland", "bare land"],
    "farmland": ["meadow", "sparse residential"],
    "bare land": ["desert", "meadow"],
    "desert": ["bare land", "beach"],
    "beach": ["desert", "river"],
    "mountain": ["forest", "desert"],
    "forest": ["mountain", "park"],
    "port": ["river", "beach"],
    "harbour": ["river", "beach"],
    "airport": ["bare land", "parking lot"],
    "parking": ["industrial area", "commercial area"],
    "railway": ["industrial area", "viaduct"],
    "storage tank": ["industrial area"],
    "school": ["playground", "dense residential"],
}


@dataclass
class RerankWeights:
    region: float = 1.0
    source: float = 0.5
    neg: float = 0.5
    neg_margin: float = 0.0
    specific: float = 0.0
    context: float = 1.0
    extras: dict[str, float] = field(default_factory=lambda: {"relation": 0.2, "prior": 0.1})


def hard_negatives(query: str) -> list[str]:
    """Confusable scenes for the query's scene words that the query itself does not mention."""
    q = query.lower()
    out: list[str] = []
    for key, negs in CONFUSABLE.items():
        if key in q:
            for n in negs:
                head = n.split()[0]
                if head not in q and n not in out:
                    out.append(n)
    return out


def negative_prompts(look_for: str, exclusions: Sequence[str] = ()) -> list[str]:
    """Negative prompts of a query: its exclusions (from the parser, plus any given), then hard
    negatives of what it looks for (``ParsedQuery.look_for()``)."""
    negs = [f"an aerial image of {e}" for e in exclusions if e and e.strip()]
    negs += [f"an aerial image of {n}" for n in hard_negatives(look_for)]
    return list(dict.fromkeys(negs))


def square_around(bounds: Bounds, pad: float = 0.0) -> Bounds:
    x0, y0, x1, y1 = bounds
    side = max(x1 - x0, y1 - y0) * (1 + pad)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def region_embeddings(index: TileIndex, cands: Sequence[Candidate], pad: float = 0.0) -> np.ndarray:
    # pad: extra share of the side around the square crop (1.0 = twice the side)
    """Embeddings of the candidates' own extents (square crops around their bboxes, clipped to the
    mosaic; one counted read each)."""
    mb = index.mosaic().bounds
    crops = []
    for c in cands:
        b = square_around(c.bbox_map, pad)
        crops.append(_shift_inside(b, mb))
    emb, _ = embed_windows(index, crops)
    return emb


def _shift_inside(b: Bounds, mb: Bounds) -> Bounds:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    if w <= mb[2] - mb[0]:
        dx = max(0.0, mb[0] - x0) - max(0.0, x1 - mb[2])
        x0, x1 = x0 + dx, x1 + dx
    if h <= mb[3] - mb[1]:
        dy = max(0.0, mb[1] - y0) - max(0.0, y1 - mb[3])
        y0, y1 = y0 + dy, y1 + dy
    return (x0, y0, x1, y1)


def rerank(
    index: TileIndex,
    cands: list[Candidate],
    prompts: str | Sequence[str] | np.ndarray,
    *,
    negatives: Sequence[str] = (),
    weights: RerankWeights | None = None,
    extra_features: Sequence[dict] | None = None,
    reembed: bool = True,
) -> list[Candidate]:
    """Score candidates with the weighted features above; returns them best first (in place)."""
    w = weights or RerankWeights()
    if not cands:
        return cands
    vec = query_vector(index, prompts)
    model = index.model()
    if reembed:
        emb = region_embeddings(index, cands)
        s_region = emb @ vec
    else:
        emb = None
        s_region = np.array([c.features.get("s_region", c.score) for c in cands])
    s_neg = np.full(len(cands), -1.0)
    s_gen = np.zeros(len(cands))
    if emb is not None:
        if negatives:
            s_neg = (emb @ model.encode_text(list(negatives)).T).max(axis=1)
        s_gen = (emb @ model.encode_text(GENERIC_PROMPTS).T).max(axis=1)
    s_ctx = s_region
    if emb is not None and w.context != 0:
        s_ctx = region_embeddings(index, cands, pad=1.0) @ vec
    for i, c in enumerate(cands):
        if extra_features is not None and i < len(extra_features):
            c.features.update(extra_features[i])
        src = float(c.features.get("s_source", c.score))
        f = c.features
        f.update(
            {
                "s_region": float(s_region[i]),
                "s_source": src,
                "s_neg": float(s_neg[i]),
                "s_generic": float(s_gen[i]),
                "s_context": float(s_ctx[i]),
            }
        )
        score = (
            w.region * f["s_region"]
            + w.source * src
            - w.neg * max(0.0, f["s_neg"] - f["s_region"] + w.neg_margin) * (1.0 if negatives else 0.0)
            + w.specific * (f["s_region"] - f["s_generic"])
            + w.context * (f["s_region"] - f["s_context"])
        )
        score += sum(wt * float(f.get(name, 0.0)) for name, wt in w.extras.items())
        c.score = float(score)
    cands.sort(key=lambda c: -c.score)
    return cands
