"""The vector store of an index: memory-mapped arrays and an approximate-nearest-neighbour index
beside the DuckDB file, so that opening an index costs the same at 10^3 and 10^7 tiles.

Layout (``<index>.store/<id>/``, one folder per written version)::

    vectors.f32.npy   (N, D) float32 unit embeddings in the index's row order (scale, tile, date):
                      exact scores, the rescoring of ANN candidates, and ``TileIndex.embeddings``
    tile_ids.npy      (N,) fixed-width unicode
    scales.npy        (N,) float64
    bounds.npy        (N, 4) float64, mosaic CRS
    dates.npy         (N,) int16 position in the recorded date labels, -1 = no date
    ann.faiss         optional FAISS IVF index (product-quantised codes, d/4 bytes a vector, or
                      8-bit scalar-quantised ones), ids = row positions

Everything is opened with ``mmap``: nothing is read until a query touches it. DuckDB stays the
build journal (one transaction per batch, so a killed build resumes); a store is written when a
build completes, into a fresh folder, each file through :func:`geosearch.fileio.atomic_path`, and
the DuckDB meta key ``store`` is switched to it in one transaction afterwards. Readers follow that
pointer and check its row count and file sizes against the folder (a few ``stat`` calls), so the
store and DuckDB never disagree: a build killed while writing leaves the old pointer (or none).

Why these choices (measured, see docs/scale.md): an ``.npy`` memmap opens in well under a
millisecond at any size, where Parquet or Lance must decode; float32 keeps every existing
``index.embeddings @ v`` caller exact and BLAS-fast (numpy has no float16 / int8 BLAS), while the
compact copy that the fast path scans lives in the ANN. A FAISS IVF builds in about a minute at
10^6 (a usearch HNSW took 23 min), reads memory-mapped (``IO_FLAG_MMAP_IFC``) and takes a bitmap
of allowed ids, so area / scale / date filters stay exact. Its candidates are rescored with the
float32 rows, read with ``pread`` (not through the map, so a server's RSS does not grow with the
rows it has rescored). With that rescoring, recall depends on the lists probed, not on the code
precision (10^5 synthetic tiles: PQ96, SQ8 and SQ4 all 0.984 at nprobe 64), so the default codes
are PQ with 4 dimensions a byte: a quarter of SQ8's memory (1 GB at 10^7 x 384) and faster.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geosearch.errors import DatabaseDamagedError
from geosearch.fileio import atomic_path, check_regular_file
from geosearch.settings import Settings

ARRAYS = ("vectors.f32.npy", "tile_ids.npy", "scales.npy", "bounds.npy", "dates.npy")
ANN_FILE = "ann.faiss"
ORDER_SQL = "ORDER BY scale_m, tile_id, date NULLS FIRST"
_ID = re.compile(r"^[0-9a-f]{16}$")
_CHUNK = 65_536
# Text queries that calibrate an ANN's nprobe when the index is built with its model: the kind
# of things asked of an index, embedded by that model (the modality gap and score packing of
# real queries come with them).
CALIBRATION_PROMPTS = (
    "buildings", "a road", "a river", "farmland", "a forest", "a lake", "a parking lot", "an airport",
    "a harbour with boats", "a bridge", "a residential area", "an industrial area", "a stadium",
    "a golf course", "bare soil", "a desert", "snow", "a beach", "a railway", "a highway interchange",
    "a church", "a school", "a park", "a baseball field", "a tennis court", "a swimming pool",
    "fields next to a river", "dense forest", "a meadow", "mountains", "storage tanks", "a port",
)  # fmt: skip


def store_root(index_path: str | Path) -> Path:
    """The folder beside an index that holds its store versions (beside the real file when the
    index is reached through a symlink)."""
    return Path(os.path.realpath(index_path) + ".store")


def store_missing(index_path: Path, entry: dict) -> bool:
    """Whether the store folder that ``entry`` names is absent altogether (the index file was
    copied or moved without it): the index can then still be read from DuckDB."""
    sid = str(entry.get("id", ""))
    root = store_root(index_path)
    return bool(_ID.match(sid)) and not root.is_symlink() and not os.path.lexists(root / sid)


@dataclass
class VectorStore:
    """An index's arrays, memory-mapped, and its ANN (loaded on the first query that uses it)."""

    folder: Path
    entry: dict
    vectors: np.ndarray
    tile_ids: np.ndarray
    scales: np.ndarray
    bounds: np.ndarray
    date_codes: np.ndarray
    _ann: object = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _fd: int | None = field(default=None, repr=False)

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """float32 rows at sorted ``positions``, read with ``pread`` rather than through the map."""
        if self._fd is None:
            with self._lock:
                if self._fd is None:
                    self._fd = os.open(self.folder / ARRAYS[0], os.O_RDONLY)
        width = self.vectors.shape[1] * 4
        base = self.vectors.offset
        offsets = [base + int(p) * width for p in positions]
        if len(offsets) > 1:  # queue every read first: the disk serves them together, not one by one
            for off in offsets:
                _prefetch(self._fd, off, width)
        buf = b"".join(os.pread(self._fd, width, off) for off in offsets)
        if len(buf) != width * len(positions):
            raise DatabaseDamagedError(f"the vector store {self.folder} is shorter than it records")
        return np.frombuffer(buf, dtype="<f4").reshape(len(positions), -1)

    def warm(self) -> threading.Thread:
        """Read the ANN file and the per-tile arrays (not the float32 vectors, which searches
        read row by row) through the page cache in a daemon thread, and return it. A long-running
        server calls this when it opens an index: at 10^7 tiles, searches from a cold cache wait
        on the disk for the inverted lists they probe (p50 ~30-45 ms) where warm ones take ~5 ms."""
        files = [self.folder / ANN_FILE] if self.ann_meta is not None else []
        files += [self.folder / name for name in ARRAYS[1:]]

        def read_all() -> None:
            for path in files:
                try:
                    with open(path, "rb", buffering=0) as f:
                        while f.read(8 << 20):
                            pass
                except OSError:  # a file gone since opening: the search that needs it will say so
                    continue

        thread = threading.Thread(target=read_all, name=f"warm {self.folder.name}", daemon=True)
        thread.start()
        return thread

    def __del__(self):
        if self._fd is not None:
            os.close(self._fd)

    @property
    def labels(self) -> list[str]:
        return list(self.entry.get("dates") or [])

    def dates(self) -> np.ndarray:
        """Per-row date as an object array (None for an undated row), as ``TileIndex.dates``."""
        table = np.array([*self.labels, None], dtype=object)
        return table[self.date_codes]  # code -1 picks the trailing None

    def date_mask(self, date: str) -> np.ndarray:
        """Rows of ``date`` from the int16 codes (an object-array comparison is 40x slower)."""
        labels = self.labels
        return (
            self.date_codes == labels.index(date) if date in labels else np.zeros(len(self.date_codes), bool)
        )

    def scale_mask(self, scales) -> np.ndarray:
        """Rows at ``scales``: the rows are sorted by scale, so a binary search per scale."""
        mask = np.zeros(len(self.scales), bool)
        for s in np.unique(np.asarray(scales, dtype=np.float64)):
            mask[np.searchsorted(self.scales, s, "left") : np.searchsorted(self.scales, s, "right")] = True
        return mask

    @property
    def ann_meta(self) -> dict | None:
        return self.entry.get("ann")

    def ann(self):
        """The FAISS index, memory-mapped (read on first use; ``import faiss`` alone takes ~0.1 s)."""
        if self._ann is None:
            with self._lock:
                if self._ann is None:
                    import faiss

                    path = self.folder / ANN_FILE
                    check_regular_file(path, "ANN index")
                    self._ann = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
                    _prefetch_file(path)
        return self._ann

    def search(
        self, vec: np.ndarray, k: int, mask: np.ndarray | None, settings: Settings
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Top-k row positions and their exact scores through the ANN, or None when exact search
        should answer (no ANN, ANN off, or a filter so narrow that scanning its rows is cheaper).
        Filters are exact: the ANN only ever returns allowed rows, and a filter leaving a share s
        of the rows probes 1/s times more lists, so that as many allowed rows are seen."""
        meta = self.ann_meta
        if meta is None or settings.ann == "off":
            return None
        n, d = self.vectors.shape
        allowed = n if mask is None else int(mask.sum())
        if allowed <= settings.ann_exact_below:
            return None
        nlist = int(meta["nlist"])
        nprobe = int(settings.ann_nprobe or meta["nprobe"])
        share = allowed / n
        probes = int(min(nlist, math.ceil(nprobe / max(share, 1e-9))))
        # bytes each way: the allowed float32 rows, or the codes of the lists probed (a BLAS scan
        # reads ~4x faster per byte than PQ / SQ distance tables; e.g. a 1 % area at 10^7 tiles
        # is cheaper exact than through 100x the probes)
        cheaper = allowed * d * 4 <= 4 * (probes / nlist) * n * int(meta.get("code_bytes", d))
        if settings.ann == "auto" and cheaper:  # ann=on: the ANN whenever it has one
            return None
        import faiss

        index = self.ann()
        params = faiss.SearchParametersIVF()
        params.nprobe = probes
        bits = None
        if mask is not None and allowed < n:
            bits = np.packbits(mask.astype(bool), bitorder="little")
            params.sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits))
        depth = max(settings.ann_rerank, 4 * k)
        q = np.ascontiguousarray(vec.reshape(1, -1), dtype=np.float32)
        _, ids = index.search(q, depth, params=params)
        del bits  # kept alive through the search above
        cand = np.unique(ids[0][ids[0] >= 0])
        if not len(cand):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        exact = self.rows(cand) @ vec.astype(np.float32)
        order = np.lexsort((cand, -exact))[:k]  # descending score, ties by position
        return cand[order], exact[order]


def _prefetch(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start reading a byte range now (no-op where posix_fadvise is missing)."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)


def _prefetch_file(path: Path) -> None:
    """Start reading the whole ANN file into the page cache in the background. Its inverted lists
    are memory-mapped, so without this the first queries fault them in one probe at a time (at
    10^7 tiles: p50 70 ms cold against 4 ms warm); the file is ~1/16 of the float32 vectors, and the
    page cache is shared by every process that opens the index."""
    fd = os.open(path, os.O_RDONLY)
    try:
        _prefetch(fd, 0, 0)  # length 0: to the end of the file
    finally:
        os.close(fd)


def open_store(index_path: Path, entry: dict) -> VectorStore:
    """Open the store that the DuckDB meta ``entry`` points at, checking that they agree."""
    sid = str(entry.get("id", ""))
    if not _ID.match(sid):  # never a path: a crafted index cannot point outside its store folder
        raise DatabaseDamagedError(f"index {index_path.name} names a malformed vector store {sid[:40]!r}")
    folder = store_root(index_path) / sid
    sizes = entry.get("sizes") or {}
    n, d = int(entry["count"]), int(entry["dim"])
    names = (*ARRAYS, *([ANN_FILE] if entry.get("ann") else []))
    if any(p.is_symlink() for p in (store_root(index_path), folder, *(folder / x for x in names))):
        # a served index may only make the server read its own files (security.md)
        raise DatabaseDamagedError(f"the vector store of index {index_path.name} is refused: it holds a link")
    for name in names:
        st = check_regular_file(folder / name, "vector store file", must_exist=False)
        if st is None or st.st_size != sizes.get(name):
            raise DatabaseDamagedError(
                f"the vector store of index {index_path.name} does not match it ({name} "
                f"{'missing' if st is None else 'has another size'}); rewrite it with: geosearch upgrade "
                f"{index_path}"
            )
    try:
        arrays = [np.load(folder / name, mmap_mode="r") for name in ARRAYS]
    except ValueError as exc:  # not an .npy, or one of objects (never unpickled)
        raise DatabaseDamagedError(f"the vector store of index {index_path.name} is damaged: {exc}") from exc
    vectors, tile_ids, scales, bounds, codes = arrays
    kinds = (vectors.dtype == np.float32, tile_ids.dtype.kind == "U", codes.dtype == np.int16)
    if (
        not all(kinds)
        or vectors.shape != (n, d)
        or len(tile_ids) != n
        or bounds.shape != (n, 4)
        or len(codes) != n
    ):
        raise DatabaseDamagedError(
            f"the vector store of index {index_path.name} holds {vectors.shape} vectors, the index "
            f"records ({n}, {d}); rewrite it with: geosearch upgrade {index_path}"
        )
    return VectorStore(folder, entry, vectors, tile_ids, scales, bounds, codes)


# --- writing ---------------------------------------------------------------------------------------


def ann_wanted(n: int, settings: Settings) -> tuple[bool, str]:
    """Whether an index of ``n`` tiles gets an ANN, and why (recorded in ``info``)."""
    if settings.ann == "off":
        return False, "ann=off: exact search"
    if settings.ann == "on":
        return True, "ann=on"
    if n >= settings.ann_min_tiles:
        return True, f"{n} tiles >= ann_min_tiles {settings.ann_min_tiles}"
    return False, f"{n} tiles < ann_min_tiles {settings.ann_min_tiles}: exact search is fast enough"


def write_store(
    con,
    index_path: Path,
    settings: Settings,
    previous: dict | None = None,
    queries: Callable[[], np.ndarray] | None = None,
) -> dict:
    """Write a new store version from the index's ``tiles`` table and return its meta entry (the
    caller records it in the meta table, which is what makes it current). ``previous``: the entry
    of the current store; when it holds an ANN and the new rows only add dates, that ANN is kept
    and updated (no retraining, old codes reused). ``queries``: gives unit query vectors (the
    model's embeddings of :data:`CALIBRATION_PROMPTS`) to calibrate an ANN's nprobe on; without
    it, queries are made from the data (more conservative: more lists probed)."""
    t0 = time.perf_counter()
    cols = con.execute(
        f"SELECT rowid, tile_id, scale_m, x0, y0, x1, y1, date FROM tiles {ORDER_SQL}"
    ).fetchnumpy()
    n = len(cols["rowid"])
    rowids = np.asarray(cols["rowid"], dtype=np.int64)
    pos_of = np.full(int(rowids.max()) + 1 if n else 0, -1, dtype=np.int64)
    pos_of[rowids] = np.arange(n)
    raw_dates = cols["date"]
    dates = [None if m else str(v) for v, m in zip(np.ma.getdata(raw_dates), np.ma.getmaskarray(raw_dates))]
    labels = sorted({d for d in dates if d is not None})
    code_of = {d: i for i, d in enumerate(labels)}
    codes = np.array([-1 if d is None else code_of[d] for d in dates], dtype=np.int16)
    root = store_root(index_path)
    sid = secrets.token_hex(8)
    folder = root / sid
    folder.mkdir(parents=True, exist_ok=False)
    try:
        dim = _write_vectors(con, folder / "vectors.f32.npy", pos_of, n)
        _save(folder / "tile_ids.npy", np.asarray([str(t) for t in cols["tile_id"]], dtype=str))
        _save(folder / "scales.npy", np.asarray(cols["scale_m"], dtype=np.float64))
        _save(
            folder / "bounds.npy",
            np.column_stack([cols[c] for c in ("x0", "y0", "x1", "y1")]).astype(np.float64),
        )
        _save(folder / "dates.npy", codes)
        scales = np.asarray(cols["scale_m"], dtype=np.float64)
        entry: dict = {
            "id": sid,
            "count": n,
            "dim": dim,
            "dates": labels,
            "tiles_per_scale_m": {f"{s:g}": int((scales == s).sum()) for s in np.unique(scales)},
        }
        want, why = ann_wanted(n, settings)
        entry["search"] = {"mode": "ann" if want else "exact", "reason": why}
        if want:
            vectors = np.load(folder / "vectors.f32.npy", mmap_mode="r")
            entry["ann"] = _write_ann(folder, vectors, settings, index_path, previous, labels, codes, queries)
        entry["sizes"] = {name: (folder / name).stat().st_size for name in os.listdir(folder)}
        entry["write_seconds"] = round(time.perf_counter() - t0, 2)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return entry


def remove_stale(index_path: Path, keep: str | None) -> None:
    """Delete store versions other than ``keep`` (after the meta table points at ``keep``)."""
    root = store_root(index_path)
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.name != keep and _ID.match(p.name) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _save(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, arr)


def _write_vectors(con, path: Path, pos_of: np.ndarray, n: int) -> int:
    """Stream the embedding BLOBs out of DuckDB (Arrow batches, no per-row Python objects) into a
    float32 memmap at each row's position; returns the width."""
    reader = con.execute("SELECT rowid, embedding FROM tiles").to_arrow_reader(_CHUNK)
    out = None
    dim = 0
    with atomic_path(path, suffix=".npy") as tmp:
        for batch in reader:
            rows = batch.column(0).to_numpy().astype(np.int64)
            flat = _binary_values(batch.column(1))
            if out is None:
                dim = len(flat) // 4 // max(len(rows), 1)
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
            out[pos_of[rows]] = flat.view("<f4").reshape(len(rows), dim)
        if out is None:  # an index without tiles never gets a store
            raise DatabaseDamagedError("no tiles to write a vector store from")
        out.flush()
        del out
    return dim


def _binary_values(arr) -> np.ndarray:
    """The bytes of an Arrow (large) binary array of equal-length values, without copying rows."""
    import pyarrow as pa

    large = pa.types.is_large_binary(arr.type)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64 if large else np.int32)
    offsets = offsets[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    widths = np.diff(offsets)
    if len(widths) and (widths != widths[0]).any():
        raise DatabaseDamagedError("the index holds embeddings of different widths")
    return data


def _nlist(n: int) -> int:
    """IVF lists: about 2 sqrt(n), a power of two, with at least 39 training rows per list."""
    target = 2 * math.sqrt(max(n, 1))
    nlist = 2 ** round(math.log2(max(target, 1)))
    return int(max(1, min(nlist, 65_536, n // 39 or 1)))


def _calibrate(
    index, vectors: np.ndarray, rerank: int, target: float, given: np.ndarray | None, queries: int = 32
) -> dict:
    """The smallest power-of-two nprobe whose recall@10 (after the exact rescoring of ``rerank``
    candidates) reaches ``target`` on calibration queries: ``given`` (text queries embedded by the
    index's model), else queries made from the data alone. Text queries lie away from the image
    embeddings, with tightly packed top scores; the made ones imitate that: sums of two stored
    vectors with most of the shared mean direction removed, plus as much noise."""
    n, d = vectors.shape
    if given is not None:
        q = np.asarray(given, dtype=np.float32).reshape(-1, d)
        q = np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True))
        return _probe_until(index, vectors, q, rerank, target, "text prompts")
    rng = np.random.default_rng(1)
    sample = np.sort(rng.choice(n, size=min(n, 4096), replace=False))
    mean = np.asarray(vectors[sample], dtype=np.float32).mean(axis=0)
    pairs = np.sort(rng.choice(n, size=2 * queries, replace=n < 2 * queries))
    x = np.asarray(vectors[pairs], dtype=np.float32)
    rng.shuffle(x)
    q = x[:queries] + x[queries:] - 1.6 * mean
    q += (
        rng.standard_normal(q.shape).astype(np.float32)
        * (1.0 / np.sqrt(d))
        * np.linalg.norm(q, axis=1)[:, None]
    )
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    return _probe_until(index, vectors, q, rerank, target, "made from the data")


def _probe_until(index, vectors: np.ndarray, q: np.ndarray, rerank: int, target: float, source: str) -> dict:
    import faiss

    queries = len(q)
    truth = _exact_top(vectors, q, 10)
    nlist = int(index.nlist)
    nprobe, recall = 1, 0.0
    while True:
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
        _, ids = index.search(q, max(rerank, 40), params=params)
        hits = 0
        for qi, cand in enumerate(ids):
            cand = np.unique(cand[cand >= 0])
            best = cand[np.argsort(-(np.asarray(vectors[cand]) @ q[qi]), kind="stable")[:10]]
            hits += len(np.intersect1d(best, truth[qi]))
        recall = hits / (10 * queries)
        if recall >= target or nprobe >= nlist:
            break
        nprobe = min(nlist, 2 * nprobe)
    return {
        "nprobe": int(nprobe),
        "calibration_recall_at_10": round(recall, 4),
        "calibration_queries": f"{queries} {source}",
    }


def _exact_top(vectors: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k rows for each query, in one pass over the (memory-mapped) vectors."""
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for start in range(0, len(vectors), 2 * _CHUNK):
        s = q @ np.asarray(vectors[start : start + 2 * _CHUNK], dtype=np.float32).T
        s_all = np.concatenate([best_s, s], axis=1)
        i_all = np.concatenate(
            [best_i, np.broadcast_to(np.arange(start, start + s.shape[1]), s.shape)], axis=1
        )
        keep = np.argsort(-s_all, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(s_all, keep, 1)
        best_i = np.take_along_axis(i_all, keep, 1)
    return best_i


def _write_ann(
    folder: Path,
    vectors: np.ndarray,
    settings: Settings,
    index_path: Path,
    previous: dict | None,
    labels: list[str],
    codes: np.ndarray,
    queries: Callable[[], np.ndarray] | None = None,
) -> dict:
    import faiss

    t0 = time.perf_counter()
    n, d = vectors.shape
    index, added, how = None, np.arange(n), "built"
    old = (previous or {}).get("ann")
    if old and int(previous.get("dim", -1)) == d and _ID.match(str(previous.get("id", ""))):
        kept = np.isin(np.array([*labels, None], dtype=object)[codes], previous.get("dates") or [None])
        old_path = store_root(index_path) / previous["id"] / ANN_FILE
        if int(kept.sum()) == int(previous["count"]) and old_path.is_file():
            index = faiss.read_index(str(old_path))  # in memory: it is written anew below
            _renumber(index, np.flatnonzero(kept))
            added, how = np.flatnonzero(~kept), "updated"
    if index is None:
        nlist = _nlist(n)
        quantizer = faiss.IndexFlatIP(d)
        if settings.ann_codes == "pq" and d % 4 == 0 and n >= 10_000:  # PQ's codebooks need ~40 x 256 rows
            index = faiss.IndexIVFPQ(quantizer, d, nlist, d // 4, 8, faiss.METRIC_INNER_PRODUCT)
            index.pq.cp.niter = 10
        else:
            index = faiss.IndexIVFScalarQuantizer(
                quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
            )
        # plain (not spherical, FAISS's default for inner product) centroids: a list's centroid is
        # the mean of its vectors, so q . centroid is the mean score of the list's vectors, which
        # ranks lists for probing far better than the unit-norm centroid (recall@10 at nprobe 16 of
        # 512, 10^5 synthetic tiles: 1.00 against 0.96, with queries that found none of their top 10)
        index.cp.spherical = False
        index.cp.niter = 10  # FAISS's 25 change the centroids little and cost 2.5x the build
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))
        index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    for start in range(0, len(added), _CHUNK):
        ids = added[start : start + _CHUNK]
        index.add_with_ids(np.ascontiguousarray(vectors[ids], dtype=np.float32), ids.astype(np.int64))
    with atomic_path(folder / ANN_FILE) as tmp:
        faiss.write_index(index, str(tmp))
    t_cal = time.perf_counter()
    try:
        given = queries() if queries is not None else None
    except Exception:  # noqa: BLE001 - calibration is best effort: the data's own queries then
        given = None
    cal = _calibrate(index, vectors, settings.ann_rerank, settings.ann_target_recall, given)
    return {
        "kind": _kind(index),
        "nlist": int(index.nlist),
        "code_bytes": int(index.code_size),
        **cal,
        "rerank": settings.ann_rerank,
        "how": how,
        "added": int(len(added)),
        "seconds": round(t_cal - t0, 2),
        "calibration_seconds": round(time.perf_counter() - t_cal, 2),
    }


def _kind(index) -> str:
    import faiss

    if isinstance(index, faiss.IndexIVFPQ):
        codes = f"PQ{index.pq.M}x{index.pq.nbits}"
    else:
        codes = "SQ8"
    return f"faiss IVF-{codes} (inner product), exact float32 rescoring"


def _renumber(index, new_positions: np.ndarray) -> None:
    """Map the ids of an IVF index (old row positions 0..n-1) to new positions, in place: adding a
    date interleaves its rows with the old ones in the index's row order."""
    import faiss

    invlists = index.invlists
    for lst in range(index.nlist):
        size = invlists.list_size(lst)
        if not size:
            continue
        ids = faiss.rev_swig_ptr(invlists.get_ids(lst), size)
        ids[:] = new_positions[ids]
