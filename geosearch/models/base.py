"""The one embedding-model type every backend returns: an open_clip model plus its preprocessing."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def apply_threads(threads: int) -> None:
    if threads and threads > 0:
        torch.set_num_threads(threads)


@contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` intra-op threads. Small inputs (a text query) are much faster on one
    thread: on a busy machine every OpenMP region waits for a second core (measured: MiniLM on a
    5-token query 8 ms on 1 thread vs 490 ms on 2 threads with the other core loaded)."""
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


TEXT_BATCH = 256  # texts per text-tower batch


@dataclass
class EmbeddingModel:
    """A CLIP-family model ready to embed RGB tiles and text into one unit-norm space.

    ``model`` is an open_clip model (``encode_image`` / ``encode_text``); ``tokenizer`` turns
    strings into its token tensor. ``model_id`` names the exact weights (name + sha256 prefix) and
    is stored in every index, so that indexes built with other weights are refused.
    """

    name: str
    model_id: str
    model: torch.nn.Module
    tokenizer: Callable[[list[str]], Any]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 64
    text_cache_size: int = 1024
    _text_cache: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _cache_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.model.eval().to(self.device)
        self.half = self.device.type == "cuda"
        if self.half:
            self.model.half()

    @property
    def embed_dim(self) -> int:
        return int(self.encode_text(["an aerial image"]).shape[1])

    # -- images -----------------------------------------------------------------------------
    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> normalised float tensor (N, 3, S, S) on the model's device."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        return x.half() if self.half else x

    @torch.inference_mode()
    def encode_images(self, images: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """Embed RGB uint8 images (N, H, W, 3); returns float32 (N, D), L2-normalised."""
        if isinstance(images, list):
            images = (
                np.stack([self._square(im) for im in images]) if images else np.zeros((0, 1, 1, 3), np.uint8)
            )
        out = []
        for start in range(0, len(images), self.batch_size):
            x = self.preprocess(images[start : start + self.batch_size])
            feats = self.model.encode_image(x)
            out.append(F.normalize(feats.float(), dim=-1).cpu().numpy())
        if not out:
            return np.zeros((0, self._dim_guess()), np.float32)
        return np.concatenate(out).astype(np.float32)

    def _square(self, im: np.ndarray) -> np.ndarray:
        if im.shape[0] == im.shape[1] == self.image_size:
            return im
        t = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float()
        t = F.interpolate(t, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return t[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()

    def _dim_guess(self) -> int:
        return int(getattr(self.model, "embed_dim", 0) or self.encode_text(["x"]).shape[1])

    # -- text -------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Embed strings; results are cached per string (LRU, thread-safe). Correct for any number
        of texts: the batch is assembled from what was computed, not from the cache after eviction."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, 1), np.float32)
        unique = list(dict.fromkeys(texts))
        with self._cache_lock:
            got = {t: self._text_cache[t] for t in unique if t in self._text_cache}
        missing = [t for t in unique if t not in got]
        for start in range(0, len(missing), TEXT_BATCH):
            chunk = missing[start : start + TEXT_BATCH]
            tokens = self.tokenizer(chunk)
            if isinstance(tokens, torch.Tensor):
                tokens = tokens.to(self.device)
            with torch_threads(
                1 if self.device.type == "cpu" and len(chunk) <= 8 else torch.get_num_threads()
            ):
                feats = F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu().numpy()
            got.update({t: v.astype(np.float32) for t, v in zip(chunk, feats)})
        with self._cache_lock:
            for t in unique:
                self._text_cache[t] = got[t]
                self._text_cache.move_to_end(t)
            while len(self._text_cache) > self.text_cache_size:
                self._text_cache.popitem(last=False)
        return np.stack([got[t] for t in texts])


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


CHECKSUM_CACHE_ENTRIES = 64
_checksum_lock = threading.Lock()


def _file_key(st: os.stat_result) -> list[int]:
    # any write changes the size or mtime; ctime and inode also change when a file is replaced or
    # its mtime is set back by hand, so a stale entry never matches a different file
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def sha256_cached(path: str | os.PathLike, cache_file: str | os.PathLike | None = None) -> str:
    """:func:`sha256_file`, hashed once per file version: the digest is remembered in a small JSON
    cache (``<cache_dir>/sha256.json``) keyed by the file's absolute path, size, mtime, ctime and
    inode, and the file is hashed again whenever any of them changes. A missing, unreadable or
    unwritable cache only costs the hashing."""
    import json
    from pathlib import Path

    from geosearch.fileio import atomic_write_json

    if cache_file is None:
        from geosearch.settings import get_settings

        cache_file = Path(get_settings().cache_dir) / "sha256.json"
    cache_file = Path(cache_file)
    path = Path(path).absolute()
    key = _file_key(os.stat(path))
    with _checksum_lock:
        try:
            entries = json.loads(cache_file.read_text())
            if not isinstance(entries, dict):
                entries = {}
        except (OSError, ValueError):
            entries = {}
        hit = entries.get(str(path))
        if isinstance(hit, dict) and hit.get("key") == key and isinstance(hit.get("sha256"), str):
            return hit["sha256"]
        digest = sha256_file(path)
        if _file_key(os.stat(path)) != key:  # changed while hashing: do not remember it
            return digest
        entries.pop(str(path), None)
        entries[str(path)] = {"key": key, "sha256": digest}
        while len(entries) > CHECKSUM_CACHE_ENTRIES:
            entries.pop(next(iter(entries)))
        try:
            atomic_write_json(cache_file, entries)
        except OSError:
            pass
        return digest
