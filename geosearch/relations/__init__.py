"""Relations and geo-constraints between candidate regions and vector layers (DuckDB spatial).

Plain-Python API (no pydantic, no MCP) for the CLI and, later, MCP tools.

The names below load their module on first use: the answering chain imports
:mod:`geosearch.relations.apply` for every query, and most queries have no relation, so a plain
``ask`` should not pay for geopandas and pandas (~0.4 s) that only layers and predicates need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "derive_layer": "derived",
    "LayerInfo": "layers",
    "drop_layer": "layers",
    "get_layer": "layers",
    "list_layers": "layers",
    "open_index": "layers",
    "read_vector": "layers",
    "register_layer": "layers",
    "store_layer": "layers",
    "RelationResult": "predicates",
    "check_relation": "predicates",
    "compute_priors": "priors",
    "ensure_priors": "priors",
    "load_priors": "priors",
    "PREDICATES": "safety",
    "Predicate": "safety",
}

__all__ = [
    "PREDICATES",
    "LayerInfo",
    "Predicate",
    "RelationResult",
    "check_relation",
    "compute_priors",
    "derive_layer",
    "drop_layer",
    "ensure_priors",
    "get_layer",
    "list_layers",
    "load_priors",
    "open_index",
    "read_vector",
    "register_layer",
    "store_layer",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'geosearch.relations' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"geosearch.relations.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from geosearch.relations.derived import derive_layer
    from geosearch.relations.layers import (
        LayerInfo,
        drop_layer,
        get_layer,
        list_layers,
        open_index,
        read_vector,
        register_layer,
        store_layer,
    )
    from geosearch.relations.predicates import RelationResult, check_relation
    from geosearch.relations.priors import compute_priors, ensure_priors, load_priors
    from geosearch.relations.safety import PREDICATES, Predicate
