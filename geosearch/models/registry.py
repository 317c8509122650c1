"""Registry of embedding models and their weights (after torchgeo's get_model / get_weight).

A model name is either a registered preset (``geosearch-starter``, ``remoteclip-vit-b-32``, ...)
or ``ARCH:CHECKPOINT`` for any open_clip architecture plus a local checkpoint file
(``ViT-B-32:/models/RemoteCLIP-ViT-B-32.pt``); ``geosearch-starter:runs/mine/best.safetensors`` is a
``geosearch train`` checkpoint. Architectures are data: the JSON configs in
``geosearch/models/configs`` are registered with open_clip at import.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from geosearch.checksums import sha256_cached
from geosearch.errors import GeoSearchError, WeightsMissingError
from geosearch.models.base import EmbeddingModel, apply_threads, resolve_device
from geosearch.settings import Settings, get_settings

CONFIG_DIR = Path(__file__).parent / "configs"
_configs_registered = False


def register_configs() -> None:
    """Make our architecture JSONs known to open_clip (idempotent)."""
    global _configs_registered
    if _configs_registered:
        return
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    _configs_registered = True


@dataclass(frozen=True)
class ModelSpec:
    """A named model: an open_clip architecture plus where its weights come from."""

    name: str
    arch: str
    description: str
    weights_file: str | None = None  # file name looked up in models_dir
    hub_repo: str | None = None  # Hugging Face repo id, used only when online
    hub_filename: str | None = None
    builder: Callable[[ModelSpec, torch.device, Settings], EmbeddingModel] | None = None
    default: bool = False
    views: int = 1  # dihedral views averaged per image unless settings.image_views says otherwise


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    _REGISTRY[spec.name] = spec
    return spec


def model_specs() -> list[ModelSpec]:
    _ensure_builtin()
    return list(_REGISTRY.values())


def default_model_name() -> str:
    _ensure_builtin()
    for spec in _REGISTRY.values():
        if spec.default:
            return spec.name
    return "geosearch-starter"


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """One quick TCP connect before a download: offline, the hub client would retry for ~30 s."""
    import socket

    try:
        endpoint = os.environ.get("HF_ENDPOINT", "")
        if endpoint:
            from urllib.parse import urlparse

            host = urlparse(endpoint).hostname or host
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def get_weight(name: str, settings: Settings | None = None, *, download: bool = True) -> Path:
    """Local path of a preset's weights; downloads from the hub only when online and allowed."""
    settings = settings or get_settings()
    spec = _spec(name)
    if spec.weights_file is None:
        raise GeoSearchError(f"model {name!r} has no separate weights file")
    candidates = [Path(settings.models_dir) / spec.weights_file, Path(spec.weights_file)]
    for path in candidates:
        if path.is_file():
            return path
    offline = settings.offline or os.environ.get("HF_HUB_OFFLINE") == "1"  # honour the hub's own switch
    reason = ""
    if download and not offline and spec.hub_repo:
        if not _hub_reachable():
            reason = " (the hub is not reachable from here: no network?)"
        else:
            try:
                from huggingface_hub import hf_hub_download

                return Path(
                    hf_hub_download(
                        spec.hub_repo,
                        spec.hub_filename or spec.weights_file,
                        cache_dir=str(settings.models_dir),
                    )
                )
            except Exception as exc:  # noqa: BLE001 - any hub failure becomes the same clear message
                reason = f" (download failed: {type(exc).__name__})"
    raise WeightsMissingError(
        f"weights for {name!r} not found: put {spec.weights_file!r} in {settings.models_dir} "
        f"(from https://huggingface.co/{spec.hub_repo}) or pass {spec.arch}:/path/to/checkpoint" + reason
    )


def weights_present(name: str, settings: Settings | None = None) -> bool:
    spec = _spec(name)
    if spec.weights_file is None:
        return spec.builder is not None
    try:
        get_weight(name, settings, download=False)
        return True
    except GeoSearchError:
        return False


def get_model(
    name: str | None = None,
    *,
    device: str | None = None,
    settings: Settings | None = None,
    views: int | None = None,
) -> EmbeddingModel:
    """Build a ready-to-use :class:`EmbeddingModel` by registry name or ``ARCH:CHECKPOINT``.

    ``views`` (else ``settings.image_views``, else the model's own default) is how many dihedral
    views of each image are averaged (:meth:`EmbeddingModel.with_views`)."""
    settings = settings or get_settings()
    name = name or settings.model or default_model_name()
    apply_threads(settings.threads)
    dev = resolve_device(device or settings.device)
    _ensure_builtin()
    if name in _REGISTRY:
        spec = _REGISTRY[name]
        if spec.builder is not None:
            model = spec.builder(spec, dev, settings)
        else:
            model = _build_open_clip(name, spec.arch, get_weight(name, settings), dev, settings)
        default_views = spec.views
    elif ":" in name:
        arch, ckpt = name.split(":", 1)
        path = Path(ckpt).expanduser()
        if not path.is_file():
            raise WeightsMissingError(f"checkpoint file not found: {path}")
        from geosearch.models.starter import STARTER_ARCH, starter_model

        if arch == STARTER_ARCH:  # a `geosearch train` checkpoint: the starter loader, offline
            model = starter_model(name, path, dev, settings)
        else:
            model = _build_open_clip(name, arch, path, dev, settings)
        default_views = 1
    else:
        known = ", ".join(sorted(_REGISTRY))
        raise GeoSearchError(f"unknown model {name!r}; known: {known}, or ARCH:/path/to/checkpoint")
    return model.with_views(views or settings.image_views or default_views)


_SHARED: dict[tuple, EmbeddingModel] = {}
_SHARED_LOCK = threading.Lock()


def shared_model(name: str, settings: Settings | None = None, views: int | None = None) -> EmbeddingModel:
    """One loaded model per (name, device, views) in this process, built once under a lock: every
    index of a server that uses the same weights shares them (read-only inference)."""
    settings = settings or get_settings()
    key = (name, str(resolve_device(settings.device)), views)
    with _SHARED_LOCK:
        model = _SHARED.get(key)
        if model is None:
            model = _SHARED[key] = get_model(name, settings=settings, views=views)
        return model


def _build_open_clip(
    name: str, arch: str, checkpoint: Path | None, device: torch.device, settings: Settings
) -> EmbeddingModel:
    import open_clip

    register_configs()
    if arch not in open_clip.list_models():
        raise GeoSearchError(f"unknown open_clip architecture {arch!r}")
    import logging

    logging.getLogger().setLevel(
        max(logging.getLogger().level, logging.ERROR)
    )  # open_clip warns on random init
    model = open_clip.create_model(arch, pretrained=None)
    model_id = f"{name}"
    if checkpoint is not None:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise GeoSearchError(f"cannot read checkpoint {checkpoint}: {exc}") from exc
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k.removeprefix("module."): v for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if len(missing) > 0.5 * len(model.state_dict()):
            raise GeoSearchError(f"checkpoint {checkpoint} does not fit architecture {arch}")
        model_id = f"{arch}@{sha256_cached(checkpoint)[:16]}"
    else:
        model_id = f"{arch}@random-seed0"
    cfg = model.visual.preprocess_cfg if hasattr(model.visual, "preprocess_cfg") else {}
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
    return EmbeddingModel(
        name=name,
        model_id=model_id,
        model=model,
        tokenizer=open_clip.get_tokenizer(arch),
        image_size=image_size,
        mean=tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        device=device,
        batch_size=settings.batch_size,
        text_cache_size=settings.text_cache_size,
    )


def _build_tiny(spec: ModelSpec, device: torch.device, settings: Settings) -> EmbeddingModel:
    """A tiny randomly initialised model (fixed seed) for tests and smoke runs: no weights."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _build_open_clip(spec.name, spec.arch, None, device, settings)


def _build_colour(spec: ModelSpec, device: torch.device, settings: Settings) -> EmbeddingModel:
    """A deterministic colour model with known answers ("red", "green", "blue"), for tests that run
    the whole chain in another process (an MCP server, the CLI): no weights."""
    from dataclasses import replace

    from geosearch.refine.testing import colour_model

    return replace(colour_model(32), name=spec.name)


def _spec(name: str) -> ModelSpec:
    _ensure_builtin()
    if name not in _REGISTRY:
        raise GeoSearchError(f"unknown model {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


_builtin_done = False
_builtin_lock = threading.RLock()


def _ensure_builtin() -> None:
    """Register the presets once. Marked done only after they are registered, under a lock, so a
    burst of first calls never sees a half-filled registry."""
    global _builtin_done
    if _builtin_done:
        return
    with _builtin_lock:
        if _builtin_done:
            return
        _register_builtin()
        _builtin_done = True


def _register_builtin() -> None:
    presets = [
        ModelSpec(
            "remoteclip-rn50",
            "RN50",
            "RemoteCLIP ResNet-50 (Liu et al. 2024)",
            "RemoteCLIP-RN50.pt",
            "chendelong/RemoteCLIP",
        ),
        ModelSpec(
            "remoteclip-vit-b-32",
            "ViT-B-32",
            "RemoteCLIP ViT-B/32",
            "RemoteCLIP-ViT-B-32.pt",
            "chendelong/RemoteCLIP",
        ),
        ModelSpec(
            "remoteclip-vit-l-14",
            "ViT-L-14",
            "RemoteCLIP ViT-L/14",
            "RemoteCLIP-ViT-L-14.pt",
            "chendelong/RemoteCLIP",
        ),
        ModelSpec(
            "georsclip-vit-b-32",
            "ViT-B-32",
            "GeoRSCLIP ViT-B/32 trained on RS5M",
            "RS5M_ViT-B-32.pt",
            "Zilun/GeoRSCLIP",
            "ckpt/RS5M_ViT-B-32.pt",
        ),
        ModelSpec(
            "geosearch-tiny",
            "geosearch-tiny",
            "tiny random-weight model for tests and smoke runs (not for real search)",
            builder=_build_tiny,
        ),
        ModelSpec(
            "geosearch-colour",
            "geosearch-colour",
            "deterministic colour model with known answers, for tests (not for real search)",
            builder=_build_colour,
        ),
    ]
    for spec in presets:
        _REGISTRY.setdefault(spec.name, spec)
    try:  # the shipped starter model registers itself as the default
        from geosearch.models import starter  # noqa: F401
    except ImportError:
        pass
