"""End-to-end latency of ``geosearch ask`` (or ``search``): each run is a fresh process, as a user types it.

Usage:
    python scripts/bench_ask.py INDEX [--query TEXT ...] [--queries FILE] [-n 5] [--out results/bench-ask.json]
                                [--threads N] [--warmup 1] [--no-timings] [--command search]
                                [-- EXTRA ARGS]

Runs ``geosearch ask INDEX QUERY --timings`` ``n`` times for every query (rounds interleave the
queries, so a burst of load elsewhere spreads over all of them) and writes JSON: wall seconds per
run from spawn to exit (p50 / p95 / min / max), the phases each run reports with ``--timings``
(process start, parse_args, imports, index_open, model_load, the chain = answer minus open and
load, output, exit) and the machine (cores, load average at start and end). ``--queries`` takes a
text file (one query a line) or a benchmark's ``queries.jsonl`` (its ``text`` fields).
``--command search`` times ``geosearch search INDEX QUERY`` instead (wall time only: search has
no ``--timings``). On a shared
machine the load average says how much of the machine the runs had; repeat and compare medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_QUERIES = [
    "an aerial image of a stadium",
    "an aerial image of a beach",
    "a bridge over a river",
    "farmland near water",
    "dense residential area with many buildings",
]


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without importing numpy."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(values: list[float]) -> dict:
    return {
        "p50": round(percentile(values, 50), 3),
        "p95": round(percentile(values, 95), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "n": len(values),
    }


def read_queries(args) -> list[str]:
    queries = list(args.query or [])
    if args.queries:
        for line in Path(args.queries).read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            queries.append(json.loads(line)["text"] if line.startswith("{") else line)
    return queries or DEFAULT_QUERIES


def ask_command() -> list[str]:
    exe = Path(sys.executable).with_name("geosearch")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("geosearch")
    return [found] if found else [sys.executable, "-m", "geosearch_server"]


def one_run(
    cmd: list[str], index: str, query: str, extra: list[str], env: dict, timings: bool, command: str = "ask"
) -> dict:
    argv = [*cmd, command, index, query, *(["--timings"] if timings else []), *extra]
    t0 = time.time()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    t1 = time.time()
    run = {"query": query, "rc": proc.returncode, "wall_s": round(t1 - t0, 4)}
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("geosearch-timings ")]
    if proc.returncode != 0:
        run["error"] = proc.stderr.strip().splitlines()[-1:]
        return run
    if not lines:  # a geosearch without --timings (an older checkout): wall time only
        return run
    rep = json.loads(lines[-1].split(" ", 1)[1])
    ph = rep["phases"]
    phases = {"start": rep["start_unix"] - t0, **ph}
    if "answer" in ph:
        phases["chain"] = ph["answer"] - ph.get("index_open", 0.0) - ph.get("model_load", 0.0)
    phases["output"] = rep["total_s"] - sum(ph.get(k, 0.0) for k in ("parse_args", "imports", "answer"))
    phases["exit"] = t1 - rep["end_unix"]
    run["phases"] = {k: round(v, 4) for k, v in phases.items()}
    return run


def machine(env: dict) -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "geosearch_threads": env.get("GEOSEARCH_THREADS", "(torch default)"),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("index")
    ap.add_argument("--query", action="append", help="a query (repeatable)")
    ap.add_argument("--queries", help="text file (one a line) or queries.jsonl")
    ap.add_argument("-n", type=int, default=5, help="runs per query (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs first (page cache; default 1)")
    ap.add_argument("--threads", type=int, default=None, help="GEOSEARCH_THREADS for the runs")
    ap.add_argument("--out", default="results/bench-ask.json")
    ap.add_argument(
        "--no-timings", action="store_true", help="do not pass --timings (a geosearch without it): wall only"
    )
    ap.add_argument("--command", choices=["ask", "search"], default="ask", help="the command timed")
    args = ap.parse_args(argv)
    timings = not args.no_timings and args.command == "ask"

    queries = read_queries(args)
    env = dict(os.environ)
    if args.threads is not None:
        env["GEOSEARCH_THREADS"] = str(args.threads)
    cmd = ask_command()
    index = str(Path(args.index).absolute())
    load_start = os.getloadavg()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for _ in range(args.warmup):
        one_run(cmd, index, queries[0], extra, env, timings, args.command)
    runs = []
    for r in range(args.n):
        for q in queries:
            run = one_run(cmd, index, q, extra, env, timings, args.command)
            run["round"] = r
            runs.append(run)
            status = f"{run['wall_s']:.2f} s" if run["rc"] == 0 else f"rc {run['rc']}: {run.get('error')}"
            print(f"[{r + 1}/{args.n}] {q[:50]:50s} {status}", file=sys.stderr)
    ok = [r for r in runs if r["rc"] == 0]
    timed = [r for r in ok if "phases" in r]
    names = list(dict.fromkeys(k for r in timed for k in r["phases"]))
    result = {
        "benchmark": f"geosearch {args.command}, one fresh process per run",
        "command": [*cmd, args.command, index, "QUERY", *(["--timings"] if timings else []), *extra],
        "index": index,
        "queries": queries,
        "runs_per_query": args.n,
        "started": started,
        "machine": {
            **machine(env),
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "failed": len(runs) - len(ok),
        "wall_s": summary([r["wall_s"] for r in ok]) if ok else None,
        "phases_p50_s": {
            k: round(percentile([r["phases"][k] for r in timed if k in r["phases"]], 50), 3) for k in names
        },
        "per_query_p50_s": {
            q: round(percentile([r["wall_s"] for r in ok if r["query"] == q], 50), 3) for q in queries
        },
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from geosearch.fileio import atomic_write_json

    atomic_write_json(out, result)
    print(json.dumps({k: result[k] for k in ("wall_s", "phases_p50_s", "machine")}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
