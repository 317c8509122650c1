"""Input validation for the relations engine.

Nothing user-supplied is ever formatted into SQL: values go through parameters, and the only
identifiers we format are table names derived from layer names that match :data:`LAYER_NAME_RE`
*and* exist in the ``layers`` registry.
"""

from __future__ import annotations

import math
import re
from enum import Enum
from numbers import Real

from geosearch.errors import GeoSearchError

LAYER_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
COLUMN_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
MAX_DISTANCE_M = 1e6
ROLES = ("roads", "water", "buildings", "vegetation", "other")
DERIVED_KINDS = ("water", "vegetation", "built_up")


class Predicate(str, Enum):
    """The fixed set of spatial predicates."""

    NEAR = "near"
    FAR_FROM = "far_from"
    WITHIN = "within"
    INTERSECTS = "intersects"
    CONTAINS = "contains"
    ALONG = "along"
    BETWEEN = "between"
    DENSITY = "density"
    EDGE_OF = "edge_of"


PREDICATES: tuple[str, ...] = tuple(p.value for p in Predicate)
#: predicates for which a distance is mandatory
NEEDS_DISTANCE = {Predicate.NEAR, Predicate.FAR_FROM, Predicate.ALONG, Predicate.BETWEEN, Predicate.EDGE_OF}


def validate_layer_name(name: object) -> str:
    """Return ``name`` if it is a syntactically valid layer name, else raise."""
    if not isinstance(name, str) or not LAYER_NAME_RE.fullmatch(name):
        raise GeoSearchError(
            f"invalid layer name {name!r}: use 1-63 characters, lowercase letters, digits and '_', "
            "starting with a letter"
        )
    return name


def validate_column_name(name: object, allowed: list[str] | tuple[str, ...]) -> str:
    """Return ``name`` if it is a plain identifier listed in ``allowed`` (from the registry)."""
    if not isinstance(name, str) or not COLUMN_NAME_RE.fullmatch(name) or name not in allowed:
        raise GeoSearchError(f"unknown column {name!r}; known columns: {', '.join(allowed) or '(none)'}")
    return name


def validate_predicate(name: object) -> Predicate:
    """Map ``name`` to a :class:`Predicate` or raise."""
    if isinstance(name, Predicate):
        return name
    if isinstance(name, str):
        key = name.strip().lower().replace("-", "_")
        for p in Predicate:
            if p.value == key:
                return p
    raise GeoSearchError(f"unknown predicate {name!r}; choose one of: {', '.join(PREDICATES)}")


def validate_distance(value: object, *, what: str = "distance") -> float:
    """A finite distance in metres, 0 <= d <= 1e6. Strings are rejected unless they are plain numbers."""
    if isinstance(value, bool):
        raise GeoSearchError(f"invalid {what} {value!r}: expected a number of metres")
    if isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[+]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", text):
            raise GeoSearchError(f"invalid {what} {value!r}: expected a number of metres")
        value = float(text)
    if not isinstance(value, Real):
        raise GeoSearchError(f"invalid {what} {value!r}: expected a number of metres")
    d = float(value)
    if not math.isfinite(d) or d < 0 or d > MAX_DISTANCE_M:
        raise GeoSearchError(f"invalid {what} {value!r}: must be finite, >= 0 and <= {MAX_DISTANCE_M:g} m")
    return d


def validate_fraction(value: object, *, what: str = "threshold") -> float:
    """A finite number in [0, 1]."""
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise GeoSearchError(f"invalid {what} {value!r}: expected a number in [0, 1]") from exc
    if isinstance(value, bool) or not math.isfinite(f) or not 0.0 <= f <= 1.0:
        raise GeoSearchError(f"invalid {what} {value!r}: expected a number in [0, 1]")
    return f


def validate_positive(value: object, *, what: str, upper: float = 1e9) -> float:
    """A finite number in [0, upper]."""
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise GeoSearchError(f"invalid {what} {value!r}: expected a number") from exc
    if isinstance(value, bool) or not math.isfinite(f) or not 0.0 <= f <= upper:
        raise GeoSearchError(f"invalid {what} {value!r}: expected a finite number in [0, {upper:g}]")
    return f


def validate_role(role: object) -> str:
    """One of :data:`ROLES`."""
    if not isinstance(role, str) or role not in ROLES:
        raise GeoSearchError(f"invalid role {role!r}; choose one of: {', '.join(ROLES)}")
    return role


def infer_role(name: str) -> str:
    """Guess a role from a layer name (``roads``, ``osm_buildings``, ``water_ndwi``...)."""
    hints = {
        "roads": ("road", "street", "highway", "path", "track"),
        "water": ("water", "river", "lake", "sea", "coast", "ocean", "ndwi"),
        "buildings": ("building", "house", "roof", "built"),
        "vegetation": ("veg", "forest", "tree", "ndvi", "park", "green"),
    }
    for role, words in hints.items():
        if any(w in name for w in words):
            return role
    return "other"


def table_for(name: str) -> str:
    """Quoted feature-table identifier for an already validated layer name."""
    return f'"layer_{validate_layer_name(name)}"'
