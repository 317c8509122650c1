"""Embedding models: one registry, one :class:`EmbeddingModel` type.

The names below load on first use (PEP 562): they import torch, and
:mod:`geosearch.models.text` (the starter's text tower in numpy) must stay importable without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geosearch.models.base import EmbeddingModel, resolve_device
    from geosearch.models.registry import (
        ModelSpec,
        default_model_name,
        get_model,
        get_weight,
        model_specs,
        register_model,
        weights_present,
    )

_HOME = {
    "EmbeddingModel": "geosearch.models.base",
    "resolve_device": "geosearch.models.base",
    "ModelSpec": "geosearch.models.registry",
    "default_model_name": "geosearch.models.registry",
    "get_model": "geosearch.models.registry",
    "get_weight": "geosearch.models.registry",
    "model_specs": "geosearch.models.registry",
    "register_model": "geosearch.models.registry",
    "weights_present": "geosearch.models.registry",
}

__all__ = [
    "EmbeddingModel",
    "ModelSpec",
    "default_model_name",
    "get_model",
    "get_weight",
    "model_specs",
    "register_model",
    "resolve_device",
    "weights_present",
]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'geosearch.models' has no attribute {name!r}")
