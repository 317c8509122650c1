"""Distributed index builds on Ray Data (geosearch.distributed, ``geosearch index --ray``): the
same index as a single-process build, resume from the shard files, and clear CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from geosearch.errors import InputError
from geosearch.index import TileIndex, build_index
from geosearch.settings import Settings
from tests.fixtures.faults import fail_nth_insert
from tests.fixtures.rasters import write_raster

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'geosearch[ray]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'ray[data]')")

from geosearch.distributed import build_index_ray, shard_root  # noqa: E402

# 58 tiles; 4 per batch, 2 batches per shard: 8 shards
SETTINGS = Settings(model="geosearch-tiny", batch_size=4, scales_m=[64.0, 128.0], proposals=False)
SHARD_TILES = 8


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray runtime for the module (2 CPUs, no dashboard, a small object store), shut down
    afterwards."""
    started = not ray.is_initialized()
    if started:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=False,
            object_store_memory=128 * 1024**2,  # shards are KB: keep the machine's memory for others
        )
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def raster(tmp_path_factory):
    return write_raster(tmp_path_factory.mktemp("ray") / "m.tif", width=256, height=256)


@pytest.fixture(scope="module")
def local_index(raster, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "local.duckdb"
    build_index([raster], out, settings=SETTINGS, progress=False)
    return TileIndex.open(out)


def assert_same_index(a: TileIndex, b: TileIndex) -> None:
    assert a.complete and b.complete
    assert list(a.tile_ids) == list(b.tile_ids)
    assert np.array_equal(np.asarray(a.scales), np.asarray(b.scales))
    assert np.array_equal(np.asarray(a.bounds), np.asarray(b.bounds))
    assert np.abs(np.asarray(a.embeddings) - np.asarray(b.embeddings)).max() < 1e-6
    assert a.info()["tiles_per_scale_m"] == b.info()["tiles_per_scale_m"]


def ray_build(raster, out, **kwargs):
    """A Ray build of the test raster with the module's settings and shard size."""
    return build_index_ray(
        [raster], out, settings=SETTINGS, shard_tiles=SHARD_TILES, progress=False, **kwargs
    )


def test_ray_build_equals_single_process_build(ray_local, raster, local_index, tmp_path):
    out = tmp_path / "ray.duckdb"
    report, stats = ray_build(raster, out, workers=2)
    assert report.tiles_total == report.tiles_embedded == 58
    assert stats.workers == 2 and stats.shards_total == stats.shards_computed == 8
    assert stats.tiles_computed == 58 and stats.shards_reused == 0
    assert not shard_root(out).exists()  # merged, then removed
    assert_same_index(local_index, TileIndex.open(out))
    # a rerun of a complete build starts no actor and changes nothing
    again, stats2 = ray_build(raster, out)
    assert again.tiles_embedded == 0 and stats2.shards_total == 0


def test_killed_ray_build_resumes_from_its_shards(ray_local, raster, local_index, tmp_path, monkeypatch):
    """A build that dies after 3 shards are on disk: the rerun reuses those files (same inodes,
    same bytes) and embeds only the other shards. That rerun dies in turn while merging, after 3
    shards are in DuckDB: the third run embeds nothing and merges the other 5. The index equals an
    uninterrupted build."""
    import geosearch.index as index_mod

    out = tmp_path / "k.duckdb"

    def die_after_three(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt  # what Ctrl-C does: it is no GeoSearchError either

    with pytest.raises(KeyboardInterrupt):
        ray_build(raster, out, workers=1, on_shard=die_after_three)
    shards = sorted(shard_root(out).glob("*.npz"))
    assert len(shards) == 3
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in shards}
    with pytest.raises(InputError, match="no tiles yet"):  # shards are merged only when all are on disk
        TileIndex.open(out)

    seen: dict = {}

    def check_untouched(done: int, total: int) -> None:
        if not seen:  # the first new shard: the old ones are still the very same files
            seen.update({p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in shards})

    inserts, real_insert = fail_nth_insert(monkeypatch, 4)
    with pytest.raises(OSError, match="disk full"):
        ray_build(raster, out, workers=1, on_shard=check_untouched)
    assert seen == before
    assert len(list(shard_root(out).glob("*.npz"))) == 8  # all on disk; 3 merged (one transaction each)
    assert len(TileIndex.open(out)) == 24
    monkeypatch.setattr(index_mod, "_insert_tiles", real_insert)

    report, stats = ray_build(raster, out)
    assert stats.shards_computed == 0 and stats.shards_reused == 5  # the 3 merged ones are skipped
    assert report.tiles_embedded == 58 - 24
    assert not shard_root(out).exists()
    assert_same_index(local_index, TileIndex.open(out))


def test_cli_unreachable_ray_address_is_a_one_line_error(raster, tmp_path):
    """`--ray HOST:PORT` where no cluster listens: exit 2, one clear line, no traceback, quickly."""
    out = tmp_path / "u.duckdb"
    cmd = [sys.executable, "-m", "geosearch_server", "index", str(raster), "--out", str(out)]
    cmd += ["--ray", "127.0.0.1:1", "--quiet", "--scales", "64"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ})
    assert time.perf_counter() - t0 < 60
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [lines[0]] and "cannot reach the Ray cluster at 127.0.0.1:1" in lines[0], proc.stderr
    assert not out.exists()  # refused before any work


def test_ray_is_imported_only_by_ray_builds(raster, tmp_path):
    """`geosearch --version`, a normal build's modules and the CLI parser never import Ray."""
    script = (
        "import sys, json\n"
        "from geosearch_server.cli import main\n"
        "rc = main(['--version'])\n"
        "import geosearch.index, geosearch_server.commands.index\n"
        "print(json.dumps({'rc': rc, 'ray': 'ray' in sys.modules}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"rc": 0, "ray": False}


def test_cli_without_ray_installed_is_a_one_line_error(raster, tmp_path, monkeypatch, capsys):
    from geosearch_server.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "n.duckdb"
    assert main(["index", str(raster), "--out", str(out), "--ray", "auto", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'geosearch[ray]'" in err[0], err
    assert main(["index", str(raster), "--out", str(out), "--ray-workers", "2"]) == 2
    assert "--ray-workers needs --ray" in capsys.readouterr().err
    assert not out.exists()
