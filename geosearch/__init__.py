"""GeoSearch: text-to-region retrieval in Earth-observation mosaics.

import geosearch
gs = geosearch.open("naip.duckdb")
answer = gs.ask("a lake next to farmland", k=5)   # the same chain as `geosearch ask`
"""

__version__ = "0.1.0"


def open(index_path, settings=None):  # noqa: A001
    """An open index with ``.ask()`` and ``.search()`` (imports the engine lazily)."""
    from geosearch.api import open as _open

    return _open(index_path, settings)


def ask(index_path, text: str, k: int = 5, **kw):
    """``geosearch.open(index_path).ask(text, k, ...)``."""
    from geosearch.api import ask as _ask

    return _ask(index_path, text, k, **kw)
