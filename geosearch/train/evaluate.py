"""Retrieval metrics for a text-image model on a labelled, captioned split.

* zero-shot scene classification (class prompts averaged over :data:`TEMPLATES`),
* class-name precision@10: each class's first prompt as a query over the split's images,
* caption retrieval R@1/5/10 image->text and text->image.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from geosearch.train.data import TEMPLATES, Dataset, class_prompts

EncodeText = Callable[[list[str]], np.ndarray]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def evaluate_embeddings(
    image_feats: np.ndarray, data: Dataset, encode_text: EncodeText, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    img = _unit(image_feats)
    labels = data.labels
    n_t = len(TEMPLATES)
    prompts = [p for c in data.classes for p in class_prompts(c)]
    pf = _unit(encode_text(prompts)).reshape(len(data.classes), n_t, -1)
    cls = _unit(pf.mean(axis=1))
    pred = (img @ cls.T).argmax(axis=1)
    out: dict[str, float] = {"zeroshot_acc": float((pred == labels).mean())}

    present = [i for i in range(len(data.classes)) if (labels == i).any()]
    p10 = []
    for i in present:
        scores = img @ pf[i, 0]
        top = np.argsort(-scores, kind="stable")[:10]
        p10.append(float((labels[top] == i).mean()))
    out["class_p@10"] = float(np.mean(p10)) if p10 else 0.0

    caps, owner = [], []
    for j, rec in enumerate(data.records):
        for c in rec.captions:
            caps.append(c)
            owner.append(j)
    if caps:
        owner_arr = np.array(owner)
        uniq = list(dict.fromkeys(caps))
        index = {c: i for i, c in enumerate(uniq)}
        tf = _unit(encode_text(uniq))[[index[c] for c in caps]]
        sim = img @ tf.T  # (images, captions)
        # image -> text: rank of the best-ranked own caption
        order = np.argsort(-sim, axis=1, kind="stable")
        hit_rank = np.array(
            [
                np.flatnonzero(owner_arr[order[j]] == j)[0] if (owner_arr == j).any() else 10**9
                for j in range(len(img))
            ]
        )
        has = np.array([(owner_arr == j).any() for j in range(len(img))])
        # text -> image: rank of the caption's own image
        own_score = sim[owner_arr, np.arange(len(caps))]
        t_rank = (sim > own_score[None, :]).sum(axis=0)
        for k in ks:
            out[f"i2t_R@{k}"] = float((hit_rank[has] < k).mean())
            out[f"t2i_R@{k}"] = float((t_rank < k).mean())
    return out


def evaluate_model(model, data: Dataset, images: np.ndarray) -> dict[str, float]:
    """Metrics for an :class:`~geosearch.models.base.EmbeddingModel` on decoded uint8 NHWC images."""
    feats = model.encode_images(images)

    def encode_text(texts: list[str]) -> np.ndarray:  # chunks stay below the model's text LRU size
        return np.concatenate([model.encode_text(texts[i : i + 256]) for i in range(0, len(texts), 256)])

    return evaluate_embeddings(feats, data, encode_text)


def format_metrics(m: dict[str, float]) -> str:
    keys = [
        "zeroshot_acc",
        "class_p@10",
        "tile_acc",
        "i2t_R@1",
        "i2t_R@5",
        "i2t_R@10",
        "t2i_R@1",
        "t2i_R@5",
        "t2i_R@10",
    ]
    return "  ".join(f"{k}={m[k]:.3f}" for k in keys if k in m)
