"""Prompt texts shipped with GeoSearch (Markdown files in this package)."""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

from geosearch.errors import InputError

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@lru_cache(maxsize=32)
def load_prompt(name: str) -> str:
    """The text of ``prompts/<name>.md`` (name without suffix, e.g. ``query_parser``)."""
    stem = name[:-3] if name.endswith(".md") else name
    if not _NAME.match(stem):
        raise InputError(f"invalid prompt name {name!r}")
    path = resources.files(__name__).joinpath(f"{stem}.md")
    if not path.is_file():
        raise InputError(f"no prompt named {stem!r}")
    return path.read_text(encoding="utf-8")


def render(name: str, **values: object) -> str:
    """``load_prompt(name)`` with ``{key}`` placeholders filled (unknown placeholders stay as they are)."""
    text = load_prompt(name)
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    return text
