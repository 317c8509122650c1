"""GeoSearch: text-to-region retrieval in Earth-observation mosaics.

import geosearch
gs = geosearch.open("naip.duckdb")
answer = gs.ask("a lake next to farmland", k=5)   # the same chain as `geosearch ask`
answer.to_geodataframe(); answer.save("lake.gpkg"); answer.show()

Importing the package is cheap: the engine (torch, rasterio, duckdb) loads on first use.
"""

__version__ = "0.1.0"

__all__ = ["Answer", "GeoSearch", "Region", "__version__", "ask", "index", "open"]


def open(index_path, settings=None):  # noqa: A001
    """An open index with ``.ask()``, ``.search()``, ``.relate()`` and ``.info()``."""
    from geosearch.api import open as _open

    return _open(index_path, settings)


def ask(index_path, text: str, k: int = 5, **kw):
    """``geosearch.open(index_path).ask(text, k, ...)``."""
    from geosearch.api import ask as _ask

    return _ask(index_path, text, k, **kw)


def index(mosaic, out, **kw):
    """Build (or resume) an index of a mosaic and open it: ``geosearch.index("scene.tif", "scene.duckdb")``;
    the mosaic may be URLs (``https://.../scene.tif``, ``s3://...``) or STAC Items (``asset="visual"``)."""
    from geosearch.api import index as _index

    return _index(mosaic, out, **kw)


def __getattr__(name: str):
    if name in ("Answer", "Region"):
        from geosearch import pipeline

        return getattr(pipeline, name)
    if name == "GeoSearch":
        from geosearch.api import GeoSearch

        return GeoSearch
    raise AttributeError(f"module 'geosearch' has no attribute {name!r}")
