"""Does the model know anything like the query at all?

A CLIP-family model ranks every query, gibberish included: "asdkjh qwe" still has a best tile,
and the calibrated confidence of a region measures how well it matches *relative* to the mosaic.
The reference gallery (real, labelled scenes embedded with the same weights) tells a query the model
has a concept for from one it has none for: a known concept's best real examples score well
(:meth:`Gallery.reference`), an unknown one's score like noise.

The floor is the model's own: the reference score of the *least* well-known concept it was
trained on (the gallery's class names, in plain words). A query whose reference falls below
``UNKNOWN_FACTOR`` times that floor is unknown, and the answer says so instead of returning
confident regions. The factor was chosen on dev data only: on the starter v2 the floor was 0.336
("school"); the aid-dev bench's lowest real query (an RSICD caption) scored 0.197 and must pass,
while nonsense and off-vocabulary words scored 0.11-0.17 ("asdkjh qwe" 0.112, "a cat" 0.167). On
v3 the same factor still separates them: floor 0.331 ("parking"), lowest aid-dev query 0.186,
nonsense 0.12-0.15 ("asdkjh qwe" 0.131, "a cat" 0.137, "hello world" 0.154).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from geosearch.index import TileIndex

UNKNOWN_FACTOR = 0.5
_FLOORS: dict[tuple[str, str], tuple[float, str] | None] = {}


@dataclass(frozen=True)
class VocabularyCheck:
    reference: float  # the query's gallery reference score
    floor: float  # the least well-known trained concept's reference score
    floor_concept: str
    unknown: bool

    def as_dict(self) -> dict:
        return {
            "reference": round(self.reference, 4),
            "known_floor": round(self.floor, 4),
            "floor_concept": self.floor_concept,
            "unknown": self.unknown,
        }

    def reason(self, text: str) -> str:
        return (
            f"not found: the model knows nothing like {text!r} (its best real examples score "
            f"{self.reference:.2f}, the concepts it was trained on score at least {self.floor:.2f}): "
            "use RemoteCLIP or GeoRSCLIP weights (geosearch models list), or describe it in other words"
        )


def plain_words(label: str) -> str:
    """``MediumResidential`` / ``storage_tanks`` -> ``medium residential`` / ``storage tanks``."""
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", str(label)).replace("_", " ").replace("-", " ")
    return " ".join(text.lower().split())


def _floor(index: TileIndex, gallery) -> tuple[float, str] | None:
    """The least well-known trained concept and its reference score (once per model and process:
    the concepts are embedded in one batch and scored against the gallery in one product)."""
    key = (str(index.meta.get("model_name")), str(index.meta.get("model_id")))
    if key not in _FLOORS:
        concepts = sorted({plain_words(x) for x in gallery.labels if str(x).strip()})
        if not concepts:
            _FLOORS[key] = None
        else:
            vecs = index.text_model().encode_text(concepts)
            vecs = vecs / (np.linalg.norm(vecs, axis=1, keepdims=True) + 1e-12)
            refs = gallery.references(vecs)
            i = int(np.argmin(refs))
            _FLOORS[key] = (float(refs[i]), concepts[i])
    return _FLOORS[key]


def check_vocabulary(index: TileIndex, text: str) -> VocabularyCheck | None:
    """The check for ``text`` (what the image should show), or None without a labelled gallery."""
    from geosearch.refine.gallery import index_gallery
    from geosearch.search import text_vector

    gallery = index_gallery(index)
    if gallery is None or not text.strip():
        return None
    floor = _floor(index, gallery)
    if floor is None:
        return None
    ref = gallery.reference(text_vector(index, [text]))
    return VocabularyCheck(ref, floor[0], floor[1], ref < UNKNOWN_FACTOR * floor[0])
