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
               rewards extents that fit the object;
``s_size``     ``log2(side / 100 m)``, the candidate's longer side (``Candidate.scale_m``): the
               model judges a small region from a crop blown up far beyond its training framing
               (whole scenes), where its scores run high on pieces of things, so with ``w_size`` >
               0 a smaller region needs a better score to outrank a larger one;
``s_agree``    label agreement with real scenes (only when ``w_agree`` != 0 and the model has a
               labelled reference gallery, :mod:`geosearch.refine.gallery`): the overlap between
               the labels of the candidate's 10 nearest gallery scenes (image to image) and those
               of the query's 10 best-scoring ones. The small starter model tells scenes apart far
               better image to image than text to image, so a candidate that looks like the
               query's real examples gains on a look-alike that only scores alike; 0 without a
               gallery.

Final score::

    score = w_region * s_region + w_source * s_source
            - w_neg * max(0, s_neg - s_region + neg_margin)
            + w_specific * (s_region - s_generic)
            + w_context * (s_region - s_context)
            + w_size * s_size
            + w_agree * s_agree
            + sum(w_e * features[e] for e in extras)

``extras`` are hooks for relation results and GIS priors: any per-candidate feature (e.g.
``relation`` in [0, 1], ``prior`` in [0, 1]) with its weight; absent features count 0.

Default weights (tuned on the dev *tuning* benchmark ``out/aid-dev-tune``, seed 7, only; see
docs/refinement.md): w_region 1.0, w_source 0.5, w_neg 0.5, neg_margin 0.0, w_specific 0.0,
w_context 1.0, w_size 0.0, w_agree 0.0, extras {"relation": 0.2, "prior": 0.1}. The index's
region proposals are ranked with ``w_specific``, ``w_size`` and ``w_agree`` of their own (settings
``proposal_w_specific``, ``proposal_w_size`` and ``proposal_w_agree``; :mod:`geosearch.refine.proposed`).
``proposal_w_agree`` is 0: on the nine tuning benches 0.15 ranked a little better but left the
abstention fewer right answers (docs/refinement.md section 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from geosearch.geo import own_extent_window
from geosearch.index import TileIndex
from geosearch.refine.common import embed_windows, query_vector
from geosearch.refine.gallery import index_gallery
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
    size: float = 0.0
    agree: float = 0.0
    extras: dict[str, float] = field(default_factory=lambda: {"relation": 0.2, "prior": 0.1})


def size_feature(scale_m: float | None) -> float:
    """``s_size``: log2 of the region's longer side over 100 m (0 when unknown)."""
    if not scale_m or scale_m <= 0:
        return 0.0
    return float(np.log2(scale_m / 100.0))


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


def gallery_agreements(index: TileIndex, vec: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """``s_agree`` of each candidate embedding (zeros when the weights have no labelled gallery)."""
    gal = index_gallery(index, labelled=True)
    return gal.agreements(vec, emb) if gal is not None and len(emb) else np.zeros(len(emb))


def region_embeddings(index: TileIndex, cands: Sequence[Candidate], pad: float = 0.0) -> np.ndarray:
    """Embeddings of the candidates' own extents (:func:`geosearch.geo.own_extent_window`; one
    counted read each)."""
    mb = index.mosaic().bounds
    emb, _ = embed_windows(index, [own_extent_window(c.bbox_map, mb, pad) for c in cands])
    return emb


def rerank(
    index: TileIndex,
    cands: list[Candidate],
    prompts: str | Sequence[str] | np.ndarray,
    *,
    negatives: Sequence[str] = (),
    weights: RerankWeights | None = None,
    extra_features: Sequence[dict] | None = None,
    reembed: bool = True,
    embeddings: np.ndarray | None = None,
    context: np.ndarray | None = None,
) -> list[Candidate]:
    """Score candidates with the weighted features above; returns them best first (in place).
    ``embeddings`` / ``context``: their own-extent embeddings and ``s_context`` scores when already
    known (the index's region proposals and stored tiles), so nothing is read."""
    w = weights or RerankWeights()
    if not cands:
        return cands
    vec = query_vector(index, prompts)
    model = index.text_model()  # text only here: no image tower for stored embeddings
    if embeddings is not None:
        emb = embeddings
        s_region = emb @ vec
    elif reembed:
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
    s_agree = None  # only when weighted: a region's features never show an agreement not computed
    if emb is not None and w.agree != 0:
        s_agree = gallery_agreements(index, vec, emb)
    s_ctx = s_region
    if context is not None:
        s_ctx = np.asarray(context, float)
    elif emb is not None and w.context != 0:
        s_ctx = region_embeddings(index, cands, pad=1.0) @ vec
    for i, c in enumerate(cands):
        if extra_features is not None and i < len(extra_features):
            c.features.update(extra_features[i])
        src = float(c.features.get("s_source", c.score))
        if emb is not None:
            c.embedding = np.asarray(emb[i], np.float32)
        f = c.features
        f.update(
            {
                "s_region": float(s_region[i]),
                "s_source": src,
                "s_neg": float(s_neg[i]),
                "s_generic": float(s_gen[i]),
                "s_context": float(s_ctx[i]),
                "s_size": size_feature(c.scale_m),
            }
        )
        if s_agree is not None:
            f["s_agree"] = float(s_agree[i])
        score = (
            w.region * f["s_region"]
            + w.source * src
            - w.neg * max(0.0, f["s_neg"] - f["s_region"] + w.neg_margin) * (1.0 if negatives else 0.0)
            + w.specific * (f["s_region"] - f["s_generic"])
            + w.context * (f["s_region"] - f["s_context"])
            + w.size * f["s_size"]
            + w.agree * f.get("s_agree", 0.0)
        )
        score += sum(wt * float(f.get(name, 0.0)) for name, wt in w.extras.items())
        c.score = float(score)
    cands.sort(key=lambda c: -c.score)
    return cands
