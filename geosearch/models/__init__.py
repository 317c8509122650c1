"""Embedding models: one registry, one :class:`EmbeddingModel` type."""

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
