"""The tile index: one DuckDB file per mosaic collection.

Tables
    ``meta(key, value)``   JSON values: model, mosaic fingerprint and description, tiling settings,
                           CRS (WKT), build statistics, ``status`` (building / complete).
    ``tiles``              one row per embedded tile and date: id, scale (m), grid row/col, bounds
                           and geometry in the mosaic CRS and in EPSG:4326, valid share, date and
                           the embedding (float32 little-endian BLOB).
    ``mosaics``            one row per date: date, files, fingerprint, description (JSON).
    ``proposals``          region proposals (:mod:`geosearch.proposals`) per date: box and outline
                           (WKB) in the mosaic CRS, grouping level, and the embedding of the region
                           at its own extent (:func:`geosearch.geo.own_extent_window`).

Multi-date indexes: ``build_index(new_mosaic, out, date=...)`` on an existing index whose first
mosaic has a date adds that date. Its tiles are planned on the *first* date's grid, so the same grid
cell keeps the same ``tile_id`` at every date (tiles are keyed by ``(tile_id, date)``); the new
mosaic must have the same CRS and pixel size and overlap the first one, else
:class:`IndexMismatchError`. Each date keeps its own stretch.

Building commits every batch in its own transaction, so a killed build leaves a consistent index
and a rerun embeds only the tiles that are missing. Opening an index with another model, mosaic or
tiling than the one it was built with raises :class:`IndexMismatchError` instead of mixing them.

Format 2: when a build completes, the tiles' arrays and embeddings are also written as a
memory-mapped vector store beside the file (``INDEX.store/``, with an ANN for large indexes; see
:mod:`geosearch.vectors`), which the meta key ``store`` points at. Searches open that store and
read nothing up front; the ``embedding`` BLOBs stay in ``tiles`` as the build journal.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import duckdb
import numpy as np
import shapely
from shapely.geometry import box

from geosearch import db
from geosearch.errors import (
    DatabaseDamagedError,
    DatabaseLockedError,
    GeoSearchError,
    IndexMismatchError,
    InputError,
)
from geosearch.fileio import check_regular_file
from geosearch.geo import Bounds, CentreTree, as_crs, boxes_to_wgs84, reproject_geom
from geosearch.remote import canonical_url, is_url, url_name
from geosearch.sandbox import OPEN, FilePolicy, is_virtual
from geosearch.settings import Settings, get_settings
from geosearch.tiling import Tile, plan_tiles, tiles_for_mosaic, valid_fractions
from geosearch.vectors import (
    CALIBRATION_PROMPTS,
    VectorStore,
    ann_wanted,
    open_store,
    remove_stale,
    store_missing,
    store_root,
    write_store,
)

if TYPE_CHECKING:  # rasterio (~0.1 s) and torch (~1.7 s) load only to build or read, not to search
    from geosearch.models import EmbeddingModel
    from geosearch.models.text import StarterText
    from geosearch.mosaic import Mosaic

FORMAT_VERSION = 2  # 2: a memory-mapped vector store (and ANN) beside the DuckDB file
_PROPOSALS_LOCK = threading.Lock()

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS tiles (
    tile_id VARCHAR NOT NULL,
    scale_m DOUBLE NOT NULL,
    "row" INTEGER, col INTEGER,
    x0 DOUBLE, y0 DOUBLE, x1 DOUBLE, y1 DOUBLE,
    geom GEOMETRY,
    geom_wgs84 GEOMETRY,
    valid_fraction DOUBLE,
    date VARCHAR,
    embedding BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS mosaics (date VARCHAR, files VARCHAR, fingerprint VARCHAR, description VARCHAR);
CREATE TABLE IF NOT EXISTS proposals (
    prop_id INTEGER NOT NULL,
    date VARCHAR,
    level INTEGER,
    n_segments INTEGER,
    x0 DOUBLE, y0 DOUBLE, x1 DOUBLE, y1 DOUBLE,
    outline BLOB,
    embedding BLOB NOT NULL
);
"""


@dataclass
class BuildReport:
    """What a build did. ``model_seconds``: wall time inside the image tower; ``read_seconds``:
    time the model waited for window reads (and, without spare cores, for the writes that run
    beside them; with spare cores reads overlap the model, so this is only the part that did not),
    plus proposal segmentation; the rest of ``seconds`` is planning, writing and the vector store."""

    tiles_total: int
    tiles_embedded: int
    tiles_skipped_nodata: int
    seconds: float
    model_seconds: float
    read_seconds: float
    area_km2: float

    @property
    def tiles_per_s(self) -> float:
        return self.tiles_embedded / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        out = self.__dict__.copy()
        out["tiles_per_s"] = round(self.tiles_per_s, 2)
        out["km2_per_min"] = round(self.area_km2 / (self.seconds / 60), 3) if self.seconds > 0 else 0.0
        out["share_outside_model"] = (
            round(1 - self.model_seconds / self.seconds, 3) if self.seconds > 0 else 0.0
        )
        return out


def _index_settings(settings: Settings, mosaic: Mosaic) -> dict:
    return {
        "scales_m": sorted(float(s) for s in settings.scales_m),
        "overlap": settings.overlap,
        "min_valid_fraction": settings.min_valid_fraction,
        "rgb_bands": list(mosaic.bands),
        "stretch": mosaic.stretch,
    }


def check_date(value: str, flag: str = "--date") -> str:
    """An index date: a real calendar date written YYYY-MM-DD (``2020-13-45`` is refused)."""
    import datetime as dt
    import re

    text = str(value).strip()
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise InputError(f"{flag} {value!r}: not a date; give a real date as YYYY-MM-DD") from None
    return day.isoformat()


def build_index(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    model: str | EmbeddingModel | None = None,
    settings: Settings | None = None,
    bands: Sequence[int] | None = None,
    stretch: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    date: str | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    asset: str | None = None,
    embed_tiles: TileEmbedder | None = None,
) -> BuildReport:
    """Embed every valid tile of the mosaic into the index at ``out`` (resumable). ``inputs`` are
    rasters, folders, URLs or STAC Items / ItemCollections (``asset``: which asset of the Items).
    ``embed_tiles``: what embeds the missing tiles (default :func:`embed_tiles_locally`; a Ray
    build passes :class:`geosearch.distributed.RayTileEmbedder`); planning, resume, proposals and
    the vector store are the same either way."""
    settings = settings or get_settings()
    if settings.proposals:  # a proposal backend that cannot run here is refused before any work
        from geosearch.proposals import ProposalSettings, check_backend

        check_backend(ProposalSettings.from_settings(settings))
    t_start = time.perf_counter()
    from geosearch.mosaic import open_mosaic

    if date is not None:
        date = check_date(date)
    mosaic = open_mosaic(inputs, bands=bands, stretch=stretch, asset=asset)  # type: ignore[arg-type]
    from geosearch.tiling import check_scales

    check_scales(mosaic, settings.scales_m)  # before the model loads or the index file is created
    from geosearch.models import EmbeddingModel, get_model

    emb_model = model if isinstance(model, EmbeddingModel) else get_model(model, settings=settings)
    out = Path(out)
    if out.exists() and overwrite:
        _check_overwritable(out, mosaic)
        out.unlink()
        Path(str(out) + ".wal").unlink(missing_ok=True)
        shutil.rmtree(store_root(out), ignore_errors=True)
    if out.exists() and out.is_dir():
        raise InputError(f"index path is a folder: {out}")
    if not 0 <= settings.overlap < 1:  # every setting is checked before the index file is created
        raise InputError("overlap must be in [0, 1)")
    # a file (and folders) this run creates is removed again if the run fails before its first
    # tile is embedded (a refused plan): a later run must not find it and its refused settings
    fresh = not os.path.lexists(out)
    made = _make_folders(out)
    try:
        con = db.connect(out)
    except BaseException:
        if fresh:
            _discard_new_index(out, made)
        raise
    stack = ExitStack()  # stops a segmentation still running when the build fails
    planned = False  # True once the plan is accepted and tiles are about to be embedded
    try:
        con.execute(SCHEMA)
        meta = _read_meta(con)
        fingerprint = mosaic.fingerprint()
        tiling = _index_settings(settings, mosaic)
        grid = mosaic
        if meta:
            date, grid = _prepare_date(con, meta, mosaic, emb_model.model_id, fingerprint, tiling, out, date)
        else:
            bw = mosaic.bounds_wgs84
            _write_meta(
                con,
                {
                    "format_version": FORMAT_VERSION,
                    "model_name": emb_model.name,
                    "model_id": emb_model.model_id,
                    "mosaic_fingerprint": fingerprint,
                    "mosaic": mosaic.describe(),
                    "tiling": tiling,
                    "crs": as_crs(mosaic.crs).to_wkt(),
                    "bounds_wgs84": list(bw),
                    "status": "building",
                    "build_seconds": 0.0,
                    "model_seconds": 0.0,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "date": date,
                    "dates": [date] if date else [],
                },
            )
            _add_mosaic_row(con, date, mosaic, fingerprint)
        if grid is mosaic:
            tiles, fracs = tiles_for_mosaic(
                mosaic, tiling["scales_m"], tiling["overlap"], tiling["min_valid_fraction"]
            )
        else:  # a further date: the first date's grid, this mosaic's valid pixels
            planned = plan_tiles(grid, tiling["scales_m"], tiling["overlap"])
            all_fracs = valid_fractions(mosaic, planned)
            keep = all_fracs > max(tiling["min_valid_fraction"], 0.0)
            tiles, fracs = [t for t, k in zip(planned, keep) if k], all_fracs[keep]
        if not tiles:
            raise InputError(
                "no tile fits the mosaic: it is smaller than the smallest scale "
                f"({min(tiling['scales_m']):g} m) or has no valid data"
            )
        done = {
            r[0]
            for r in con.execute(
                "SELECT tile_id FROM tiles WHERE date IS NOT DISTINCT FROM ?", [date]
            ).fetchall()
        }
        todo = [(t, f) for t, f in zip(tiles, fracs) if t.tile_id not in done]
        planned = True
        planned_total = len(tiles)
        report = BuildReport(planned_total, 0, 0, 0.0, 0.0, 0.0, mosaic.area_km2)
        batch = max(1, settings.batch_size)
        bar = _progress(planned_total, len(done), progress)
        chunks = [todo[s : s + batch] for s in range(0, len(todo), batch)]
        # segmentation beside the tiles only where it does not slow the tower (spare_cores), or
        # where the tiles are embedded elsewhere; else it runs after them
        beside = embed_tiles is not None or spare_cores(emb_model)
        segmenting = _start_segmentation(con, mosaic, settings, date, stack) if beside else None

        def write_tiles(chunk: list, emb: np.ndarray) -> None:
            _insert_tiles(con, mosaic, [t for t, _ in chunk], np.array([f for _, f in chunk]), emb, date)
            report.tiles_embedded += len(chunk)
            bar.update(len(chunk))
            if on_batch:
                on_batch(len(done) + report.tiles_embedded, planned_total)

        model_seconds, read_seconds = (embed_tiles or embed_tiles_locally)(
            mosaic, emb_model, chunks, write_tiles
        )
        bar.close()
        if settings.proposals:
            p_model, p_read = _build_proposals(con, mosaic, emb_model, settings, date, progress, segmenting)
            model_seconds += p_model
            read_seconds += p_read
        meta = _read_meta(con)
        store = _current_store(
            con, out, meta, settings, lambda: emb_model.encode_text(list(CALIBRATION_PROMPTS))
        )
        report.seconds = time.perf_counter() - t_start
        report.model_seconds, report.read_seconds = model_seconds, read_seconds
        # a rerun over a complete index (eval reuses one this way) embeds nothing: not build time
        worked = model_seconds > 0 or meta.get("status") != "complete" or store != meta.get("store")
        first = grid is mosaic and meta.get("date") == date
        _write_meta(  # the switch to the new store and ``complete`` in one transaction
            con,
            {
                "status": "complete",
                "format_version": FORMAT_VERSION,
                "store": store,
                "build_seconds": float(meta.get("build_seconds", 0)) + (report.seconds if worked else 0.0),
                "model_seconds": float(meta.get("model_seconds", 0)) + model_seconds,
                "tiles_embedded": con.execute("SELECT count(*) FROM tiles").fetchone()[0],
                **({"area_km2": mosaic.area_km2} if first else {}),
            },
        )
        con.execute("CHECKPOINT")
        remove_stale(out, store["id"])
    except duckdb.Error as exc:  # a full disk, a damaged file...: named, and the build resumes
        raise db.describe_error(exc, str(out)) from exc
    finally:
        stack.close()
        try:
            con.close()
        except duckdb.Error:
            pass
        if fresh and not planned:
            _discard_new_index(out, made)
    return report


def _make_folders(out: Path) -> list[Path]:
    """Create the folder of ``out`` (and its missing parents); returns the folders created,
    deepest first. A folder that cannot be created is one clear error."""
    made = []
    folder = out.parent
    while not os.path.lexists(folder) and folder != folder.parent:
        made.append(folder)
        folder = folder.parent
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise db.cannot_create_error(out, exc.strerror or str(exc)) from None
    return made


def _discard_new_index(out: Path, made: list[Path]) -> None:
    """Remove an index file this run created (with its WAL and store folder) and the folders it
    made for it, when the run was refused before any tile was embedded."""
    for p in (out, Path(str(out) + ".wal")):
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass
    shutil.rmtree(store_root(out), ignore_errors=True)
    for folder in made:
        try:
            folder.rmdir()  # only while empty
        except OSError:
            break


def _current_store(
    con, path: Path, meta: dict, settings: Settings, queries=None, rebuild: bool = False
) -> dict:
    """The meta entry of a store matching the ``tiles`` table: the current one when it still
    does (a rerun of a finished build), else a newly written one (its ANN updated when only
    dates were added)."""
    prev = meta.get("store")
    n = con.execute("SELECT count(*) FROM tiles").fetchone()[0]
    if (
        not rebuild
        and prev
        and prev.get("count") == n
        and bool(prev.get("ann")) == ann_wanted(n, settings)[0]
    ):
        try:
            open_store(path, prev)
            return prev
        except GeoSearchError:
            pass  # damaged or deleted: written anew below
    return write_store(con, path, settings, None if rebuild else prev, queries)


def upgrade_index(
    path: str | Path,
    settings: Settings | None = None,
    queries: Callable[[], np.ndarray] | None = None,
    rebuild: bool = False,
) -> dict:
    """Write the vector store (and ANN, by ``settings.ann``) of an existing index from its tiles,
    e.g. an index from before format 2; no raster is read. A current store is kept unless
    ``rebuild`` (e.g. other ANN codes). ``queries``: unit query vectors to calibrate the ANN on
    (:func:`geosearch.vectors.write_store`). Returns the store's meta entry."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"index not found: {path}")
    settings = settings or get_settings()
    # spatial loaded: the CHECKPOINT below (and the one DuckDB makes on close) fails with a FATAL
    # error on an index whose vector layers carry an RTREE index unless the extension is loaded
    con = db.connect(path)
    try:
        meta = _read_meta(con)
        if "model_id" not in meta:
            raise InputError(f"{path} is not a GeoSearch index")
        if not con.execute("SELECT count(*) FROM tiles").fetchone()[0]:
            raise InputError(f"index {path} has no tiles yet (build it with `geosearch index`)")
        store = _current_store(con, path, meta, settings, queries, rebuild)
        _write_meta(con, {"store": store, "format_version": FORMAT_VERSION})
        con.execute("CHECKPOINT")
    except duckdb.Error as exc:
        raise db.describe_error(exc, str(path)) from exc
    finally:
        con.close()
    remove_stale(path, store["id"])
    return store


TileChunk = list[tuple[Tile, float]]  # tiles still to embed, with their valid share
# (mosaic, model, chunks, write) -> (model seconds, read seconds): embeds every chunk and hands
# each chunk with its embeddings to ``write`` (which inserts them into the index)
TileEmbedder = Callable[
    ["Mosaic", "EmbeddingModel", Sequence[TileChunk], Callable[[TileChunk, np.ndarray], None]],
    tuple[float, float],
]


def embed_tiles_locally(
    mosaic: Mosaic,
    emb_model: EmbeddingModel,
    chunks: Sequence[TileChunk],
    write: Callable[[TileChunk, np.ndarray], None],
) -> tuple[float, float]:
    """The single-process :data:`TileEmbedder`: the read / embed / write pipeline in this process."""
    return _embed_stream(mosaic, emb_model, chunks, lambda chunk: [t.bounds for t, _ in chunk], write)


def _embed_stream(
    mosaic: Mosaic,
    emb_model: EmbeddingModel,
    chunks: Sequence,
    windows_of: Callable[[Any], list],
    write: Callable[[Any, np.ndarray], None],
    *,
    strips: bool = True,
) -> tuple[float, float]:
    """Embed the windows of each chunk and hand the embeddings to ``write``, in chunk order, as a
    three-stage pipeline: the next chunk's windows are read (:meth:`Mosaic.read_many`, in a
    reader thread; ``strips``: tiles, cut from strips) and the last chunk is written (DuckDB, in
    a writer thread) while the model embeds the current one, so the build's wall time is the
    model's plus what does not overlap. Without spare cores
    (:func:`spare_cores`) the model runs alone and the reads of the next chunk run beside the
    write of the last. Returns (model seconds, seconds the model waited for reads and writes).
    An error in any stage stops the build; what was written stays (the build resumes)."""
    size = emb_model.image_size
    model_seconds = wait_seconds = 0.0
    if not chunks:
        return model_seconds, wait_seconds
    overlap = spare_cores(emb_model)
    with ThreadPoolExecutor(max_workers=1) as reader, ThreadPoolExecutor(max_workers=1) as writer:

        def read(chunk) -> Future:
            return reader.submit(mosaic.read_many, windows_of(chunk), size, strips=strips)

        pending = read(chunks[0])
        written = None
        for i, chunk in enumerate(chunks):
            t0 = time.perf_counter()
            images = np.stack([img.rgb for img in pending.result()])
            if not overlap and written is not None:
                written.result()  # the model runs alone; one write in flight, rows land in order
            wait_seconds += time.perf_counter() - t0
            if overlap and i + 1 < len(chunks):
                pending = read(chunks[i + 1])
            t0 = time.perf_counter()
            emb = emb_model.encode_images(images)
            model_seconds += time.perf_counter() - t0
            if overlap and written is not None:
                written.result()  # one write in flight: rows land in order, errors surface here
            written = writer.submit(write, chunk, emb)
            if not overlap and i + 1 < len(chunks):
                pending = read(chunks[i + 1])  # beside the write, not beside the model
        written.result()
    return model_seconds, wait_seconds


def spare_cores(emb_model: EmbeddingModel) -> bool:
    """Whether reads, writes and segmentation can run beside the image tower: a GPU runs it, or
    the machine has more cores than its torch threads. Where the tower's threads already take
    every core, work beside it costs more than its own CPU: each OpenMP op of the tower waits for
    its slowest thread, and one of them waits for a core (measured on 2 cores: the tower took
    33 s inside an overlapped build for tiles it embeds alone in 21 s). Then the stages take
    turns."""
    if emb_model.device.type != "cpu":
        return True
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return usable > torch.get_num_threads()


@dataclass
class _Segmentation:
    """Proposal segmentation running in a thread while the tiles are embedded (it reads the
    mosaic through its own per-thread handles), where the tower leaves cores to spare
    (:func:`spare_cores`) or the tiles are embedded elsewhere (Ray)."""

    future: Future
    cancel: threading.Event
    started: float


def _start_segmentation(
    con, mosaic: Mosaic, settings: Settings, date: str | None, stack: ExitStack
) -> _Segmentation | None:
    """Start finding this date's proposals in the background when the build will need them (on,
    and not already complete with the same settings); ``stack`` cancels it if the build fails."""
    if not settings.proposals:
        return None
    from geosearch.proposals import ProposalSettings, propose_mosaic

    ps = ProposalSettings.from_settings(settings)
    recorded = _read_meta(con).get("proposals" if date is None else f"proposals@{date}") or {}
    if ps.matches(recorded.get("settings")) and recorded.get("status") == "complete":
        return None
    pool = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="geosearch-segment"))
    cancel = threading.Event()
    stack.callback(cancel.set)  # runs first on close: the thread stops at its next block
    return _Segmentation(pool.submit(propose_mosaic, mosaic, ps, cancel), cancel, time.perf_counter())


def _build_proposals(
    con,
    mosaic: Mosaic,
    emb_model: EmbeddingModel,
    settings: Settings,
    date: str | None,
    progress: bool,
    segmenting: _Segmentation | None = None,
) -> tuple[float, float]:
    """Find the mosaic's region proposals (or take them from ``segmenting``, started while the
    tiles were embedded) and embed each at its own extent (resumable: the proposals are
    deterministic, and those already stored for this date are skipped). Returns (model seconds,
    read seconds, including the time spent waiting for the segmentation)."""
    import pandas as pd  # only building needs it

    from geosearch.geo import own_extent_window
    from geosearch.proposals import ProposalSettings, propose_mosaic

    ps = ProposalSettings.from_settings(settings)
    key = "proposals" if date is None else f"proposals@{date}"
    meta = _read_meta(con)
    recorded = meta.get(key) or {}
    if not ps.matches(recorded.get("settings")):  # found with other settings: redo them
        with db.transaction(con):
            con.execute("DELETE FROM proposals WHERE date IS NOT DISTINCT FROM ?", [date])
            con.execute("DELETE FROM meta WHERE key = ?", [key])
    elif recorded.get("status") == "complete":
        return 0.0, 0.0
    t0 = time.perf_counter()
    if segmenting is not None:
        props = segmenting.future.result()
        seg_seconds = time.perf_counter() - segmenting.started  # its wall time, overlapped or not
    else:
        props = propose_mosaic(mosaic, ps)
        seg_seconds = time.perf_counter() - t0
    seg_wait = time.perf_counter() - t0
    done = {
        r[0]
        for r in con.execute(
            "SELECT prop_id FROM proposals WHERE date IS NOT DISTINCT FROM ?", [date]
        ).fetchall()
    }
    todo = [(i, p) for i, p in enumerate(props) if i not in done]
    _write_meta(con, {key: {"status": "building", "settings": ps.as_dict(), "count": len(props)}})
    bar = _progress(len(props), len(done), progress, "proposals")
    batch = max(1, settings.batch_size)
    chunks = [todo[s : s + batch] for s in range(0, len(todo), batch)]

    def write_proposals(chunk: list, emb: np.ndarray) -> None:
        frame = pd.DataFrame(
            {
                "prop_id": [i for i, _ in chunk],
                "date": [date] * len(chunk),
                "level": [p.level for _, p in chunk],
                "n_segments": [p.n_segments for _, p in chunk],
                "x0": [p.bounds[0] for _, p in chunk],
                "y0": [p.bounds[1] for _, p in chunk],
                "x1": [p.bounds[2] for _, p in chunk],
                "y1": [p.bounds[3] for _, p in chunk],
                "outline": [shapely.to_wkb(p.polygon) for _, p in chunk],
                "embedding": [e.astype("<f4").tobytes() for e in emb],
            }
        )
        with db.transaction(con, new_props=frame):
            con.execute("INSERT INTO proposals SELECT * FROM new_props")
        bar.update(len(chunk))

    model_seconds, read_seconds = _embed_stream(
        mosaic,
        emb_model,
        chunks,
        lambda chunk: [own_extent_window(p.bounds, mosaic.bounds) for _, p in chunk],
        write_proposals,
        strips=False,
    )
    bar.close()
    _write_meta(
        con,
        {
            key: {
                "status": "complete",
                "count": len(props),
                "settings": ps.as_dict(),
                "segment_seconds": round(seg_seconds, 2),
                "embed_seconds": round(model_seconds + read_seconds, 2),
            }
        },
    )
    return model_seconds, read_seconds + seg_wait


class _NoBar:
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, initial: int, enabled: bool, desc: str = "embedding"):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="tile", desc=desc, dynamic_ncols=True, smoothing=0.1)


def _insert_tiles(
    con, mosaic: Mosaic, tiles: list[Tile], fracs: np.ndarray, emb: np.ndarray, date: str | None
) -> None:
    bounds = np.array([t.bounds for t in tiles], dtype=np.float64)
    polys = shapely.box(bounds[:, 0], bounds[:, 1], bounds[:, 2], bounds[:, 3])
    polys84 = boxes_to_wgs84(bounds, mosaic.crs)
    import pyarrow as pa  # registers with DuckDB without a copy (a pandas frame cost 8 ms a chunk)

    frame = pa.table(
        {
            "tile_id": [t.tile_id for t in tiles],
            "scale_m": pa.array([t.scale_m for t in tiles], pa.float64()),
            "row": pa.array([t.row for t in tiles], pa.int64()),
            "col": pa.array([t.col for t in tiles], pa.int64()),
            "x0": bounds[:, 0],
            "y0": bounds[:, 1],
            "x1": bounds[:, 2],
            "y1": bounds[:, 3],
            "wkb": pa.array(shapely.to_wkb(polys), pa.binary()),
            "wkb84": pa.array(shapely.to_wkb(polys84), pa.binary()),
            "valid_fraction": fracs.astype(np.float64),
            "date": pa.array([date] * len(tiles), pa.string()),
            "embedding": pa.array([e.astype("<f4").tobytes() for e in emb], pa.binary()),
        }
    )
    with db.transaction(con, new_tiles=frame):
        con.execute("""INSERT INTO tiles SELECT tile_id, scale_m, "row", col, x0, y0, x1, y1,
                       ST_GeomFromWKB(wkb), ST_GeomFromWKB(wkb84), valid_fraction, date, embedding
                       FROM new_tiles""")


def _check_overwritable(out: Path, mosaic: Mosaic) -> None:
    """--overwrite deletes only an index: never an input raster, never another kind of file."""
    real = out.resolve()
    if any(not isinstance(p, str) and Path(p).resolve() == real for p in mosaic.paths):
        raise InputError(f"--out {out} is one of the input rasters: --overwrite would delete it")
    check_regular_file(out, "index")
    with open(out, "rb") as fh:
        head = fh.read(16)
    if b"DUCK" not in head and head[8:12] != b"DUCK":
        raise InputError(f"refusing to overwrite {out}: it is not a GeoSearch index")


def _read_meta(con) -> dict:
    try:
        rows = con.execute("SELECT key, value FROM meta").fetchall()
    except Exception:  # noqa: BLE001 - not an index
        return {}
    return {k: json.loads(v) for k, v in rows}


def _write_meta(con, values: dict) -> None:
    with db.transaction(con):
        for k, v in values.items():
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [k, json.dumps(v)])


class _GridRef:
    """The first date's tile grid, rebuilt from its stored description (for :func:`plan_tiles`)."""

    def __init__(self, desc: dict):
        self.bounds = tuple(desc["bounds"])
        w, h = desc["size_px"]
        self.res = ((self.bounds[2] - self.bounds[0]) / w, (self.bounds[3] - self.bounds[1]) / h)
        self.pixel_size_m = tuple(desc["pixel_size_m"])
        self.size_px = (int(w), int(h))


def _add_mosaic_row(con, date: str | None, mosaic: Mosaic, fingerprint: str) -> None:
    con.execute(
        "INSERT INTO mosaics VALUES (?, ?, ?, ?)",
        [date, json.dumps(mosaic.describe()["files"]), fingerprint, json.dumps(mosaic.describe())],
    )


def _mosaic_rows(con, meta: dict) -> list[tuple[str | None, str, dict]]:
    """(date, fingerprint, description) per date; indexes built before ``mosaics`` use meta."""
    rows = [
        (d, f, json.loads(desc))
        for d, f, desc in con.execute("SELECT date, fingerprint, description FROM mosaics").fetchall()
    ]
    if not rows and meta.get("mosaic_fingerprint"):
        rows = [(meta.get("date"), meta["mosaic_fingerprint"], meta["mosaic"])]
    return rows


def _prepare_date(
    con,
    meta: dict,
    mosaic: Mosaic,
    model_id: str,
    fingerprint: str,
    tiling: dict,
    path: Path,
    date: str | None,
):
    """Resume a date already in the index, or register ``mosaic`` as a new date on the first grid."""
    rows = _mosaic_rows(con, meta)
    same = [r for r in rows if r[1] == fingerprint]
    if same:
        known = same[0]
        if date is not None and known[0] is not None and date != known[0]:
            raise IndexMismatchError(f"this mosaic is already in index {path} as date {known[0]}, not {date}")
        first_fp = meta.get("mosaic_fingerprint")
        _check_compatible(meta, model_id, first_fp, tiling, path)
        mosaic._stretch_params = [tuple(p) for p in known[2]["stretch_params"]]
        if known[1] == first_fp:
            return known[0], mosaic
        return known[0], _GridRef(meta["mosaic"])
    if date is None:
        _check_compatible(meta, model_id, fingerprint, tiling, path)  # raises: another mosaic
    _check_compatible(meta, model_id, meta.get("mosaic_fingerprint", ""), tiling, path)
    if meta.get("date") is None:
        raise IndexMismatchError(
            f"index {path} was built from another mosaic without a date, so no date can be added to it; "
            "rebuild it with --date for the first mosaic (or use --overwrite / another --out)"
        )
    if any(r[0] == date for r in rows):
        raise IndexMismatchError(
            f"index {path} already holds another mosaic for date {date}; use another --date or --overwrite"
        )
    _check_grid(meta["mosaic"], mosaic, path)
    if not con.execute("SELECT count(*) FROM mosaics").fetchone()[0]:  # index older than ``mosaics``
        con.execute(
            "INSERT INTO mosaics VALUES (?, ?, ?, ?)",
            [
                meta.get("date"),
                json.dumps(meta["mosaic"]["files"]),
                meta["mosaic_fingerprint"],
                json.dumps(meta["mosaic"]),
            ],
        )
    _drop_tile_id_key(con)
    _add_mosaic_row(con, date, mosaic, fingerprint)
    dates = sorted({*(meta.get("dates") or [meta.get("date")]), date})
    _write_meta(con, {"dates": dates, "status": "building"})
    return date, _GridRef(meta["mosaic"])


def _check_grid(first: dict, mosaic: Mosaic, path: Path) -> None:
    """A further date must share the first date's CRS and pixel size and overlap its extent."""
    if as_crs(first["crs"]) != as_crs(mosaic.crs):
        raise IndexMismatchError(
            f"cannot add this date to {path}: its CRS is {mosaic.crs.to_string()}, the index grid is in "
            f"{first['crs']}; reproject it onto the first date's grid first"
        )
    grid = _GridRef(first)
    if any(abs(a - b) > 0.01 * b for a, b in zip(mosaic.res, grid.res)):
        raise IndexMismatchError(
            f"cannot add this date to {path}: pixel size {tuple(round(v, 6) for v in mosaic.res)} differs "
            f"from the index grid's {tuple(round(v, 6) for v in grid.res)}; resample it first"
        )
    ix = min(mosaic.bounds[2], grid.bounds[2]) - max(mosaic.bounds[0], grid.bounds[0])
    iy = min(mosaic.bounds[3], grid.bounds[3]) - max(mosaic.bounds[1], grid.bounds[1])
    area = (grid.bounds[2] - grid.bounds[0]) * (grid.bounds[3] - grid.bounds[1])
    if ix <= 0 or iy <= 0 or ix * iy < 0.5 * area:
        raise IndexMismatchError(
            f"cannot add this date to {path}: the mosaic covers less than half of the index grid's extent "
            "(dates of one index must show the same area)"
        )


def _drop_tile_id_key(con) -> None:
    """Indexes from before multi-date support keyed tiles by tile_id alone: rebuild without it."""
    keyed = con.execute("""SELECT count(*) FROM duckdb_constraints()
                           WHERE table_name = 'tiles' AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')""").fetchone()[
        0
    ]
    if keyed:
        with db.transaction(con):
            con.execute("CREATE TABLE tiles_multidate AS SELECT * FROM tiles")
            con.execute("DROP TABLE tiles")
            con.execute("ALTER TABLE tiles_multidate RENAME TO tiles")


def _check_compatible(meta: dict, model_id: str, fingerprint: str, tiling: dict, path: Path) -> None:
    if meta.get("model_id") != model_id:
        raise IndexMismatchError(
            f"index {path} was built with model {meta.get('model_id')!r}, not {model_id!r}; "
            "use --overwrite to rebuild it or pick another --out"
        )
    if meta.get("mosaic_fingerprint") != fingerprint:
        raise IndexMismatchError(
            f"index {path} was built from another mosaic; use --overwrite or another --out"
        )
    if meta.get("tiling") != tiling:
        raise IndexMismatchError(
            f"index {path} was built with other tiling settings {meta.get('tiling')}; use --overwrite"
        )


@dataclass
class ProposalSet:
    """The index's region proposals (all dates), loaded on first use."""

    prop_ids: np.ndarray
    dates: np.ndarray
    levels: np.ndarray
    bounds: np.ndarray  # (N, 4) mosaic CRS
    embeddings: np.ndarray  # (N, D) float32, unit norm
    outlines: list  # WKB per proposal (mosaic CRS)

    def __len__(self) -> int:
        return len(self.prop_ids)

    def outline(self, i: int):
        return shapely.from_wkb(self.outlines[i])


@dataclass
class TileIndex:
    """An index opened for search (read-only). Format 2 indexes map their arrays from the vector
    store (nothing is read until used, so opening costs the same at any size); format 1 indexes,
    and one whose build is adding tiles, load them from DuckDB into memory."""

    path: Path
    meta: dict
    tile_ids: np.ndarray
    scales: np.ndarray
    bounds: np.ndarray  # (N, 4) mosaic CRS
    embeddings: np.ndarray  # (N, D) float32, unit norm
    dates: np.ndarray
    mosaics: dict = field(default_factory=dict)  # date -> mosaic description (multi-date indexes)
    _mosaic: Mosaic | None = field(default=None, repr=False)
    _date_mosaics: dict = field(default_factory=dict, repr=False)
    _model: EmbeddingModel | None = field(default=None, repr=False)
    _text_model: StarterText | None = field(default=None, repr=False)
    _polys84: list | None = field(default=None, repr=False)
    _centre_trees: dict = field(default_factory=dict, repr=False)
    _proposals: ProposalSet | None = field(default=None, repr=False)
    policy: FilePolicy = field(default=OPEN, repr=False)
    store: VectorStore | None = field(default=None, repr=False)
    store_note: str | None = field(default=None, repr=False)  # why a format 2 index has no store open

    @classmethod
    def open(cls, path: str | Path, policy: FilePolicy = OPEN) -> TileIndex:
        """Open an index read-only; ``policy`` decides which rasters it may then open (a server's
        sandbox; the CLI opens the user's own files)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"index not found: {path}")
        try:
            con = db.connect(path, read_only=True, spatial=False)  # reads tables only: no ST_* here
        except (DatabaseLockedError, DatabaseDamagedError, InputError):
            raise
        except GeoSearchError as exc:
            raise InputError(f"not a GeoSearch index: {path}") from exc
        try:
            meta = _read_meta(con)
            if not meta or "model_id" not in meta:
                raise InputError(f"not a GeoSearch index (no meta table): {path}")
            version = int(meta.get("format_version", 1))
            if version > FORMAT_VERSION:
                raise InputError(
                    f"index {path.name} was written by a newer GeoSearch (format {version}, this one reads "
                    f"{FORMAT_VERSION}): upgrade geosearch"
                )
            try:
                mosaics = {
                    d: json.loads(desc)
                    for d, desc in con.execute("SELECT date, description FROM mosaics").fetchall()
                }
            except duckdb.CatalogException:  # index from before multi-date support
                mosaics = {}
            entry = meta.get("store")
            note = None
            if entry and con.execute("SELECT count(*) FROM tiles").fetchone()[0] != entry.get("count"):
                entry = None  # a build adding a date has more tiles than its store: loaded below
            if entry and store_missing(path, entry):  # the file copied without its folder: loaded below
                note = f"its vector store {store_root(path).name}/{entry['id']} is missing"
            elif entry:
                store = open_store(path, entry)
                return cls(
                    path=path,
                    meta=meta,
                    tile_ids=store.tile_ids,
                    scales=store.scales,
                    bounds=store.bounds,
                    embeddings=store.vectors,
                    dates=store.dates(),
                    mosaics=mosaics,
                    policy=policy,
                    store=store,
                )
            cols = con.execute("""SELECT tile_id, scale_m, x0, y0, x1, y1, date, embedding FROM tiles
                                  ORDER BY scale_m, tile_id, date NULLS FIRST""").fetchnumpy()
        except duckdb.Error as exc:
            raise db.describe_error(exc, str(path)) from exc
        finally:
            con.close()
        n = len(cols["tile_id"])
        if not n:
            raise InputError(f"index {path} has no tiles yet (build it with `geosearch index`)")
        # columns as arrays (fetchnumpy), not a Python tuple per row: ~2x faster on 12k tiles
        emb = np.frombuffer(b"".join(cols["embedding"]), dtype="<f4").reshape(n, -1).astype(np.float32)
        dates = cols["date"]
        dates = np.array(
            [None if m else d for d, m in zip(np.ma.getdata(dates), np.ma.getmaskarray(dates))], dtype=object
        )
        return cls(
            path=path,
            meta=meta,
            store_note=note,
            tile_ids=np.asarray(cols["tile_id"], dtype=object),
            scales=np.asarray(cols["scale_m"], dtype=np.float64),
            bounds=np.column_stack([cols[c] for c in ("x0", "y0", "x1", "y1")]).astype(np.float64),
            embeddings=emb,
            dates=dates,
            mosaics=mosaics,
            policy=policy,
        )

    def __len__(self) -> int:
        return len(self.tile_ids)

    @property
    def crs(self):
        return as_crs(self.meta["crs"])

    @property
    def complete(self) -> bool:
        return self.meta.get("status") == "complete"

    def incomplete_note(self) -> str:
        return (
            f"index {self.path.name} is only partly built ({len(self)} tiles so far): its build was "
            "stopped; rerun the same geosearch index command to finish it"
        )

    def upgrade_note(self) -> str | None:
        """A line for a complete index without a vector store (older format): it was loaded into
        memory, and ``geosearch upgrade`` makes opening it instant."""
        if self.store is not None or not self.complete:
            return None
        why = self.store_note or "is in an older format"
        return (
            f"index {self.path.name} {why}: its {len(self)} embeddings were loaded into memory on "
            f"opening; geosearch upgrade {self.path} makes opening instant"
        )

    @property
    def bounds_wgs84(self) -> Bounds:
        return tuple(self.meta["bounds_wgs84"])  # type: ignore[return-value]

    @property
    def mosaic_bounds(self) -> Bounds:
        return tuple(self.meta["mosaic"]["bounds"])  # type: ignore[return-value]

    @property
    def date_list(self) -> list[str]:
        """The dates held by the index, oldest first (empty for an undated index)."""
        if self.store is not None:
            return self.store.labels
        return sorted({str(d) for d in self.dates if d is not None})

    def provenance(self) -> dict:
        """Where an answer from this index came from: carried by every exported region."""
        from datetime import datetime, timezone

        files = [str(f) for f in self.meta.get("mosaic", {}).get("files", [])]
        for m in (self.mosaics or {}).values():
            files += [str(f) for f in m.get("files", []) if str(f) not in files]
        return {
            "index": str(self.path),
            "model": self.meta.get("model_id"),
            "mosaic_files": files,
            "dates": self.date_list,
            "crs": self.crs.to_string(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def position(self, tile_id: str, date: str | None = None) -> int:
        hits = np.flatnonzero(self.tile_ids == tile_id)
        if date is not None:
            hits = hits[self.dates[hits] == date]
        if not len(hits):
            at = f" at date {date}" if date is not None else ""
            raise InputError(f"no tile {tile_id!r}{at} in index {self.path.name}")
        return int(hits[0])

    def proposals(self) -> ProposalSet | None:
        """The region proposals stored by the build (None for an index built without them, or
        whose proposal step did not finish for every date)."""
        if self._proposals is not None:
            return self._proposals if len(self._proposals) else None
        with _PROPOSALS_LOCK:  # concurrent first queries of a server load them once
            if self._proposals is None:
                self._proposals = self._load_proposals()
        return self._proposals if len(self._proposals) else None

    def _load_proposals(self) -> ProposalSet:
        empty = ProposalSet(*(np.zeros(0),) * 5, [])
        dates = [d for d in {self.meta.get("date"), *self.mosaics} if d is not None] or [None]
        keys = ["proposals" if d is None else f"proposals@{d}" for d in dates]
        if not all((self.meta.get(k) or {}).get("status") == "complete" for k in keys):
            return empty
        con = db.connect(self.path, read_only=True, spatial=False)
        try:
            rows = con.execute("""SELECT prop_id, date, level, x0, y0, x1, y1, outline, embedding
                                  FROM proposals ORDER BY date NULLS FIRST, prop_id""").fetchall()
        except duckdb.Error as exc:
            raise db.describe_error(exc, str(self.path)) from exc
        finally:
            con.close()
        if not rows:
            return empty
        ids, dts, lv, x0, y0, x1, y1, outl, embs = zip(*rows)
        emb = np.frombuffer(b"".join(embs), dtype="<f4").reshape(len(rows), -1).astype(np.float32)
        return ProposalSet(
            prop_ids=np.array(ids, dtype=np.int64),
            dates=np.array(dts, dtype=object),
            levels=np.array(lv, dtype=np.int64),
            bounds=np.column_stack([x0, y0, x1, y1]).astype(np.float64),
            embeddings=emb,
            outlines=list(outl),
        )

    def neighbourhoods(self, rows: np.ndarray, reach: float = 0.5) -> list[np.ndarray]:
        """Each row's neighbourhood: the positions of the tiles of its scale and date whose centres
        lie within ``reach`` times its side of its own in x and in y, itself included (3 x 3 tiles on
        a grid with 50 % overlap). A k-d tree of the centres is built per scale and date on first
        use, so that a search reads only its candidates' neighbours, at any index size."""
        rows = np.asarray(rows, dtype=np.int64)
        out: list[np.ndarray] = [np.zeros(0, np.int64)] * len(rows)
        b = np.asarray(self.bounds[rows], float).reshape(-1, 4)
        keys = [(float(self.scales[r]), self.dates[r]) for r in rows]
        for key in dict.fromkeys(keys):
            tree = self._centre_trees.get(key)
            if tree is None:
                same = np.asarray(self.scales) == key[0]
                same &= np.equal(np.asarray(self.dates, dtype=object), key[1]).astype(bool)
                members = np.flatnonzero(same)
                tree = self._centre_trees[key] = CentreTree(members, np.asarray(self.bounds[members]))
            at = [i for i, k in enumerate(keys) if k == key]
            sub = b[at]
            half = (
                float(np.max(np.maximum(sub[:, 2] - sub[:, 0], sub[:, 3] - sub[:, 1]))) * reach * (1 + 1e-6)
            )
            centres = np.column_stack([(sub[:, 0] + sub[:, 2]) / 2, (sub[:, 1] + sub[:, 3]) / 2])
            for i, near in zip(at, tree.around(centres, half)):
                out[i] = near
        return out

    def polygons_wgs84(self) -> list:
        if self._polys84 is None:
            self._polys84 = boxes_to_wgs84(self.bounds, self.crs)
        return self._polys84

    def mosaic(self, date: str | None = None) -> Mosaic:
        """Reopen the indexed mosaic with the same bands and stretch as when it was built
        (``date``: the mosaic of that date in a multi-date index; default the first one)."""
        if date is not None and date != self.meta.get("date"):
            if date not in self.mosaics:
                raise InputError(
                    f"index {self.path.name} has no mosaic for date {date!r}; "
                    f"dates: {', '.join(self.date_list) or 'none'}"
                )
            if date not in self._date_mosaics:
                self._date_mosaics[date] = self._open_recorded(self.mosaics[date])
            return self._date_mosaics[date]
        if self._mosaic is None:
            self._mosaic = self._open_recorded(self.meta["mosaic"])
        return self._mosaic

    def _open_recorded(self, m: dict) -> Mosaic:
        """Open a recorded mosaic. Files are stored absolute; a relative one (indexes built before
        that) is looked for beside the index, then in the current folder."""
        files, missing = [], []
        for f in m["files"]:
            f = str(f)
            if is_virtual(f):  # never a local path: the policy allows it or says why not
                files.append(self.policy.check_raster(f))
                continue
            p = Path(f)
            tries = [p] if p.is_absolute() else list(dict.fromkeys([self.path.parent / p, p.absolute()]))
            found = next((t for t in tries if os.path.lexists(t)), None)
            if found is None:
                missing.append(" or ".join(str(t.absolute()) for t in tries))
                continue
            files.append(self.policy.check_raster(found))
        if missing:
            raise InputError(
                f"mosaic file(s) of index {self.path.name} not found; looked for: {'; '.join(missing[:3])}. "
                f"Moved them? point the index at the new place: geosearch relocate {self.path} NEW_FOLDER"
            )
        from geosearch.mosaic import open_mosaic

        return open_mosaic(
            files,
            bands=m["rgb_bands"],
            stretch=m["stretch"],
            stretch_params=[tuple(p) for p in m["stretch_params"]],
            policy=self.policy,
            expand_stac=False,  # recorded files are rasters (a STAC input was recorded as its assets)
        )

    def check_files(self) -> None:
        """Check every raster this index refers to (all dates) against its policy, without opening
        any: a server refuses a crafted index before any work."""
        if not self.policy.restricted:
            return
        for m in [self.meta.get("mosaic") or {}, *self.mosaics.values()]:
            for f in m.get("files", []):
                f = str(f)
                if is_virtual(f) or Path(f).is_absolute():
                    self.policy.check_raster(f)
                else:
                    self.policy.check_raster(self.path.parent / f)

    def model(self, settings: Settings | None = None) -> EmbeddingModel:
        """The model the index was built with (refuses other weights under the same name)."""
        if self._model is None:
            from geosearch.models.model_id import views_of
            from geosearch.models.registry import shared_model

            # the views the index was embedded with, whatever the settings say now
            views = views_of(self.meta["model_id"])
            self.attach_model(shared_model(self.meta["model_name"], settings, views=views))
        return self._model  # type: ignore[return-value]

    def text_model(self, settings: Settings | None = None) -> EmbeddingModel | StarterText:
        """What embeds a query for this index: its model when loaded; for the shipped starter,
        before that, the numpy text tower the model itself embeds text with (the same vectors,
        without loading torch or the image tower: a one-shot ``geosearch search`` saves ~1.7 s)."""
        if self._model is not None:
            return self._model
        if self._text_model is None:
            from geosearch.models.text import starter_text

            size = (settings or get_settings()).text_cache_size
            self._text_model = starter_text(self.meta["model_id"], size)
        return self._text_model or self.model(settings)

    def attach_model(self, model: EmbeddingModel) -> None:
        if model.model_id != self.meta["model_id"]:
            raise IndexMismatchError(
                f"index {self.path.name} was built with {self.meta['model_id']!r}, "
                f"the model given is {model.model_id!r}"
            )
        self._model = model

    def tile_polygon_map(self, i: int):
        return box(*self.bounds[i])

    def area_to_mosaic_crs(self, geom, crs):
        return reproject_geom(geom, crs, self.crs)

    def search_mode(self, settings: Settings | None = None) -> dict:
        """How the top-k search of this index runs: exact or through its ANN, and why."""
        settings = settings or get_settings()
        if self.store is None:
            why = (
                self.store_note or "no vector store (an index from before format 2, or a build adding tiles)"
            )
            return {
                "mode": "exact",
                "reason": f"{why}: arrays loaded into memory; write one with: geosearch upgrade {self.path}",
            }
        out = dict(self.store.entry.get("search") or {"mode": "exact"})
        ann = self.store.ann_meta
        if ann:
            out["ann"] = {
                **ann,
                "nprobe": settings.ann_nprobe or ann["nprobe"],
                "rerank": settings.ann_rerank,
            }
            if settings.ann == "off":
                out.update(mode="exact", reason="ann=off at search time")
        return out

    def info(self) -> dict:
        m = self.meta
        if self.store is not None:
            per_scale = dict(self.store.entry["tiles_per_scale_m"])
        else:
            per_scale = {f"{s:g}": int((self.scales == s).sum()) for s in np.unique(self.scales)}
        return {
            "path": str(self.path),
            "status": m.get("status"),
            "model": m.get("model_name"),
            "model_id": m.get("model_id"),
            "tiles": len(self),
            "tiles_per_scale_m": per_scale,
            "embed_dim": int(self.embeddings.shape[1]),
            "mosaic": m.get("mosaic"),
            "tiling": m.get("tiling"),
            "bounds_wgs84": m.get("bounds_wgs84"),
            "build_seconds": round(float(m.get("build_seconds", 0)), 2),
            "created": m.get("created"),
            "date": m.get("date"),
            "dates": self.date_list,
            "proposals": {k: v for k, v in m.items() if k.startswith("proposals")},
            "format_version": int(m.get("format_version", 1)),
            "search": self.search_mode(),
        }


def relocate_index(path: str | Path, locations: Sequence[str | Path]) -> dict:
    """Point an index at imagery that moved: each recorded raster is looked for by file name under
    ``locations`` (folders, searched recursively, files, or URL prefixes such as
    ``https://data.example.org/cogs/``, where it is expected by name), and the new set must have the content
    fingerprint the index was built from (same files, bytes and grid), so an index can never be
    pointed at other imagery. Returns ``{date: [new files]}``; the index is changed in one
    transaction, or not at all."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"no index at {path}")
    found: dict[str, list[Path | str]] = {}
    bases = [str(loc) for loc in locations if is_url(str(loc))]
    for loc in locations:
        if is_url(str(loc)):
            continue
        loc = Path(loc).expanduser()
        if not loc.exists():
            raise InputError(f"{loc} does not exist")
        for p in [loc] if loc.is_file() else sorted(loc.rglob("*")):
            if p.is_file():
                found.setdefault(p.name, []).append(p.resolve())
    con = db.connect(path)
    try:
        meta = _read_meta(con)
        if "model_id" not in meta:
            raise InputError(f"{path} is not a GeoSearch index")
        rows = _mosaic_rows(con, meta)
        moved: dict[str | None, tuple[list[str], str, dict]] = {}
        for date, fingerprint, desc in rows:
            files = []
            for f in desc["files"]:
                name = url_name(canonical_url(f)) if is_virtual(f) else Path(f).name
                cands = found.get(name, []) + [f"{b.rstrip('/')}/{quote(name)}" for b in bases]
                if not cands:
                    raise InputError(f"no file named {name!r} under {', '.join(map(str, locations))}")
                if len(cands) > 1:
                    raise InputError(
                        f"{name!r} is there more than once: {cands[0]}, {cands[1]}; give the folder"
                    )
                files.append(cands[0])
            from geosearch.mosaic import open_mosaic

            mosaic = open_mosaic(files, bands=desc["rgb_bands"], stretch=desc["stretch"], expand_stac=False)
            if mosaic.fingerprint() != fingerprint:
                raise InputError(
                    f"the rasters found ({', '.join(map(str, files[:3]))}) are not the imagery this index "
                    "was built from (their content fingerprint differs); build a new index for them"
                )
            new_desc = {**desc, "files": [str(p) for p in files]}
            moved[date] = ([str(p) for p in files], fingerprint, new_desc)
        with db.transaction(con):
            for date, (files, _fp, new_desc) in moved.items():
                con.execute(
                    "UPDATE mosaics SET files = ?, description = ? WHERE date IS NOT DISTINCT FROM ?",
                    [json.dumps(files), json.dumps(new_desc), date],
                )
                if date == meta.get("date") and meta.get("mosaic"):
                    con.execute(
                        "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                        ["mosaic", json.dumps({**meta["mosaic"], "files": files})],
                    )
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return {str(d) if d is not None else "": f for d, (f, _, _) in moved.items()}


class _CallableModule(type(json)):
    """Importing this module sets ``geosearch.index`` to it, over the API function
    ``geosearch.index(mosaic, out, ...)``; calling the module calls that function."""

    def __call__(self, *args, **kwargs):
        from geosearch.api import index as _index

        return _index(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
