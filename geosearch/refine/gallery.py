"""Reference gallery: image embeddings of real, labelled scenes, one file per model.

Abstention has to answer "is there anything like the query in *this* mosaic?". Scores against the
index alone cannot tell: the best tile of a mosaic without airports still scores something for
"an airport", and the index's own score distribution says nothing about how high a real airport
would score. The gallery does: it holds embeddings of real aerial scenes (for the starter model, the
7,976 AID/RSICD **train** chips), so :meth:`Gallery.reference` gives, for any query vector, the
mean score of its best few real examples. The calibration feature ``d_ref`` (see
:mod:`geosearch.refine.calibrate`) is how far the mosaic's best regions fall short of that.
Its labels answer the second question a look-alike raises: do the best regions look like the same
*kind* of real scene as the query's real examples (:meth:`Gallery.agreement`, feature ``g_agree``)?
A pond query whose best regions have river and lake scenes as their nearest real neighbours is
likely not in the mosaic, however high they score.

Files are ``<model name>.gallery.npz``, looked up next to the packaged weights and in
``settings.models_dir``; they record the ``model_id`` they were embedded with, and a gallery of other
weights is never used. Embeddings are stored as int8 with a per-row scale (cosine error < 1e-2).
Build one with ``geosearch models gallery`` (train split or a folder of class sub-folders only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from geosearch.errors import InputError
from geosearch.fileio import atomic_path
from geosearch.settings import Settings, get_settings

PACKAGED_DIR = Path(__file__).resolve().parents[1] / "models" / "weights"
REFERENCE_K = 3  # the reference is the mean score of the query's best K gallery scenes
AGREE_K = 10  # labels of this many nearest gallery scenes describe a query or a region
IMAGE_MATCH_K = 20  # g_image compares regions with this many of the query's best real examples


@dataclass
class Gallery:
    embeddings: np.ndarray  # (N, D) float32, unit rows
    labels: np.ndarray  # (N,) class names (may be empty strings)
    model_id: str
    source: str
    path: Path | None = None
    _last: tuple[bytes, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.embeddings)

    def scores(self, vec: np.ndarray) -> np.ndarray:
        """Every gallery scene's score for a query vector. One answer reads them for ``ref_top``,
        ``g_above`` and ``g_image`` alike, so the last vector's scores are kept (one entry, replaced
        whole, so concurrent queries never see another vector's)."""
        v = np.asarray(vec, np.float32)
        key = v.tobytes()
        last = self._last
        if last is not None and last[0] == key:
            return last[1]
        s = self.embeddings @ v
        self._last = (key, s)
        return s

    def reference(self, vec: np.ndarray, k: int = REFERENCE_K) -> float:
        """Mean of the ``k`` best gallery scores of the query vector: what a real example scores."""
        s = self.scores(vec)
        k = max(1, min(int(k), len(s)))
        return float(np.partition(s, len(s) - k)[-k:].mean())

    def references(self, vecs: np.ndarray, k: int = REFERENCE_K) -> np.ndarray:
        """:meth:`reference` of each row of ``vecs`` (unit query vectors), in one product."""
        s = self.embeddings @ np.asarray(vecs, np.float32).T  # (gallery, queries)
        k = max(1, min(int(k), s.shape[0]))
        return np.partition(s, s.shape[0] - k, axis=0)[-k:].mean(axis=0)

    def best_labels(self, vec: np.ndarray, k: int = REFERENCE_K) -> list[str]:
        """Labels of the ``k`` best gallery scenes (shown in explanations)."""
        s = self.scores(vec)
        return [str(self.labels[i]) for i in np.argsort(-s)[:k]]

    @cached_property
    def labelled(self) -> bool:
        """Whether every scene has a label (what :meth:`agreement` needs)."""
        return bool(len(self.labels)) and all(str(x) for x in self.labels)

    @cached_property
    def _label_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted label names, each scene's index into them), computed once."""
        return np.unique(np.asarray(self.labels, str), return_inverse=True)

    def label_votes(self, vecs: np.ndarray, k: int = AGREE_K) -> tuple[np.ndarray, list[str]]:
        """Share of each label among the ``k`` nearest gallery scenes of each row of ``vecs``
        (unit vectors): ``(rows, labels)`` and the label names."""
        names, codes = self._label_codes
        v = np.atleast_2d(np.asarray(vecs, np.float32))
        k = max(1, min(int(k), len(self.embeddings)))
        s = v @ self.embeddings.T
        near = np.argpartition(-s, k - 1, axis=1)[:, :k]
        votes = np.zeros((len(v), len(names)))
        np.add.at(votes, (np.repeat(np.arange(len(v)), k), codes[near].ravel()), 1.0 / k)
        return votes, [str(n) for n in names]

    def agreements(self, query_vec: np.ndarray, region_embs: np.ndarray, k: int = AGREE_K) -> np.ndarray:
        """Per region: the overlap (dot product of label shares) between the labels of its ``k``
        nearest gallery scenes and those of the query's. 1: every neighbour of both carries one
        label; 0: no label in common. Refinement ranks with it (``s_agree``)."""
        regions = np.atleast_2d(np.asarray(region_embs, np.float32))
        votes, _ = self.label_votes(np.vstack([np.asarray(query_vec, np.float32)[None], regions]), k)
        return votes[1:] @ votes[0]

    def agreement(self, query_vec: np.ndarray, region_embs: np.ndarray, k: int = AGREE_K) -> float:
        """``g_agree``: the mean of :meth:`agreements` over the regions (the calibration's view)."""
        return float(self.agreements(query_vec, region_embs, k).mean())

    def share_above(self, vec: np.ndarray, score: float) -> float:
        """``g_above``: the share of gallery scenes that score above ``score`` for the query vector.
        ``d_ref`` compares the best regions with the query's three best real examples only; this
        asks how many real scenes beat them, so it does not hinge on how extreme those three are."""
        return float(np.mean(self.scores(vec) > float(score)))

    def image_match(self, query_vec: np.ndarray, region_embs: np.ndarray, k: int = IMAGE_MATCH_K) -> float:
        """``g_image``: mean over the regions of their best cosine similarity (image to image) to
        the query's ``k`` best-scoring gallery scenes. A look-alike can score like the query's
        real examples in text space and still not resemble any of them as an image."""
        s = self.scores(query_vec)
        k = max(1, min(int(k), len(s)))
        best = self.embeddings[np.argpartition(-s, k - 1)[:k]]
        regions = np.atleast_2d(np.asarray(region_embs, np.float32))
        return float((regions @ best.T).max(axis=1).mean())

    def nearest_label(self, vecs: np.ndarray, k: int = AGREE_K) -> list[str]:
        """The most common label among the ``k`` nearest gallery scenes of each row."""
        votes, names = self.label_votes(vecs, k)
        return [names[i] for i in votes.argmax(axis=1)]


def gallery_filename(model_name: str) -> str:
    return f"{model_name}.gallery.npz"


def save_gallery(
    path: str | Path, embeddings: np.ndarray, labels: list[str] | np.ndarray, model_id: str, source: str
) -> Path:
    """Write a gallery atomically (int8 rows plus per-row scale)."""
    emb = np.asarray(embeddings, np.float32)
    if emb.ndim != 2 or not len(emb):
        raise InputError("a gallery needs at least one embedding")
    scale = np.abs(emb).max(axis=1, keepdims=True) / 127.0 + 1e-12
    q = np.clip(np.round(emb / scale), -127, 127).astype(np.int8)
    path = Path(path)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(
            tmp,
            q=q,
            scale=scale.astype(np.float32),
            labels=np.asarray(labels, dtype=str),
            model_id=np.array(model_id),
            source=np.array(source),
            created=np.array(time.strftime("%Y-%m-%d")),
        )
    return path


def read_gallery(path: str | Path) -> Gallery:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            emb = z["q"].astype(np.float32) * z["scale"]
            labels, model_id, source = z["labels"], str(z["model_id"]), str(z["source"])
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"not a GeoSearch gallery file: {path} ({exc})") from exc
    emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12
    return Gallery(emb, labels, model_id, source, path)


_LOADED: dict[tuple[str, str], Gallery | None] = {}


def find_gallery(
    model_name: str | None, model_id: str | None, settings: Settings | None = None
) -> Gallery | None:
    """The gallery for these exact weights, or ``None`` (calibration then falls back to features
    that need no gallery). Cached per model."""
    if not model_name or not model_id:
        return None
    key = (model_name, model_id)
    if key not in _LOADED:
        settings = settings or get_settings()
        found = None
        for folder in (Path(settings.models_dir), PACKAGED_DIR):
            p = folder / gallery_filename(model_name)
            if p.is_file():
                g = read_gallery(p)
                if g.model_id == model_id:
                    found = g
                    break
        _LOADED[key] = found
    return _LOADED[key]


def index_gallery(index, labelled: bool = False) -> Gallery | None:
    """:func:`find_gallery` for the weights an index was embedded with (its ``model_name`` and
    ``model_id``); with ``labelled``, only a gallery whose every scene has a label (what label votes
    and agreements need)."""
    gal = find_gallery(index.meta.get("model_name"), index.meta.get("model_id"))
    return gal if gal is not None and (gal.labelled or not labelled) else None


def check_gallery_source(source: str | Path, split: str | None) -> Path:
    """A manifest's ``train`` split or a folder; anything else is refused before a model loads."""
    src = Path(source)
    if src.suffix == ".jsonl" and split != "train":
        raise InputError(
            f"a gallery is built from the train split only (got split={split!r}): dev is for "
            "tuning and test for final evaluation"
        )
    if not src.exists():
        raise InputError(f"gallery source not found: {src}")
    return src


def build_gallery(
    model,
    source: str,
    split: str | None = "train",
    out: str | Path | None = None,
    batch: int = 256,
    progress: bool = False,
) -> tuple[Path, int]:
    """Embed every image of ``source`` (a captioned manifest, only its ``train`` split, or a folder of
    class sub-folders) with ``model`` and save the gallery (default: ``settings.models_dir``)."""
    from geosearch.train.data import decode_images, load_source

    src = check_gallery_source(source, split)
    data = load_source(source, split if src.suffix == ".jsonl" else None)
    images = decode_images(data.records, max(model.image_size, 150))
    embs = []
    for i in range(0, len(images), batch):
        embs.append(model.encode_images(images[i : i + batch]))
        if progress:
            print(f"  {min(i + batch, len(images))}/{len(images)} images", flush=True)
    out = Path(out) if out else Path(get_settings().models_dir) / gallery_filename(model.name)
    desc = f"{len(images)} images from {source}" + (f" (split {split})" if src.suffix == ".jsonl" else "")
    save_gallery(out, np.concatenate(embs), [r.label for r in data.records], model.model_id, desc)
    _LOADED.clear()
    return out, len(images)
