"""The one embedding-model type every backend returns: an open_clip model plus its preprocessing."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geosearch.errors import GeoSearchError
from geosearch.models.model_id import VIEW_COUNTS, view_model_id
from geosearch.models.text import TextCache


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device for ``device`` (auto, cpu, cuda, cuda:N or mps). A name that is not a
    device, or a device this machine does not have, is a :class:`GeoSearchError` (one line)."""
    from geosearch.settings import check_device

    device = check_device(device, "device")
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps:
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GeoSearchError(
                f"device {device!r} (--device / GEOSEARCH_DEVICE) requested but CUDA is not available on this machine "
                "(no GPU, or torch built without CUDA); use cpu or auto"
            )
        n = int(device.partition(":")[2] or 0)
        if n >= torch.cuda.device_count():
            raise GeoSearchError(
                f"device {device!r} requested but this machine has {torch.cuda.device_count()} CUDA "
                f"device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
    if device == "mps" and not mps:
        raise GeoSearchError(
            "device 'mps' requested but MPS is not available on this machine; use cpu or auto"
        )
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

# (horizontal flip, quarter turns) of each view: 2 = a half turn, 4 = the four rotations, 8 = the
# dihedral group (the rotations of the image and of its mirror image)
VIEWS: dict[int, tuple[tuple[bool, int], ...]] = {
    1: ((False, 0),),
    2: ((False, 0), (False, 2)),
    4: tuple((False, k) for k in range(4)),
    8: tuple((f, k) for f in (False, True) for k in range(4)),
}
assert tuple(VIEWS) == VIEW_COUNTS


def check_views(views: int) -> int:
    if int(views) not in VIEWS:
        raise GeoSearchError(f"image views must be one of {', '.join(map(str, VIEWS))}, got {views!r}")
    return int(views)


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
    views: int = 1  # dihedral views averaged per image (see :meth:`with_views`)

    def __post_init__(self) -> None:
        self.model.eval().to(self.device)
        self.half = self.device.type == "cuda"
        if self.half:
            self.model.half()
        self._texts = TextCache(self._text_features, self.text_cache_size, TEXT_BATCH)

    @property
    def _text_cache(self) -> OrderedDict:
        return self._texts.entries

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
            out.append(self._encode_views(x).cpu().numpy())
        if not out:
            return np.zeros((0, self._dim_guess()), np.float32)
        return np.concatenate(out).astype(np.float32)

    def _encode_views(self, x: torch.Tensor) -> torch.Tensor:
        """Unit embeddings of a preprocessed batch: the mean over :data:`VIEWS`\\[``views``] (an
        aerial scene has no up, so its rotations are the same scene; averaging them steadies a
        small model's embedding and makes it the same for any rotation of the input)."""
        acc = None
        for flip, turns in VIEWS[self.views]:
            xv = torch.rot90(x.flip(-1) if flip else x, k=turns, dims=(-2, -1)) if flip or turns else x
            f = F.normalize(self.model.encode_image(xv).float(), dim=-1)
            acc = f if acc is None else acc + f
        return F.normalize(acc, dim=-1)

    def with_views(self, views: int) -> EmbeddingModel:
        """This model embedding images as the mean of ``views`` dihedral views (1, 2, 4 or 8). The
        count is part of ``model_id`` (``...+views4``): an index or gallery embedded with other views
        is another model's."""
        views = check_views(views)
        if views == self.views:
            return self
        return replace(self, views=views, model_id=view_model_id(self.model_id, views))

    def _square(self, im: np.ndarray) -> np.ndarray:
        if im.shape[0] == im.shape[1] == self.image_size:
            return im
        t = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float()
        t = F.interpolate(t, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return t[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()

    def _dim_guess(self) -> int:
        return int(getattr(self.model, "embed_dim", 0) or self.encode_text(["x"]).shape[1])

    # -- text -------------------------------------------------------------------------------
    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Embed strings (unit vectors); cached per string (LRU, thread-safe)."""
        return self._texts.encode(texts)

    @torch.inference_mode()
    def _text_features(self, chunk: list[str]) -> np.ndarray:
        tokens = self.tokenizer(chunk)
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.to(self.device)
        with torch_threads(1 if self.device.type == "cpu" and len(chunk) <= 8 else torch.get_num_threads()):
            return self.model.encode_text(tokens).float().cpu().numpy()
