"""Change, composed and by-example queries, and embedding-field priors.

* :mod:`geosearch.change.temporal` - time phrases ("since 2015", "new", "disappeared") and
  change scoring between two dates of a multi-date index.
* :mod:`geosearch.change.compose` - a region as the query (tile id, bbox, polygon), optionally
  modified by text ("but closer to the river", "without the ships"); positive / negative examples.
* :mod:`geosearch.change.priors` - AlphaEarth-format embedding fields (64 int8 bands) pooled per
  tile, used to narrow and rerank coarse search.
* :mod:`geosearch.change.spectral` - NDVI / NDWI / bare-soil index per tile from bands beyond RGB.
* :mod:`geosearch.change.methods` - the registered methods ``change``, ``change+spectral``,
  ``by-example`` and ``coarse+prior``.

Plain Python: no MCP imports.
"""
