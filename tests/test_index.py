import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from geosearch import db
from geosearch.errors import GeoSearchError, IndexMismatchError, InputError
from geosearch.index import TileIndex, build_index
from geosearch.settings import Settings
from tests.fixtures.faults import fail_nth_insert
from tests.fixtures.rasters import write_raster


@pytest.fixture()
def raster(tmp_path):
    return write_raster(tmp_path / "m.tif", width=256, height=256)


def test_build_and_open(tmp_path, raster, tiny_settings):
    report = build_index([raster], tmp_path / "i.duckdb", settings=tiny_settings, progress=False)
    assert report.tiles_embedded == 49 + 9
    idx = TileIndex.open(tmp_path / "i.duckdb")
    assert len(idx) == 58 and idx.complete
    assert idx.embeddings.shape == (58, 64)
    assert np.allclose(np.linalg.norm(idx.embeddings, axis=1), 1, atol=1e-4)
    info = idx.info()
    assert info["tiles_per_scale_m"] == {"64": 49, "128": 9}
    assert info["model_id"] == "geosearch-tiny@random-seed0"
    # geometry columns are real spatial geometries in both CRSs
    con = db.connect(tmp_path / "i.duckdb", read_only=True)
    ((minx, maxy),) = con.execute(
        "SELECT min(ST_XMin(geom_wgs84)), max(ST_YMax(geom_wgs84)) FROM tiles"
    ).fetchall()
    con.close()
    assert 14 < minx < 16 and 40 < maxy < 41


def test_rerun_is_incremental(tmp_path, raster, tiny_settings):
    build_index([raster], tmp_path / "i.duckdb", settings=tiny_settings, progress=False)
    built = TileIndex.open(tmp_path / "i.duckdb").meta["build_seconds"]
    again = build_index([raster], tmp_path / "i.duckdb", settings=tiny_settings, progress=False)
    assert again.tiles_embedded == 0 and again.seconds > 0
    idx = TileIndex.open(tmp_path / "i.duckdb")
    assert len(idx) == 58
    assert idx.meta["build_seconds"] == built  # a rerun that embeds nothing is not build time


def test_refuses_model_mismatch(tmp_path, raster, tiny_settings):
    build_index([raster], tmp_path / "i.duckdb", settings=tiny_settings, progress=False)
    con = db.connect(tmp_path / "i.duckdb")
    con.execute("UPDATE meta SET value = ? WHERE key = 'model_id'", [json.dumps("other-model@abc")])
    con.close()
    with pytest.raises(IndexMismatchError, match="built with model"):
        build_index([raster], tmp_path / "i.duckdb", settings=tiny_settings, progress=False)
    idx = TileIndex.open(tmp_path / "i.duckdb")
    with pytest.raises(IndexMismatchError):
        idx.model(tiny_settings)


def test_refuses_other_mosaic_and_tiling(tmp_path, raster, tiny_settings):
    build_index([raster], tmp_path / "i.duckdb", settings=tiny_settings, progress=False)
    other = write_raster(tmp_path / "other.tif", seed=5)
    with pytest.raises(IndexMismatchError, match="another mosaic"):
        build_index([other], tmp_path / "i.duckdb", settings=tiny_settings, progress=False)
    with pytest.raises(IndexMismatchError, match="tiling"):
        build_index(
            [raster],
            tmp_path / "i.duckdb",
            settings=tiny_settings.model_copy(update={"overlap": 0.25}),
            progress=False,
        )
    build_index([other], tmp_path / "i.duckdb", settings=tiny_settings, progress=False, overwrite=True)


def test_a_refused_build_leaves_nothing_behind(tmp_path, capsys):
    """Settings refused before any tile is embedded leave no index (nor folder) that would block
    the next run with "other tiling settings"; an existing index is never removed."""
    from geosearch_server.cli import main

    small = write_raster(tmp_path / "s.tif", width=64, height=64)
    out = tmp_path / "new" / "s1.duckdb"
    base = ["index", str(small), "--out", str(out), "--model", "geosearch-tiny", "--quiet"]
    refusals = [
        (["--scales", "-5"], "positive numbers of metres"),
        (["--scales", "0"], "positive numbers of metres"),
        (["--scales", "1000"], "no tile fits the mosaic"),  # found after the file was opened
        (["--overlap", "1.5"], "overlap must be in [0, 1)"),
    ]
    for extra, why in refusals:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err
        assert not (tmp_path / "new").exists(), extra
    assert main([*base, "--scales", "32"]) == 0, capsys.readouterr().err
    assert TileIndex.open(out).meta["tiling"]["scales_m"] == [32.0]
    assert main([*base, "--scales", "1000"]) == 2  # refused for this index: it stays as it was
    assert "tiling settings" in capsys.readouterr().err
    assert len(TileIndex.open(out)) > 0


def test_an_index_that_cannot_be_created_is_not_called_damaged(tmp_path, capsys):
    from geosearch_server.cli import main

    small = write_raster(tmp_path / "s.tif", width=64, height=64)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    cases = [(blocker / "x.duckdb", f"cannot create {blocker / 'x.duckdb'}: folder {blocker} does not exist")]
    if sys.platform == "linux":
        cases += [
            (Path("/sys/x.duckdb"), "cannot create /sys/x.duckdb: permission denied"),
            (Path("/proc/x.duckdb"), "cannot create /proc/x.duckdb: folder /proc does not accept new files"),
        ]
    for out, want in cases:
        rc = main(
            ["index", str(small), "--out", str(out), "--model", "geosearch-tiny", "--scales", "32", "--quiet"]
        )
        err = capsys.readouterr().err
        assert rc == 2 and want in err, err
        assert "damaged" not in err and "Traceback" not in err
    with pytest.raises(InputError, match="cannot create .*does not exist"):
        db.connect(tmp_path / "no" / "such" / "i.duckdb")
    damaged = tmp_path / "d.duckdb"  # an existing file DuckDB cannot read is still reported as such
    damaged.write_bytes(b"DUCK" + b"\0" * 5000)
    with pytest.raises(GeoSearchError) as caught:
        db.connect(damaged)
    assert "cannot create" not in str(caught.value)


def test_resume_after_kill(tmp_path, raster):
    out = tmp_path / "k.duckdb"
    script = textwrap.dedent(f"""
        import os, signal
        from geosearch.index import build_index
        from geosearch.settings import Settings
        s = Settings(model="geosearch-tiny", batch_size=4, scales_m=[64.0, 128.0])
        batches = []
        def on_batch(done, total):
            batches.append(done)
            if len(batches) == 3:
                os.kill(os.getpid(), signal.SIGKILL)  # die mid-build, no cleanup
        build_index([{str(raster)!r}], {str(out)!r}, settings=s, progress=False, on_batch=on_batch)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert proc.returncode == -9
    partial = TileIndex.open(out)
    assert len(partial) == 12 and not partial.complete
    s = Settings(model="geosearch-tiny", batch_size=4, scales_m=[64.0, 128.0])
    report = build_index([raster], out, settings=s, progress=False)
    assert report.tiles_embedded == 58 - 12
    full = TileIndex.open(out)
    assert len(full) == 58 and full.complete
    assert len(set(full.tile_ids)) == 58


@pytest.mark.parametrize("spare", [True, False])
def test_failed_write_stops_the_pipelined_build_and_it_resumes(tmp_path, raster, monkeypatch, spare):
    """Reads, model and writes overlap (index._embed_stream; without spare cores the model runs
    alone, reads beside writes): an error in the writer stage stops the build with that error,
    the batches written before it stay, and a rerun gives the same index as an uninterrupted
    build."""
    import geosearch.index as index_mod

    monkeypatch.setattr(index_mod, "spare_cores", lambda model: spare)

    s = Settings(model="geosearch-tiny", batch_size=4, scales_m=[64.0, 128.0])
    clean = tmp_path / "clean.duckdb"
    build_index([raster], clean, settings=s, progress=False)
    calls, real_insert = fail_nth_insert(monkeypatch, 4)
    out = tmp_path / "f.duckdb"
    with pytest.raises(OSError, match="disk full"):
        build_index([raster], out, settings=s, progress=False)
    assert len(calls) == 4  # nothing was written after the failed batch
    partial = TileIndex.open(out)
    assert len(partial) == 12 and not partial.complete
    monkeypatch.setattr(index_mod, "_insert_tiles", real_insert)
    assert build_index([raster], out, settings=s, progress=False).tiles_embedded == 58 - 12
    a, b = TileIndex.open(clean), TileIndex.open(out)
    assert list(a.tile_ids) == list(b.tile_ids)
    assert np.abs(np.asarray(a.embeddings) - np.asarray(b.embeddings)).max() < 1e-6


def test_open_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        TileIndex.open(tmp_path / "none.duckdb")
    bogus = tmp_path / "bogus.duckdb"
    bogus.write_bytes(b"garbage" * 100)
    with pytest.raises(InputError):
        TileIndex.open(bogus)


def test_index_opens_from_any_folder(tmp_path, tiny_settings, monkeypatch):
    """Raster paths are stored absolute, so a server started elsewhere (as a desktop MCP client
    starts it) finds them; a raster that is really gone is named with the path looked for."""
    work = tmp_path / "work"
    work.mkdir()
    write_raster(work / "m.tif", width=128, height=128)
    monkeypatch.chdir(work)
    build_index(["m.tif"], "i.duckdb", settings=tiny_settings, progress=False)
    assert TileIndex.open("i.duckdb").meta["mosaic"]["files"] == [str(work / "m.tif")]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert (
        TileIndex.open(work / "i.duckdb")
        .mosaic()
        .read(TileIndex.open(work / "i.duckdb").bounds[0], 8)
        .rgb.shape
    )
    (work / "m.tif").rename(work / "moved.tif")
    with pytest.raises(InputError, match=r"not found; looked for: .*m\.tif"):
        TileIndex.open(work / "i.duckdb").mosaic()


def test_relocate_points_an_index_at_moved_imagery(tmp_path, tiny_settings, monkeypatch, capsys):
    """`geosearch relocate INDEX FOLDER` finds the rasters by name, checks they are the same imagery
    (content fingerprint) and records the new paths; other imagery of the same name is refused and
    the index is left as it was."""
    from geosearch_server.cli import main

    work = tmp_path / "work"
    work.mkdir()
    write_raster(work / "m.tif", width=128, height=128)
    build_index([work / "m.tif"], work / "i.duckdb", settings=tiny_settings, progress=False)
    new = tmp_path / "archive" / "2024"
    new.mkdir(parents=True)
    (work / "m.tif").rename(new / "m.tif")
    with pytest.raises(InputError, match=r"geosearch relocate .*i\.duckdb NEW_FOLDER"):
        TileIndex.open(work / "i.duckdb").mosaic()

    # a different raster under the same name is not the imagery the index was built from
    other = tmp_path / "other"
    other.mkdir()
    write_raster(other / "m.tif", width=128, height=128, seed=5)
    assert main(["relocate", str(work / "i.duckdb"), str(other)]) == 2
    assert "not the imagery this index was built from" in capsys.readouterr().err
    assert TileIndex.open(work / "i.duckdb").meta["mosaic"]["files"] == [str(work / "m.tif")]
    assert main(["relocate", str(work / "i.duckdb"), str(tmp_path / "nowhere")]) == 2

    assert main(["relocate", str(work / "i.duckdb"), str(tmp_path / "archive")]) == 0
    assert "now at" in capsys.readouterr().out
    idx = TileIndex.open(work / "i.duckdb")
    assert idx.meta["mosaic"]["files"] == [str(new / "m.tif")]
    assert idx.mosaic().read(idx.bounds[0], 8).rgb.shape == (8, 8, 3)


def test_an_index_keeps_the_views_it_was_built_with(tmp_path, raster, tiny_settings):
    built_with = tiny_settings.model_copy(update={"image_views": 4})
    build_index([raster], tmp_path / "i.duckdb", settings=built_with, progress=False)
    idx = TileIndex.open(tmp_path / "i.duckdb")
    assert idx.meta["model_id"] == "geosearch-tiny@random-seed0+views4"
    # a query-time model follows the index, not today's settings (which ask for one view)
    model = idx.model(tiny_settings.model_copy(update={"image_views": 1}))
    assert model.views == 4 and model.model_id == idx.meta["model_id"]
    # rebuilding with other views is another model: refused, not mixed into the same index
    with pytest.raises(IndexMismatchError, match="built with model"):
        build_index([raster], tmp_path / "i.duckdb", settings=tiny_settings, progress=False)
