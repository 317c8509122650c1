"""The vector store (memory-mapped arrays beside the DuckDB file) and the ANN of an index."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import psutil
import pytest
from shapely.geometry import box

from geosearch import db
from geosearch.errors import DatabaseDamagedError
from geosearch.eval.scale import CRS, SyntheticVectors, write_synthetic_index
from geosearch.index import FORMAT_VERSION, TileIndex, build_index, upgrade_index
from geosearch.search import ranked, search
from geosearch.settings import Settings, get_settings
from geosearch.vectors import store_root
from tests.fixtures.rasters import write_raster

N = 20_000
DATES = ["2020-01-01", "2021-06-01"]


@pytest.fixture()
def use_settings(monkeypatch):
    """Settings for the searches of one test (search reads the process-wide settings)."""

    def apply(**values):
        for k, v in values.items():
            monkeypatch.setenv(f"GEOSEARCH_{k.upper()}", str(v))
        get_settings.cache_clear()

    yield apply
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def ann_index(tmp_path_factory):
    """A 20k-tile synthetic index (4 scales, 2 dates, 128-d) with an ANN (PQ codes), in the real
    format."""
    path = tmp_path_factory.mktemp("ann") / "syn.duckdb"
    vectors = write_synthetic_index(path, N, dim=128, dates=DATES, vectors=SyntheticVectors(dim=128))
    upgrade_index(path, Settings(ann="on"))
    return path, vectors


def recall(got: np.ndarray, want: np.ndarray) -> float:
    return len(np.intersect1d(got, want)) / len(want)


def test_open_maps_the_store_and_reads_nothing(ann_index):
    path, _ = ann_index
    proc = psutil.Process()
    before = proc.memory_info().rss
    index = TileIndex.open(path)
    grown = proc.memory_info().rss - before
    assert isinstance(index.embeddings, np.memmap) and index.embeddings.dtype == np.float32
    assert isinstance(index.tile_ids, np.memmap) and isinstance(index.bounds, np.memmap)
    assert index.store._ann is None  # the ANN is read on the first query that uses it
    assert grown < index.embeddings.nbytes, grown  # 10 MB of vectors, not read (a load takes 2x)
    assert len(index) == N and index.date_list == DATES
    assert index.info()["format_version"] == FORMAT_VERSION == 2


def test_store_round_trip_and_rescoring_is_exact(tmp_path, use_settings):
    """Probing every list, the ANN's top-k (int8 codes, rescored in float32) is the exact top-k."""
    path = tmp_path / "s.duckdb"
    vectors = write_synthetic_index(path, 3000, dim=64, vectors=SyntheticVectors(dim=64, clusters=64))
    upgrade_index(path, Settings(ann="on", ann_codes="sq8"))  # int8 codes
    index = TileIndex.open(path)
    assert "SQ8" in index.info()["search"]["ann"]["kind"]
    con = db.connect(path, read_only=True, spatial=False)
    rows = con.execute("SELECT tile_id, embedding FROM tiles ORDER BY scale_m, tile_id").fetchall()
    con.close()
    assert list(index.tile_ids) == [r[0] for r in rows]
    want = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
    assert np.array_equal(index.embeddings, want)  # the float32 store is bit-exact
    nlist = index.store.ann_meta["nlist"]
    for q in vectors.queries(10):
        use_settings(ann="off")
        exact_ids, exact_s = ranked(index, q, 10)
        use_settings(ann="on", ann_nprobe=nlist, ann_exact_below=0)
        ann_ids, ann_s = ranked(index, q, 10)
        assert np.array_equal(ann_ids, exact_ids)
        assert np.allclose(ann_s, exact_s, atol=1e-6)
        assert np.allclose(ann_s, want[ann_ids] @ q, atol=1e-6)  # scores are the float32 ones


def test_ann_recall_with_exact_filters(ann_index, use_settings):
    path, vectors = ann_index
    index = TileIndex.open(path)
    assert index.search_mode()["mode"] == "ann" and "PQ32x8" in index.search_mode()["ann"]["kind"]
    area = box(500_000, 4_500_000, 505_000, 4_505_000)  # a corner of the synthetic grid (its CRS)
    filters = [{}, {"scales": [256.0]}, {"date": DATES[1]}, {"scales": [128.0, 512.0], "date": DATES[0]}]
    for f in filters + [{"area": area, "area_crs": CRS}]:
        got_r, n = 0.0, 0
        for q in vectors.queries(20):
            use_settings(ann="off")
            exact = search(index, q, 10, **f)
            use_settings(ann="on", ann_exact_below=0)  # on: through the ANN whatever the filter
            approx = search(index, q, 10, **f)
            got_r += recall(np.array([h.tile_id for h in approx]), np.array([h.tile_id for h in exact]))
            n += 1
            for h in approx:  # filters are exact: every hit satisfies them
                if "scales" in f:
                    assert h.scale_m in f["scales"]
                if "date" in f:
                    assert h.date == f["date"]
                if "area" in f:
                    assert h.tile_id in set(index.tile_ids[_area_rows(index, area)])
        assert got_r / n >= 0.95, (f, got_r / n)


def _area_rows(index, area):
    from geosearch.search import area_mask

    return area_mask(index, area, CRS)


def test_switch_is_automatic_and_recorded(tmp_path, use_settings):
    path = tmp_path / "a.duckdb"
    write_synthetic_index(path, 2000, dim=32, vectors=SyntheticVectors(dim=32, clusters=32))
    upgrade_index(path, Settings())  # default ann_min_tiles: far above 2000
    info = TileIndex.open(path).info()["search"]
    assert info["mode"] == "exact" and "ann_min_tiles" in info["reason"] and "ann" not in info
    upgrade_index(path, Settings(ann_min_tiles=1000, ann_codes="sq8"))
    info = TileIndex.open(path).info()["search"]
    assert info["mode"] == "ann" and ">= ann_min_tiles 1000" in info["reason"]
    assert info["ann"]["nlist"] >= 1 and info["ann"]["calibration_recall_at_10"] > 0
    assert info["ann"]["calibration_queries"] == "32 made from the data"
    assert len([p for p in store_root(path).iterdir()]) == 1  # the old store version was removed
    use_settings(ann="off")
    assert TileIndex.open(path).info()["search"]["mode"] == "exact"
    current = TileIndex.open(path).meta["store"]["id"]
    same = upgrade_index(path, Settings(ann="auto", ann_min_tiles=1000, ann_codes="sq8"))  # current: kept
    assert same["id"] == current
    again = upgrade_index(path, Settings(ann="auto", ann_min_tiles=1000, ann_codes="sq8"), rebuild=True)
    assert again["id"] != same["id"] and again["ann"]["how"] == "built"


def test_adding_a_date_updates_the_ann_in_place(tmp_path, use_settings):
    """New rows interleave with the old ones in the index's row order: the ANN keeps its codes,
    renumbers them and adds only the new rows; every row is found at its new position."""
    path = tmp_path / "d.duckdb"
    vectors = write_synthetic_index(
        path, 4000, dim=64, dates=["2020-01-01"], vectors=SyntheticVectors(dim=64)
    )
    first = upgrade_index(
        path, Settings(ann="on", ann_codes="sq8"), queries=lambda: vectors.queries(16, seed=5)
    )
    assert first["ann"]["calibration_queries"] == "16 text prompts"
    con = db.connect(path)
    con.execute("""INSERT INTO tiles SELECT tile_id, scale_m, "row", col, x0, y0, x1, y1, geom, geom_wgs84,
                   valid_fraction, '2019-01-01', embedding FROM tiles WHERE "row" % 2 = 0""")
    con.close()
    entry = upgrade_index(path, Settings(ann="on", ann_codes="sq8"))
    assert entry["ann"]["how"] == "updated" and entry["ann"]["nlist"] == first["ann"]["nlist"]
    assert entry["ann"]["added"] == entry["count"] - first["count"] > 0
    index = TileIndex.open(path)
    assert index.date_list == ["2019-01-01", "2020-01-01"]
    use_settings(ann="on", ann_exact_below=0)
    rng = np.random.default_rng(3)
    for i in rng.choice(len(index), 20, replace=False):
        date = index.dates[i]
        hits = search(index, np.asarray(index.embeddings[i]), 1, date=date, context=0)  # a lookup
        assert (hits[0].tile_id, hits[0].date) == (index.tile_ids[i], date)
    for q in vectors.queries(10):
        use_settings(ann="off")
        exact = ranked(index, q, 10)[0]
        use_settings(ann="on", ann_exact_below=0)
        assert recall(ranked(index, q, 10)[0], exact) >= 0.8


def test_format_1_index_opens_and_upgrades(tmp_path, tiny_settings):
    raster = write_raster(tmp_path / "m.tif", width=128, height=128)
    path = tmp_path / "old.duckdb"
    build_index([raster], path, settings=tiny_settings, progress=False)
    new = TileIndex.open(path)
    want = [h.tile_id for h in search(new, np.asarray(new.embeddings[3]), 5)]
    con = db.connect(path)  # as written before format 2: no store, format_version 1
    con.execute("DELETE FROM meta WHERE key = 'store'")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'format_version'")
    con.close()
    shutil.rmtree(store_root(path))
    old = TileIndex.open(path)
    assert old.store is None and not isinstance(old.embeddings, np.memmap)
    mode = old.info()["search"]
    assert mode["mode"] == "exact" and f"geosearch upgrade {path}" in mode["reason"]
    assert f"geosearch upgrade {path}" in old.upgrade_note() and new.upgrade_note() is None
    assert [h.tile_id for h in search(old, np.asarray(old.embeddings[3]), 5)] == want
    proc = subprocess.run(
        [sys.executable, "-m", "geosearch_server", "upgrade", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    up = TileIndex.open(path)
    assert isinstance(up.embeddings, np.memmap) and up.info()["format_version"] == 2
    assert [h.tile_id for h in search(up, np.asarray(up.embeddings[3]), 5)] == want


def test_damaged_or_crafted_store_is_refused(tmp_path):
    path = tmp_path / "x.duckdb"
    write_synthetic_index(path, 500, dim=16, vectors=SyntheticVectors(dim=16, clusters=8))
    entry = upgrade_index(path, Settings())
    vec = store_root(path) / entry["id"] / "vectors.f32.npy"
    with open(vec, "r+b") as fh:
        fh.truncate(vec.stat().st_size - 64)
    with pytest.raises(DatabaseDamagedError, match="geosearch upgrade"):
        TileIndex.open(path)
    con = db.connect(path)
    con.execute("UPDATE meta SET value = ? WHERE key = 'store'", [json.dumps({**entry, "id": "../../etc"})])
    con.close()
    with pytest.raises(DatabaseDamagedError, match="malformed"):
        TileIndex.open(path)


def test_build_killed_while_writing_the_store_resumes(tmp_path):
    raster = write_raster(tmp_path / "m.tif", width=128, height=128)
    out = tmp_path / "k.duckdb"
    script = textwrap.dedent(f"""
        import os, signal
        import geosearch.vectors as v
        from geosearch.index import build_index
        from geosearch.settings import Settings
        real = v._save
        calls = []
        def dying_save(path, arr):
            calls.append(path)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)  # die half-way through the store, no cleanup
            real(path, arr)
        v._save = dying_save
        s = Settings(model="geosearch-tiny", batch_size=16, scales_m=[64.0, 128.0], proposals=False)
        build_index([{str(raster)!r}], {str(out)!r}, settings=s, progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    partial = TileIndex.open(out)  # DuckDB has every tile; no store is current: read from DuckDB
    assert partial.store is None and not partial.complete and len(partial) > 0
    s = Settings(model="geosearch-tiny", batch_size=16, scales_m=[64.0, 128.0], proposals=False)
    report = build_index([raster], out, settings=s, progress=False)
    assert report.tiles_embedded == 0
    full = TileIndex.open(out)
    assert full.complete and isinstance(full.embeddings, np.memmap) and len(full) == len(partial)
    assert np.array_equal(full.embeddings, partial.embeddings)
    assert [p.name for p in store_root(out).iterdir()] == [full.meta["store"]["id"]]  # orphan removed


def test_score_stats_sample_a_large_index(ann_index, monkeypatch):
    import geosearch.search as gsearch

    path, vectors = ann_index
    index = TileIndex.open(path)
    q = vectors.queries(1)[0]
    full = index.embeddings @ q
    monkeypatch.setattr(gsearch, "STATS_SAMPLE", 2000)
    stats = gsearch.score_stats(index, q, best=float(full.max()))
    assert stats["sampled_tiles"] == 2000 and stats["max"] == pytest.approx(full.max())
    assert stats["mean"] == pytest.approx(full.mean(), abs=0.01) and stats["std"] == pytest.approx(
        full.std(), rel=0.1
    )


def test_store_filters_match_the_arrays(ann_index):
    index = TileIndex.open(ann_index[0])
    for scales in ([128.0], [256.0, 1024.0], [300.0]):
        assert np.array_equal(index.store.scale_mask(scales), np.isin(index.scales, scales))
    for date in [*DATES, "1999-01-01"]:
        assert np.array_equal(index.store.date_mask(date), index.dates == date)


def test_store_links_are_refused(tmp_path):
    path = tmp_path / "l.duckdb"
    write_synthetic_index(path, 300, dim=16, vectors=SyntheticVectors(dim=16, clusters=8))
    entry = upgrade_index(path, Settings())
    target = store_root(path) / entry["id"] / "tile_ids.npy"
    elsewhere = tmp_path / "elsewhere.npy"
    shutil.copy(target, elsewhere)
    target.unlink()
    target.symlink_to(elsewhere)
    with pytest.raises(DatabaseDamagedError, match="holds a link"):
        TileIndex.open(path)


def test_build_with_ann_calibrates_on_the_models_text(tmp_path, tiny_settings):
    raster = write_raster(tmp_path / "m.tif", width=128, height=128)
    path = tmp_path / "b.duckdb"
    s = tiny_settings.model_copy(update={"ann": "on", "proposals": False})
    build_index([raster], path, settings=s, progress=False)
    index = TileIndex.open(path)
    mode = index.info()["search"]
    assert mode["mode"] == "ann" and mode["ann"]["calibration_queries"].endswith("text prompts")
    assert "SQ8" in mode["ann"]["kind"]  # too few tiles for PQ codebooks
    hits = search(index, np.asarray(index.embeddings[5]), 3)
    assert hits[0].tile_id == index.tile_ids[5] and hits[0].tile_score == pytest.approx(1.0, abs=1e-5)


def test_adding_a_date_through_build_index_keeps_the_ann(tmp_path, tiny_settings):
    import faiss

    a = write_raster(tmp_path / "a.tif", width=128, height=128, seed=1)
    b = write_raster(tmp_path / "b.tif", width=128, height=128, seed=2)
    out = tmp_path / "t.duckdb"
    s = tiny_settings.model_copy(update={"ann": "on", "proposals": False})
    build_index([a], out, settings=s, progress=False, date="2020-01-01")
    first = TileIndex.open(out).meta["store"]
    build_index([b], out, settings=s, progress=False, date="2021-01-01")
    index = TileIndex.open(out)
    entry = index.meta["store"]
    assert entry["count"] == 2 * first["count"] and entry["ann"]["how"] == "updated"
    assert index.complete and index.date_list == ["2020-01-01", "2021-01-01"]
    assert [p.name for p in store_root(out).iterdir()] == [entry["id"]]
    emb = np.ascontiguousarray(index.embeddings[:], dtype=np.float32)
    ids = index.store.ann().search(emb, 1)[1][:, 0]
    assert np.allclose(np.sum(emb[ids] * emb, axis=1), 1, atol=5e-3)  # itself, or its twin at the other date
    ann = index.store.ann()
    stored = np.concatenate(
        [faiss.rev_swig_ptr(ann.invlists.get_ids(i), ann.invlists.list_size(i)) for i in range(ann.nlist)]
    )
    assert np.array_equal(np.sort(stored), np.arange(len(index)))  # every row once, renumbered


def test_auto_answers_a_narrow_filter_exactly(ann_index):
    """ann=auto: a filter whose rows cost less to scan than the probes they would need is exact."""
    index = TileIndex.open(ann_index[0])
    q = ann_index[1].queries(1)[0]
    auto = Settings(ann="auto", ann_exact_below=0)
    assert index.store.search(q, 10, None, auto) is not None  # no filter: the ANN
    narrow = np.zeros(len(index), bool)
    narrow[:300] = True
    assert index.store.search(q, 10, narrow, auto) is None  # 300 rows: scanned
    ids, _ = index.store.search(q, 10, narrow, Settings(ann="on", ann_exact_below=0))
    assert len(ids) == 10 and narrow[ids].all()


def test_copied_without_its_store_or_reached_by_a_link(tmp_path):
    path = tmp_path / "c.duckdb"
    write_synthetic_index(path, 400, dim=16, vectors=SyntheticVectors(dim=16, clusters=8))
    upgrade_index(path, Settings())
    link = tmp_path / "link.duckdb"
    link.symlink_to(path)
    linked = TileIndex.open(link)  # the store beside the real file
    assert linked.store is not None and isinstance(linked.embeddings, np.memmap)
    copy = tmp_path / "copy.duckdb"
    shutil.copy(path, copy)  # the file alone: read from DuckDB, and said so
    alone = TileIndex.open(copy)
    assert alone.store is None and np.array_equal(alone.embeddings, linked.embeddings)
    assert "is missing" in alone.info()["search"]["reason"] and "geosearch upgrade" in alone.upgrade_note()
    upgrade_index(copy, Settings())
    assert TileIndex.open(copy).store is not None


def test_warm_reads_the_ann_and_tile_arrays_but_not_the_vectors(ann_index, monkeypatch):
    import builtins

    import geosearch.vectors as vectors_module

    path, vectors = ann_index
    index = TileIndex.open(path)
    want = [h.tile_id for h in search(index, vectors.queries(1, seed=3)[0], 10)]
    read: dict[str, int] = {}

    def spy(file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        name = str(file).rsplit("/", 1)[-1]
        real = f.read

        def counted(n=-1):
            chunk = real(n)
            read[name] = read.get(name, 0) + len(chunk)
            return chunk

        f.read = counted
        return f

    monkeypatch.setattr(vectors_module, "open", spy, raising=False)
    thread = index.store.warm()
    thread.join(timeout=60)
    assert not thread.is_alive() and thread.daemon
    folder = index.store.folder
    for name in ("ann.faiss", "tile_ids.npy", "scales.npy", "bounds.npy", "dates.npy"):
        assert read[name] == (folder / name).stat().st_size, name  # every byte, through the page cache
    assert "vectors.f32.npy" not in read  # the float32 rows are read per query, never all at once
    assert [h.tile_id for h in search(index, vectors.queries(1, seed=3)[0], 10)] == want


def test_upgrade_rebuild_of_an_index_with_a_vector_layer(tmp_path, capsys):
    """A layer's RTREE index needs the spatial extension at every checkpoint: ``upgrade --rebuild``
    (and ``--ann on``) succeed, leave no .wal, and keep only the current store version."""
    import geopandas as gpd

    from geosearch.relations import list_layers, store_layer
    from geosearch_server.cli import main

    path = tmp_path / "l.duckdb"
    write_synthetic_index(path, 600, dim=16, vectors=SyntheticVectors(dim=16, clusters=8))
    upgrade_index(path, Settings())
    lakes = gpd.GeoDataFrame(geometry=[box(15.0, 40.0, 15.01, 40.01)], crs="EPSG:4326")
    store_layer(path, "water", lakes, source="test", role="water")
    for extra in (["--rebuild"], ["--rebuild"], ["--ann", "on"]):
        assert main(["upgrade", str(path), *extra]) == 0, capsys.readouterr().err
        assert not (tmp_path / "l.duckdb.wal").exists()
        assert len(list(store_root(path).iterdir())) == 1  # superseded versions removed
    assert "search ann" in capsys.readouterr().out
    assert [layer.name for layer in list_layers(path)] == ["water"]
    with db.connect(path, read_only=True) as con:  # the RTREE index survived the checkpoints
        assert (
            con.execute("SELECT count(*) FROM duckdb_indexes() WHERE index_name LIKE '%rtree'").fetchone()[0]
            == 2
        )
    assert TileIndex.open(path).info()["search"]["mode"] == "ann"
