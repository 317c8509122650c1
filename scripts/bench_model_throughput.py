"""Index throughput of two or more models on one mosaic, in the same run (a benchmark, not a test).

    python scripts/bench_model_throughput.py MOSAIC --models geosearch-starter:OLD.safetensors \\
        geosearch-starter --repeats 2 --out results/model-throughput.json

Builds the tile index of MOSAIC with each model (region proposals off, so the figure is the part the
model drives; ``--proposals`` builds the full index as ``geosearch index`` does), alternating models
for ``--repeats`` rounds so that a busy machine penalises them alike, and writes tiles per second per
model and each model's ratio to the first one (JSON, written atomically).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mosaic", nargs="+")
    ap.add_argument("--models", nargs="+", required=True, help="model names; ratios are to the first")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--proposals", action="store_true", help="also find and embed region proposals")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch

    from geosearch.fileio import atomic_write_text
    from geosearch.index import build_index
    from geosearch.models import get_model
    from geosearch.settings import get_settings

    settings = get_settings().model_copy(update={"proposals": bool(args.proposals)})
    models = {name: get_model(name, settings=settings) for name in args.models}
    runs: dict[str, list[dict]] = {name: [] for name in args.models}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for i, (name, model) in enumerate(models.items()):
                out = Path(tmp) / f"r{r}_m{i}.duckdb"
                t0 = time.perf_counter()
                report = build_index(args.mosaic, out, model=model, settings=settings, progress=False)
                sec = time.perf_counter() - t0
                runs[name].append({"seconds": round(sec, 2), "tiles": report.tiles_embedded})
                print(f"round {r + 1}: {name}: {report.tiles_embedded} tiles in {sec:.1f}s", flush=True)
    first = args.models[0]
    summary = {}
    for name, rr in runs.items():
        rate = float(np.median([x["tiles"] / x["seconds"] for x in rr]))
        summary[name] = {
            "model_id": models[name].model_id,
            "image_size": models[name].image_size,
            "tiles_per_s": round(rate, 2),
            "runs": rr,
        }
    base = summary[first]["tiles_per_s"]
    for s in summary.values():
        s["ratio_to_first"] = round(s["tiles_per_s"] / base, 3)
    result = {
        "mosaic": [str(m) for m in args.mosaic],
        "proposals": bool(args.proposals),
        "threads": settings.threads or torch.get_num_threads(),
        "machine": platform.platform(),
        "models": summary,
    }
    atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: (v["tiles_per_s"], v["ratio_to_first"]) for k, v in summary.items()}))


if __name__ == "__main__":
    main()
