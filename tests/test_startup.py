"""What ``geosearch ask`` costs before it answers: the modules it imports, the DuckDB spatial
extension it loads, and the weight checksums it recomputes (issue 13, item 4; issue 14)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


SCRIPT = """
import json, sys
import geosearch.db as db
calls = []
_load = db.load_spatial
def spy(con):
    calls.append(1)
    return _load(con)
db.load_spatial = spy
from geosearch_server.cli import main
rc = main(["ask", sys.argv[1], "a bright square", "-k", "2", "--format", "geojson", "--timings"])
heavy = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)
print("RESULT " + json.dumps({"rc": rc, "heavy": heavy, "spatial_loads": len(calls), "torch": "torch" in sys.modules}))
"""


def test_ask_imports_nothing_heavy_and_loads_no_spatial(starter_index):
    """The whole ask path in a fresh interpreter: answers, imports none of HEAVY, never loads the
    spatial extension (no relation asked), and reports its phases with --timings. Its answer comes
    from the index's stored region proposals, which need no image tower: torch is never imported
    (the starter's text tower runs in numpy)."""
    env = dict(os.environ, GEOSEARCH_MODEL="geosearch-starter")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(starter_index), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.rsplit("RESULT ", 1)[1])
    assert result["rc"] == 0
    assert result["heavy"] == []
    assert result["spatial_loads"] == 0
    assert result["torch"] is False
    timings = [line for line in proc.stderr.splitlines() if line.startswith("geosearch-timings ")]
    phases = json.loads(timings[-1].split(" ", 1)[1])["phases"]
    assert {"imports", "index_open", "answer"} <= set(phases) and "model_load" not in phases
    answer = json.loads(proc.stdout.split("\n", 1)[0])
    assert answer["type"] == "FeatureCollection"


def test_cli_parser_imports_nothing_heavy():
    code = (
        "import json, sys\n"
        "from geosearch_server.cli import build_parser\n"
        "build_parser()\n"
        f"print(json.dumps(sorted(m for m in {HEAVY + ['torch', 'duckdb']!r} if m in sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == []


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


def test_console_ask_exits_fast_with_its_output_flushed(starter_index, tmp_path):
    """``geosearch ask`` (argv from the command line) ends with os._exit after flushing: stdout is
    complete, the exit code is kept, files written with --out are whole."""
    out = tmp_path / "a.geojson"
    cmd = [sys.executable, "-m", "geosearch_server", "ask", str(starter_index), "a bright square"]
    proc = subprocess.run(
        [*cmd, "-k", "2", "--format", "geojson", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["type"] == "FeatureCollection"
    assert json.loads(out.read_text())["type"] == "FeatureCollection"
    bad = subprocess.run([*cmd[:-1], "   "], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "empty query" in bad.stderr


def test_a_reader_that_goes_away_gets_no_traceback(starter_index):
    """``geosearch info X | head -1``: the pipe closes before the command writes; it ends quietly
    with the shell's SIGPIPE code, not a BrokenPipeError traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "geosearch_server", "info", str(starter_index)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err[-2000:]
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_the_command_lets_openmp_threads_sleep_unless_told_otherwise():
    code = (
        "import os\n"
        "from geosearch_server.cli import main\n"
        "main(['--version'])\n"
        "import torch\n"
        "print(os.environ['OMP_WAIT_POLICY'], 'torch' in __import__('sys').modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.stdout.split()[-2:] == ["PASSIVE", "True"], proc.stderr[-2000:]
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.stdout.split()[-2:] == ["ACTIVE", "True"], proc.stderr[-2000:]


def test_a_bad_settings_variable_is_one_line_not_a_traceback(starter_index):
    """A ``GEOSEARCH_*`` variable that does not validate names itself in one line, exit 2 (it used
    to end in a pydantic traceback, exit 1), for ``ask`` and ``serve`` alike."""
    for var, value, needle in [
        ("GEOSEARCH_PROPOSAL_W_SIZE", "abc", "valid number"),
        ("GEOSEARCH_PYRAMID_TOP_N", "-1", "greater than or equal to 1"),
    ]:
        env = {**os.environ, var: value}
        for argv in (
            ["ask", str(starter_index), "a bright square"],
            ["serve", "--root", str(starter_index.parent)],
        ):
            proc = subprocess.run(
                [sys.executable, "-m", "geosearch_server", *argv],
                capture_output=True,
                text=True,
                env=env,
                stdin=subprocess.DEVNULL,
                timeout=300,
            )
            err = proc.stderr.strip()
            assert proc.returncode == 2, (argv, err[-2000:])
            assert f"{var}={value!r}" in err and needle in err, err
            assert "Traceback" not in err and len(err.splitlines()) == 1, err


def test_get_settings_names_the_bad_variable(monkeypatch):
    from geosearch.errors import InputError
    from geosearch.settings import get_settings

    monkeypatch.setenv("GEOSEARCH_REGION_SHAPE", "circle")
    get_settings.cache_clear()
    try:
        with pytest.raises(InputError, match="GEOSEARCH_REGION_SHAPE='circle'.*'bbox' or 'polygon'"):
            get_settings()
    finally:
        monkeypatch.delenv("GEOSEARCH_REGION_SHAPE")
        get_settings.cache_clear()
    assert get_settings().region_shape in ("bbox", "polygon")
