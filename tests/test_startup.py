"""What ``geosearch ask`` costs before it answers: the modules it imports, the DuckDB spatial
extension it loads, and the weight checksums it recomputes (issue 13, item 4; issue 14)."""

from __future__ import annotations

import pytest

from tests.fixtures.rasters import write_raster

# Never needed to answer a query with the starter model: the MCP / agent stacks, plotting, the
# GeoDataFrame stack (only relations and exports use it) and open_clip's own dependencies (the
# starter's towers are plain torch; open_clip stays the factory for open_clip checkpoints).
HEAVY = [
    "mcp",
    "langgraph",
    "langchain",
    "langchain_core",
    "matplotlib",
    "geopandas",
    "pandas",
    "transformers",
    "sentence_transformers",
    "open_clip",
    "timm",
    "torchvision",
    "torch._dynamo",
]


@pytest.fixture(scope="module")
def starter_index(tmp_path_factory):
    from geosearch.index import build_index
    from geosearch.settings import Settings

    tmp = tmp_path_factory.mktemp("startup")
    raster = write_raster(tmp / "m.tif", width=256, height=256)
    out = tmp / "i.duckdb"
    settings = Settings(model="geosearch-starter", scales_m=[64.0, 128.0], batch_size=32)
    build_index([raster], out, model="geosearch-starter", settings=settings, progress=False)
    return out


def test_index_open_for_search_does_not_load_spatial(starter_index, monkeypatch):
    from geosearch import db
    from geosearch.index import TileIndex

    def refuse(con):
        raise AssertionError("the spatial extension was loaded to open an index for search")

    monkeypatch.setattr(db, "load_spatial", refuse)
    index = TileIndex.open(starter_index)
    assert len(index) > 0 and index.embeddings.dtype.name == "float32"


def test_connect_loads_spatial_only_when_asked(starter_index):
    from geosearch import db

    def has_spatial(con) -> bool:  # ST_Area comes with the extension (DuckDB core has ST_AsText)
        q = "SELECT count(*) FROM duckdb_functions() WHERE function_name = 'ST_Area'"
        return con.execute(q).fetchone()[0] > 0

    con = db.connect(starter_index, read_only=True, spatial=False)
    try:
        assert not has_spatial(con)
        assert con.execute("SELECT count(geom), count(*) FROM tiles").fetchone()[0] > 0  # GEOMETRY read
    finally:
        con.close()
    con = db.connect(starter_index, read_only=True)
    try:
        assert has_spatial(con)
    finally:
        con.close()


def test_index_open_reads_the_same_arrays_as_row_fetch(starter_index):
    """The columnar read (fetchnumpy) gives exactly what the former row-by-row read gave."""
    import numpy as np

    from geosearch import db
    from geosearch.index import TileIndex

    index = TileIndex.open(starter_index)
    con = db.connect(starter_index, read_only=True, spatial=False)
    try:
        rows = con.execute(
            "SELECT tile_id, scale_m, x0, y0, x1, y1, date, embedding FROM tiles "
            "ORDER BY scale_m, tile_id, date NULLS FIRST"
        ).fetchall()
    finally:
        con.close()
    ids, scales, x0, y0, x1, y1, dates, embs = zip(*rows)
    assert list(index.tile_ids) == list(ids)
    assert list(index.dates) == list(dates)
    assert np.array_equal(index.scales, np.array(scales))
    assert np.array_equal(index.bounds, np.column_stack([x0, y0, x1, y1]))
    want = np.frombuffer(b"".join(embs), dtype="<f4").reshape(len(rows), -1)
    assert np.array_equal(index.embeddings, want)
