"""Foundation benchmark: index throughput on a real mosaic and search latency at 10^3..10^6 tiles.

    python scripts/bench_foundation.py MOSAIC... --out results/bench-foundation.json [--model NAME]

Index throughput: builds a fresh index of MOSAIC (tiles/s, km²/min, share of time outside the
model). Search latency: exact cosine top-10 over synthetic unit embeddings of the model's width,
p50/p95 over repeated queries, at 10^3, 10^5 and 10^6 tiles. Writes JSON; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from geosearch.fileio import atomic_write_text
from geosearch.index import TileIndex, build_index
from geosearch.models import get_model
from geosearch.search import search
from geosearch.settings import get_settings


def synthetic_index(n: int, dim: int, model, crs_wkt: str, rng) -> TileIndex:
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    side = int(np.ceil(np.sqrt(n)))
    r, c = np.divmod(np.arange(n), side)
    x0 = 500000 + c * 128.0
    y0 = 4500000 + r * 128.0
    idx = TileIndex(
        path=Path("synthetic"),
        meta={"crs": crs_wkt, "model_id": model.model_id, "bounds_wgs84": [0, 0, 1, 1]},
        tile_ids=np.array([f"t{i}" for i in range(n)], dtype=object),
        scales=np.full(n, 128.0),
        bounds=np.column_stack([x0, y0, x0 + 128, y0 + 128]),
        embeddings=emb,
        dates=np.array([None] * n, dtype=object),
    )
    idx.attach_model(model)
    return idx


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mosaic", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=50)
    args = ap.parse_args()
    settings = get_settings()
    model = get_model(args.model, settings=settings)
    with tempfile.TemporaryDirectory() as tmp:
        report = build_index(
            args.mosaic, Path(tmp) / "bench.duckdb", model=model, settings=settings, progress=False
        )
        real = TileIndex.open(Path(tmp) / "bench.duckdb")
        real.attach_model(model)
        lat_real = []
        words = [
            "a harbour with boats",
            "dense residential buildings",
            "a river",
            "farmland",
            "a parking lot",
        ]
        for i in range(args.queries):
            t0 = time.perf_counter()
            search(real, f"{words[i % len(words)]} {i}", k=10)  # new text each time: includes text encoding
            lat_real.append((time.perf_counter() - t0) * 1000)
    out = {
        "model": model.model_id,
        "device": str(model.device),
        "mosaic": args.mosaic,
        "index_build": report.as_dict(),
        "search_latency_ms": {},
        "search_latency_real_index_ms_incl_text_encoding": {
            "tiles": len(real),
            "p50": float(np.percentile(lat_real, 50)),
            "p95": float(np.percentile(lat_real, 95)),
        },
    }
    rng = np.random.default_rng(0)
    dim = real.embeddings.shape[1]
    query_vecs = rng.standard_normal((args.queries, dim)).astype(np.float32)
    query_vecs /= np.linalg.norm(query_vecs, axis=1, keepdims=True)
    for n in args.sizes:
        idx = synthetic_index(n, dim, model, real.meta["crs"], rng)
        lat = []
        for q in query_vecs:
            t0 = time.perf_counter()
            search(idx, q, k=10)
            lat.append((time.perf_counter() - t0) * 1000)
        out["search_latency_ms"][str(n)] = {
            "p50": round(float(np.percentile(lat, 50)), 3),
            "p95": round(float(np.percentile(lat, 95)), 3),
            "dim": dim,
        }
        print(
            f"{n:>9} tiles: p50 {out['search_latency_ms'][str(n)]['p50']:.2f} ms, "
            f"p95 {out['search_latency_ms'][str(n)]['p95']:.2f} ms"
        )
        del idx
    atomic_write_text(args.out, json.dumps(out, indent=2))
    print(json.dumps(out["index_build"], indent=2))


if __name__ == "__main__":
    main()
