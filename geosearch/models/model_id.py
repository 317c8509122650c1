"""Model ids: ``name@digest`` names the weights; ``+viewsN`` says images were embedded as the mean of
N dihedral views. Torch-free, so that the numpy text tower can read an id without loading torch."""

from __future__ import annotations

VIEW_COUNTS = (1, 2, 4, 8)
_SUFFIX = "+views"


def base_model_id(model_id: str) -> str:
    """``name@digest`` without its ``+viewsN`` suffix: the weights alone."""
    return str(model_id).split(_SUFFIX, 1)[0]


def views_of(model_id: str) -> int:
    """How many views an index or gallery recorded in its ``model_id`` was embedded with."""
    _, _, n = str(model_id).partition(_SUFFIX)
    return int(n) if n.isdigit() and int(n) in VIEW_COUNTS else 1


def view_model_id(model_id: str, views: int) -> str:
    base = base_model_id(model_id)
    return base if views == 1 else f"{base}{_SUFFIX}{views}"
