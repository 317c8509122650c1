"""The Python API: ``geosearch.open(index).ask(...)`` runs the same answering chain as
``geosearch ask``, the MCP ``answer`` tool and ``geosearch eval``'s default method."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from geosearch.pipeline import Answer, MethodContext


class GeoSearch:
    """An open index."""

    def __init__(self, index_path: str | Path, settings=None):
        from geosearch.index import TileIndex
        from geosearch.settings import get_settings

        self.settings = settings or get_settings()
        self.index = TileIndex.open(index_path)

    def ask(
        self,
        text: str,
        k: int = 5,
        *,
        bbox: Sequence[float] | None = None,
        area=None,
        explain: bool = True,
        layers_dir: str | None = None,
    ) -> Answer:
        """Ranked regions (or an abstention) for a question in words; ``bbox`` is lon/lat, ``area`` a
        shapely geometry in EPSG:4326."""
        from shapely.geometry import box

        from geosearch.chain import answer

        if bbox is not None:
            area = box(*bbox)
        ctx = MethodContext(
            area=area, layers_dir=layers_dir, options={"explain": explain}, settings=self.settings
        )
        return answer(self.index, text, k, ctx)

    def search(self, text: str, k: int = 10, **kw):
        """Coarse tile search (no refinement): a list of :class:`geosearch.search.SearchHit`."""
        from geosearch.search import search

        return search(self.index, text, k, **kw)


def open(index_path: str | Path, settings=None) -> GeoSearch:  # noqa: A001 - geosearch.open(...) reads well
    return GeoSearch(index_path, settings)


def ask(index_path: str | Path, text: str, k: int = 5, **kw) -> Answer:
    return open(index_path).ask(text, k, **kw)
