"""Scale benchmark: open time, search p50 / p95, RSS and recall@10, exact and ANN side by side.

    python scripts/bench_scale.py --sizes 100000 1000000 --out results/scale.json [--threads 2]

For each size: writes a synthetic index in the real format (DuckDB tables, then the vector store
and ANN through ``geosearch.index.upgrade_index``, as ``geosearch upgrade`` does), then measures
in fresh processes, so that one mode's pages do not count in the other's RSS:

* exact: ``search()`` with ``ann=off`` (a scan of the float32 memmap), top-10 of each query kept
  as the ground truth;
* ann: ``search()`` through the IVF-SQ8 ANN with its calibrated nprobe and exact rescoring;
  recall@10 against the exact top-10; also with a scale filter (a quarter of the tiles).

Each search process starts cold: the index's files are dropped from the page cache first
(``POSIX_FADV_DONTNEED``), and the first query is reported on its own (``first_query_ms``). The
ANN process times its queries twice: ``search_cold`` straight after opening (as a one-shot CLI
search meets the index), then ``search`` after ``VectorStore.warm()`` has read the ANN and the
per-tile arrays through the page cache (``warm_s``; what the MCP server does when it opens an
index); recall is that of the second pass. The nprobe sweep runs after both.

Queries are vectors (no text encoder in the timing), imitating text queries: away from the image
embeddings, with tightly packed top-10 scores (:mod:`geosearch.eval.scale`). Writes JSON;
asserts nothing. ``--keep DIR`` keeps the indexes there (else a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _percentiles(ms: list[float]) -> dict:
    import numpy as np

    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
    }


def phase_build(path: Path, n: int, dim: int) -> dict:
    import psutil

    from geosearch.eval.scale import write_synthetic_index
    from geosearch.index import upgrade_index
    from geosearch.settings import Settings

    t0 = time.perf_counter()
    vectors = write_synthetic_index(path, n, dim=dim)
    t1 = time.perf_counter()
    # calibrated on text-like queries, as a build with its model is (other ones than those timed)
    entry = upgrade_index(path, Settings(ann="on"), queries=lambda: vectors.queries(32, seed=2))
    t2 = time.perf_counter()
    root = Path(str(path) + ".store") / entry["id"]
    return {
        "tiles": n,
        "dim": dim,
        "duckdb_write_s": round(t1 - t0, 2),
        "store_and_ann_s": round(t2 - t1, 2),
        "ann": entry["ann"],
        "disk_mb": {
            "duckdb": round(path.stat().st_size / 1e6, 1),
            **{p.name: round(p.stat().st_size / 1e6, 1) for p in sorted(root.iterdir())},
        },
        "build_peak_rss_mb": round(psutil.Process().memory_info().rss / 1e6, 1),
    }


def _truth(index, qs, scales=None) -> list[list[str]]:
    """Exact top-10 tile ids of every query, in one batched pass over the vectors."""
    from geosearch.vectors import _exact_top

    if scales is None:
        rows = np.arange(len(index))
        top = _exact_top(index.embeddings, qs, 10)
    else:
        rows = np.flatnonzero(np.isin(index.scales, scales))
        lo, hi = rows[0], rows[-1] + 1  # rows are sorted by scale: one scale is one range
        assert hi - lo == len(rows)
        top = _exact_top(index.embeddings[lo:hi], qs, 10) + lo
    return [[str(index.tile_ids[i]) for i in t] for t in top]


def phase_search(path: Path, mode: str, queries: int, truth_file: Path, timed_exact: int) -> dict:
    import psutil

    from geosearch.eval.scale import SyntheticVectors
    from geosearch.settings import get_settings

    os.environ["GEOSEARCH_ANN"] = "off" if mode == "exact" else "on"
    get_settings.cache_clear()
    proc = psutil.Process()
    t0 = time.perf_counter()
    from geosearch.index import TileIndex  # the import is not the index's opening cost
    from geosearch.search import search

    t_import = time.perf_counter() - t0
    rss0 = proc.memory_info().rss
    evicted = _evict(path)  # start cold, as a fresh machine or a cache that other files took would
    t0 = time.perf_counter()
    index = TileIndex.open(path)
    open_ms = (time.perf_counter() - t0) * 1000
    rss_open = proc.memory_info().rss
    dim = index.embeddings.shape[1]
    qs = SyntheticVectors(dim=dim).queries(queries)
    out: dict = {
        "open_ms": round(open_ms, 2),
        "import_s": round(t_import, 2),
        "rss_after_import_mb": round(rss0 / 1e6, 1),
        "rss_after_open_mb": round(rss_open / 1e6, 1),
        "search_mode": index.search_mode(),
        "cold_start": f"{evicted} MB of index files dropped from the page cache before opening",
    }
    timed = qs[:timed_exact] if mode == "exact" else qs
    labels = (("all", {}), ("scale_filter", {"scales": [256.0]}))

    def timed_pass(first: bool) -> dict:
        results = {}
        for label, kw in labels:
            first_ms = None
            if first:
                t0 = time.perf_counter()
                search(index, qs[0], 10, **kw)  # first query: maps the ANN, starts reading it ahead
                first_ms = round((time.perf_counter() - t0) * 1000, 3)
            ms, ids = [], []
            for q in timed:
                t0 = time.perf_counter()
                hits = search(index, q, 10, **kw)
                ms.append((time.perf_counter() - t0) * 1000)
                ids.append([h.tile_id for h in hits])
            results[label] = {
                **({"first_query_ms": first_ms} if first else {}),
                **_percentiles(ms),
                "ids": ids,
            }
        return results

    results = timed_pass(first=True)
    if mode == "ann":  # then as a server has it: the ANN and per-tile arrays read ahead (store.warm)
        out["search_cold"] = results
        t0 = time.perf_counter()
        index.store.warm().join()
        out["warm_s"] = round(time.perf_counter() - t0, 2)
        results = timed_pass(first=False)
    out["rss_after_search_mb"] = round(proc.memory_info().rss / 1e6, 1)
    out["rss_growth_mb"] = round((proc.memory_info().rss - rss0) / 1e6, 1)
    if mode == "exact":  # the ground truth of every query, batched (the timed ones agree with it)
        truth = {"all": _truth(index, qs), "scale_filter": _truth(index, qs, [256.0])}
        for label, r in results.items():
            agree = [len(set(a) & set(b)) / 10 for a, b in zip(r["ids"], truth[label])]
            r["agrees_with_batched_truth"] = round(float(np.mean(agree)), 4)
        truth_file.write_text(json.dumps(truth))
    else:
        truth = json.loads(truth_file.read_text())
        for label, r in results.items():
            rec = [len(set(a) & set(b)) / len(b) for a, b in zip(r["ids"], truth[label])]
            r["recall_at_10"] = round(float(np.mean(rec)), 4)
            r["recall_at_10_min"] = round(float(np.min(rec)), 2)
        out["nprobe_sweep"] = _sweep(index, qs, truth["all"]) if index.store.ann_meta else []
    for group in (results, out.get("search_cold", {})):
        for r in group.values():
            r.pop("ids", None)
    out["search"] = results
    return out


def _evict(path: Path) -> int:
    """Drop the index's files from the page cache (``POSIX_FADV_DONTNEED``: no root needed);
    returns the MB they hold on disk."""
    files = [path, *Path(str(path) + ".store").rglob("*")]
    total = 0
    for f in files:
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            total += f.stat().st_size
    return round(total / 1e6)


def _sweep(index, qs, truth: list[list[str]]) -> list[dict]:
    """Recall@10 and latency of unfiltered ANN searches at nprobe from 8 to 4x the calibrated one:
    the curve that the calibrated point sits on, to extrapolate from."""
    import numpy as np

    from geosearch.search import search
    from geosearch.settings import get_settings

    meta = index.store.ann_meta
    rows = []
    nprobe = 8
    while nprobe <= min(int(meta["nlist"]), 4 * int(meta["nprobe"])):
        os.environ["GEOSEARCH_ANN_NPROBE"] = str(nprobe)
        get_settings.cache_clear()
        ms, rec = [], []
        for q, want in zip(qs, truth):
            t0 = time.perf_counter()
            hits = search(index, q, 10)
            ms.append((time.perf_counter() - t0) * 1000)
            rec.append(len({h.tile_id for h in hits} & set(want)) / len(want))
        rows.append({"nprobe": nprobe, **_percentiles(ms), "recall_at_10": round(float(np.mean(rec)), 4)})
        nprobe *= 2
    os.environ.pop("GEOSEARCH_ANN_NPROBE", None)
    get_settings.cache_clear()
    return rows


def _child(args: list[str], env: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{args[:2]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument(
        "--timed-exact", type=int, default=50, help="exact searches timed (all queries get a truth)"
    )
    ap.add_argument("--threads", type=int, default=2, help="BLAS / OpenMP threads of the search processes")
    ap.add_argument("--out", default=None)
    ap.add_argument("--keep", default=None, help="folder to keep the indexes in")
    ap.add_argument("--phase", choices=["build", "exact", "ann"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--index", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--truth", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase == "build":
        print(json.dumps(phase_build(Path(args.index), args.sizes[0], args.dim)))
        return
    if args.phase:
        print(
            json.dumps(
                phase_search(Path(args.index), args.phase, args.queries, Path(args.truth), args.timed_exact)
            )
        )
        return
    env = {
        **os.environ,
        **{v: str(args.threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
    }
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="geosearch-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"threads": args.threads, "cpus": os.cpu_count(), "queries": args.queries, "sizes": {}}
    try:
        for n in args.sizes:
            path = work / f"scale-{n}.duckdb"
            truth = work / f"truth-{n}.json"
            record = work / f"build-{n}.json"  # the build's own numbers, kept for a rerun that reuses it
            if not path.exists():
                build = _child(
                    ["--phase", "build", "--index", str(path), "--sizes", str(n), "--dim", str(args.dim)], env
                )
                from geosearch.fileio import atomic_write_json

                atomic_write_json(record, build)
            elif record.exists():
                build = {**json.loads(record.read_text()), "reused": str(path)}
            else:
                build = {"tiles": n, "reused": str(path)}
            row = {"build": build}
            common = ["--index", str(path), "--truth", str(truth), "--queries", str(args.queries)]
            common += ["--timed-exact", str(args.timed_exact)]
            row["exact"] = _child(["--phase", "exact", *common], env)
            row["ann"] = _child(["--phase", "ann", *common], env)
            report["sizes"][str(n)] = row
            e, a = row["exact"]["search"]["all"], row["ann"]["search"]["all"]
            print(
                f"{n:>10} tiles: open {row['ann']['open_ms']:.0f} ms | exact p50/p95 {e['p50_ms']:.1f}/"
                f"{e['p95_ms']:.1f} ms, RSS {row['exact']['rss_after_search_mb']:.0f} MB | ann p50/p95 "
                f"{a['p50_ms']:.1f}/{a['p95_ms']:.1f} ms, recall@10 {a['recall_at_10']:.3f}, RSS "
                f"{row['ann']['rss_after_search_mb']:.0f} MB",
                flush=True,
            )
            if args.out:  # after each size: a long run keeps what it measured
                from geosearch.fileio import atomic_write_json

                atomic_write_json(args.out, report)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
