"""Relations and geo-constraints between candidate regions and vector layers (DuckDB spatial).

Plain-Python API (no pydantic, no MCP) for the CLI and, later, MCP tools.
"""

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
