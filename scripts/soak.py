"""A bounded load test of the MCP server over streamable HTTP on 127.0.0.1 (a command, not a test).

    python scripts/soak.py --out results/soak.json [--clients 50] [--seconds 60] [--index DIR/x.duckdb]

It starts ``geosearch serve --http`` on a free loopback port (over a small generated mosaic indexed
with the starter model, unless ``--index`` is given), then

1. a **cold burst**: ``--clients`` sessions make their first call at the same moment, while the
   server has loaded nothing (index open and model load race);
2. a **warm run**: ``--clients`` sessions call a mix of tools for ``--seconds`` seconds.

It samples the server's RSS every 0.1 s and writes JSON: calls, errors (with the first messages),
p50 / p95 latency per phase and tool, RSS before, peak during the burst, warm, peak and after.
Every loop is bounded in count and time; nothing leaves 127.0.0.1."""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import anyio
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_index(folder: Path) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    from geosearch.index import build_index
    from geosearch.settings import Settings

    rng = np.random.default_rng(0)
    img = (rng.random((3, 768, 768)) * 60 + 70).astype(np.uint8)
    img[:, 100:260, 100:260] = np.array([200, 40, 40], np.uint8)[:, None, None]
    img[:, 400:700, 380:720] = np.array([30, 70, 160], np.uint8)[:, None, None]
    tif = folder / "soak.tif"
    with rasterio.open(
        tif, "w", driver="GTiff", width=768, height=768, count=3, dtype="uint8",
        crs="EPSG:32633", transform=from_origin(500000.0, 4500000.0, 1.0, 1.0),
    ) as ds:  # fmt: skip
        ds.write(img)
    out = folder / "soak.duckdb"
    build_index([tif], out, settings=Settings(scales_m=[128.0, 256.0]), progress=False)
    return out


class RSS:
    """The server's resident memory (with its children), sampled in a thread."""

    def __init__(self, pid: int):
        import psutil

        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs)
        except Exception:  # noqa: BLE001 - the process is gone
            return 0

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self.now()))
            time.sleep(0.1)

    def start(self):
        self._t.start()
        return self

    def stop(self):
        self._stop.set()
        self._t.join(2)

    def peak(self, t0: float, t1: float) -> int:
        return max((r for t, r in self.samples if t0 <= t <= t1), default=0)


def _calls(index: str) -> list[tuple[str, dict]]:
    return [
        ("parse_query", {"text": "red roofs near water", "use_llm": False}),
        ("coarse_search", {"index": index, "query": "red roofs", "k": 5}),
        ("coarse_search", {"index": index, "query": "blue water", "k": 3}),
        ("zoom_tile", {"index": index, "tile": "s128_r0_c0", "query": "red", "k": 4, "preview": False}),
        ("answer", {"text": "red roofs", "index": index, "k": 2, "explain": False, "preview": False}),
    ]


def _mb(v: int) -> float:
    return round(v / 2**20, 1)


def _stats(records: list[tuple[str, float, bool, str]]) -> dict:
    lat = np.array([r[1] for r in records]) if records else np.zeros(0)
    errors = [r for r in records if not r[2]]
    by_tool = {}
    for tool in sorted({r[0] for r in records}):
        t = np.array([r[1] for r in records if r[0] == tool])
        by_tool[tool] = {"calls": len(t), "p50_ms": round(float(np.percentile(t, 50)) * 1e3, 1),
                         "p95_ms": round(float(np.percentile(t, 95)) * 1e3, 1)}  # fmt: skip
    return {
        "calls": len(records),
        "errors": len(errors),
        "first_errors": [f"{r[0]}: {r[3][:160]}" for r in errors[:5]],
        "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 1) if len(lat) else None,
        "p95_ms": round(float(np.percentile(lat, 95)) * 1e3, 1) if len(lat) else None,
        "by_tool": by_tool,
    }


async def _session(url: str, body, deadline: float, records: list) -> None:
    """One client session running ``body``; a session that fails is recorded as an error."""
    from mcp import Client

    try:
        with anyio.fail_after(max(5.0, deadline - time.perf_counter() + 120)):
            async with Client(url, read_timeout_seconds=300) as client:
                await body(client)
    except Exception as exc:  # noqa: BLE001
        records.append(("session", 0.0, False, f"{type(exc).__name__}: {exc}"))


async def _timed_call(client, tool: str, args: dict, records: list) -> None:
    """(tool, seconds, ok, error text) for one call."""
    t0 = time.perf_counter()
    try:
        res = await client.call_tool(tool, args)
        err = res.content[0].text if res.is_error else ""
        records.append((tool, time.perf_counter() - t0, not res.is_error, err))
    except Exception as exc:  # noqa: BLE001
        records.append((tool, time.perf_counter() - t0, False, f"{type(exc).__name__}: {exc}"))


async def _cold_burst(url: str, index: str, n: int) -> list:
    records = []
    gate = anyio.Event()

    async def one(i: int):
        async def body(client):
            await gate.wait()
            await _timed_call(client, *_calls(index)[1 + i % 4], records)

        await _session(url, body, time.perf_counter() + 300, records)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
        await anyio.sleep(1.0)  # every session connected, none has called yet
        gate.set()
    return records


async def _warm(url: str, index: str, n: int, seconds: float) -> list:
    records = []
    stop_at = time.perf_counter() + seconds
    rng = random.Random(0)

    async def one(i: int):
        async def body(client):
            while time.perf_counter() < stop_at:
                await _timed_call(client, *rng.choice(_calls(index)), records)

        await _session(url, body, stop_at, records)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/soak.json")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--index", default=None, help="an index to serve (default: a generated one)")
    args = ap.parse_args(argv)
    if not (1 <= args.clients <= 500 and 1 <= args.seconds <= 1800):
        ap.error("--clients 1..500, --seconds 1..1800")

    tmp = Path(tempfile.mkdtemp(prefix="geosearch-soak-"))
    index = Path(args.index).resolve() if args.index else _make_index(tmp)
    port = _free_port()
    env = {**os.environ, "GEOSEARCH_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "GEOSEARCH_SERVE_QUEUE": str(max(64, 2 * args.clients))}  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "geosearch_server", "serve", "--root", str(index.parent), "--http", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.time() + 120
        while True:
            if server.poll() is not None:
                raise SystemExit(f"server exited: {server.stderr.read().decode()[-1000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit("server did not start in 120 s") from None
                time.sleep(0.2)
        rss = RSS(server.pid).start()
        time.sleep(0.5)
        before = rss.now()
        t0 = time.perf_counter()
        cold = anyio.run(_cold_burst, url, index.name, args.clients)
        t1 = time.perf_counter()
        time.sleep(1.0)
        warm_rss = rss.now()
        t2 = time.perf_counter()
        warm = anyio.run(_warm, url, index.name, args.clients, args.seconds)
        t3 = time.perf_counter()
        time.sleep(1.0)
        after = rss.now()
        rss.stop()
        cold_peak = rss.peak(t0, t1 + 1.0)
        report = {
            "clients": args.clients,
            "seconds": args.seconds,
            "index": str(index),
            "cold_burst": {**_stats(cold), "wall_s": round(t1 - t0, 2), "rss_peak_mb": _mb(cold_peak)},
            "warm": {
                **_stats(warm),
                "wall_s": round(t3 - t2, 2),
                "calls_per_s": round(len(warm) / (t3 - t2), 2),
                "rss_peak_mb": _mb(rss.peak(t2, t3)),
            },  # fmt: skip
            "rss_mb": {
                "before": _mb(before),
                "cold_peak": _mb(cold_peak),
                "warm": _mb(warm_rss),
                "peak": _mb(max(r for _, r in rss.samples)),
                "after": _mb(after),
            },  # fmt: skip
            "cold_peak_over_warm": round(cold_peak / max(warm_rss, 1), 2),
            "cpus": os.cpu_count(),
        }
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    from geosearch.fileio import atomic_write_json

    atomic_write_json(args.out, report)
    c, w = report["cold_burst"], report["warm"]
    print(
        f"cold burst: {c['calls']} calls, {c['errors']} errors, p95 {c['p95_ms']} ms; "
        f"warm: {w['calls']} calls, {w['errors']} errors, p50/p95 {w['p50_ms']}/{w['p95_ms']} ms; "
        f"RSS MB {report['rss_mb']}; cold peak / warm = {report['cold_peak_over_warm']} -> {args.out}"
    )
    return 0 if c["errors"] == 0 and w["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
