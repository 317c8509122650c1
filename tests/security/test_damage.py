"""Damage and data-loss paths: --overwrite never deletes an input or a non-index file; partial,
locked, damaged and too-new indexes each get their own clear message (a partial one is served
only with a flag); read-only commands open read-only; a full disk is named and the build
resumes; FIFOs, devices and symlink loops are refused before any read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import duckdb
import pytest

from geosearch.errors import GeoSearchError, InputError
from tests.fixtures.rasters import write_raster


def _cli(*argv) -> int:
    from geosearch_server.cli import main

    return main([str(a) for a in argv])


@pytest.fixture()
def built(tmp_path, tiny_settings):
    from geosearch.index import build_index

    write_raster(tmp_path / "m.tif", width=128, height=128)
    build_index([tmp_path / "m.tif"], tmp_path / "i.duckdb", settings=tiny_settings, progress=False)
    return tmp_path


def _set_meta(path, key, value) -> None:
    con = duckdb.connect(str(path))
    con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, json.dumps(value)])
    con.close()


def test_overwrite_never_deletes_an_input_or_a_non_index(built, tiny_settings):
    from geosearch.index import build_index

    tif = built / "m.tif"
    size = tif.stat().st_size
    with pytest.raises(InputError, match="one of the input rasters"):
        build_index([tif], tif, settings=tiny_settings, overwrite=True, progress=False)
    assert tif.stat().st_size == size
    notes = built / "notes.duckdb"
    notes.write_text("my notes, not an index")
    with pytest.raises(InputError, match="not a GeoSearch index"):
        build_index([tif], notes, settings=tiny_settings, overwrite=True, progress=False)
    assert notes.read_text() == "my notes, not an index"
    assert _cli("index", tif, "--out", tif, "--overwrite", "--model", "geosearch-tiny", "--quiet") == 2
    assert tif.stat().st_size == size


def test_a_partial_index_is_served_only_with_a_flag(built, tiny_settings, capsys):
    from geosearch_tools import answer as t_answer
    from geosearch_tools import coarse_search as t_cs
    from geosearch_tools.common import Workspace

    _set_meta(built / "i.duckdb", "status", "building")  # as a killed writer leaves it
    ws = Workspace([built], settings=tiny_settings)
    out = t_answer.run(t_answer.AnswerInput(text="red", index="i.duckdb", k=2, preview=False), ws)
    shown = out.regions + out.near_misses
    assert shown and all("index_incomplete" in r.flags for r in shown)
    assert any("partly built" in n for n in out.geojson["properties"]["notes"])
    cs = t_cs.run(t_cs.CoarseSearchInput(index="i.duckdb", query="red", k=2), ws)
    assert cs.warnings and "partly built" in cs.warnings[0]
    assert _cli("search", built / "i.duckdb", "red", "-k", "2") == 0
    assert "warning: index i.duckdb is only partly built" in capsys.readouterr().err


def test_a_locked_index_says_so(built):
    from geosearch.index import TileIndex

    code = textwrap.dedent(
        f"""
        import duckdb, sys, time
        con = duckdb.connect({str(built / "i.duckdb")!r})
        print("locked", flush=True)
        time.sleep(60)
        """
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(GeoSearchError, match="being written by another process"):
            TileIndex.open(built / "i.duckdb")
    finally:
        holder.kill()
        holder.wait()


def test_a_damaged_index_is_named_not_a_traceback(built, capsys):
    from geosearch.index import TileIndex

    path = built / "i.duckdb"
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 8192] = os.urandom(8192)  # a damaged block
    path.write_bytes(bytes(data))
    try:
        TileIndex.open(path)
    except GeoSearchError as exc:
        assert "\n" not in str(exc)
    rc = _cli("info", path)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for argv in (("relate", path, "[]", "near", "roads"), ("layers", "list", path)):
        assert _cli(*argv) in (0, 2)
        assert "Traceback" not in capsys.readouterr().err
    # a file that is no database at all
    (built / "junk.duckdb").write_bytes(os.urandom(5000))
    with pytest.raises(GeoSearchError, match="not a GeoSearch index"):
        TileIndex.open(built / "junk.duckdb")
    assert rc in (0, 2)


def test_an_index_from_a_newer_version_says_so(built):
    from geosearch.index import TileIndex

    _set_meta(built / "i.duckdb", "format_version", 99)
    with pytest.raises(InputError, match="newer GeoSearch"):
        TileIndex.open(built / "i.duckdb")


def test_read_only_commands_open_read_only(built, monkeypatch):
    from geosearch import db

    modes = []
    real = db.connect

    def spy(path=None, *, read_only=False, **kw):
        if path is not None:
            modes.append(read_only)
        return real(path, read_only=read_only, **kw)

    monkeypatch.setattr(db, "connect", spy)
    for mod in ("geosearch.relations.layers", "geosearch.relations.predicates", "geosearch.relations.priors"):
        m = sys.modules.get(mod)
        if m is not None and hasattr(m, "connect"):
            monkeypatch.setattr(m, "connect", spy)
    assert _cli("layers", "list", built / "i.duckdb") == 0
    assert _cli("info", built / "i.duckdb") == 0
    assert modes and all(modes), modes


def test_a_full_disk_is_named_and_the_build_resumes(tmp_path, tiny_settings, monkeypatch):
    from geosearch import index as gi
    from geosearch.index import TileIndex, build_index

    write_raster(tmp_path / "m.tif", width=256, height=256)
    settings = tiny_settings.model_copy(update={"batch_size": 4})
    real = gi._insert_tiles
    calls = {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise duckdb.IOException("IO Error: Could not write file: No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(gi, "_insert_tiles", failing)
    with pytest.raises(GeoSearchError, match="no space left on device") as info:
        build_index([tmp_path / "m.tif"], tmp_path / "i.duckdb", settings=settings, progress=False)
    assert "rollback" not in str(info.value).lower()
    monkeypatch.setattr(gi, "_insert_tiles", real)
    build_index([tmp_path / "m.tif"], tmp_path / "i.duckdb", settings=settings, progress=False)
    build_index([tmp_path / "m.tif"], tmp_path / "clean.duckdb", settings=settings, progress=False)
    a, b = TileIndex.open(tmp_path / "i.duckdb"), TileIndex.open(tmp_path / "clean.duckdb")
    assert a.complete and sorted(a.tile_ids) == sorted(b.tile_ids)


def test_fifos_devices_and_loops_are_refused_before_any_read(built, capsys):
    fifo = built / "roads.geojson"
    os.mkfifo(fifo)
    os.symlink(built / "loop2.tif", built / "loop1.tif")
    os.symlink(built / "loop1.tif", built / "loop2.tif")
    os.mkfifo(built / "pipe.tif")
    os.mkfifo(built / "pipe.duckdb")
    done = threading.Event()
    results = []

    def go():
        results.append(_cli("layers", "add", built / "i.duckdb", fifo, "--name", "roads"))
        results.append(_cli("index", built / "pipe.tif", "--out", built / "x.duckdb", "--quiet"))
        results.append(_cli("index", built / "loop1.tif", "--out", built / "x.duckdb", "--quiet"))
        results.append(_cli("info", built / "pipe.duckdb"))
        results.append(_cli("info", built / "loop1.tif"))
        results.append(_cli("index", "/dev/zero", "--out", built / "x.duckdb", "--quiet"))
        done.set()

    t = threading.Thread(target=go, daemon=True)
    t.start()
    assert done.wait(120), "a FIFO blocked the command"
    assert results == [2] * 6, results
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("FIFO") >= 2 and "symlink loop" in err
