#!/usr/bin/env python
"""Query by example vs text-only on the AID dev benchmark mosaic: precision@10 for the same class.

For every class with at least two chips in the mosaic, ``--examples`` chips (chosen with a fixed
seed) each serve once as the example (their footprint polygon is the query; the tiles overlapping
the example are excluded from the results). A result counts as correct when it matches a chip of
the same class with IoU >= the bench's ``iou`` (0.5), computed in a metric CRS; a softer variant
counts a result whose centre falls inside a same-class chip. The text-only baseline runs the
bench's own scene query for that class ("an aerial image of a ...") with the ``coarse`` method, and
the composed variant adds that text to the example (λ = 0.5).

    python scripts/eval_by_example.py out/aid-dev --out results/by-example.json

Uses only the dev split mosaic built by ``geosearch bench aid-mosaic --split dev`` (never test).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from shapely.geometry import Point


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", help="the AID dev benchmark folder (e.g. out/aid-dev)")
    ap.add_argument("--index", default=None, help="index to use (default: the harness's index for the model)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--examples", type=int, default=3, help="examples per class (each a separate query)")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--lam", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/by-example.json")
    args = ap.parse_args(argv)

    from geosearch.change.compose import Example, query_by_example
    from geosearch.eval.bench_format import load_benchmark
    from geosearch.eval.harness import prepare_index
    from geosearch.geo import metric_crs_for_bounds_wgs84, reproject_geom
    from geosearch.index import TileIndex
    from geosearch.pipeline import run_method
    from geosearch.settings import get_settings

    bench = load_benchmark(args.bench)
    if "test" in str(bench.meta.model_extra or {}).lower() and "split dev" not in str(bench.meta.model_extra):
        print("refusing: this script is for the dev split only", file=sys.stderr)
        return 2
    settings = get_settings()
    if args.model:
        settings = settings.model_copy(update={"model": args.model})
    if args.index:
        index = TileIndex.open(args.index)
    else:
        index, _ = prepare_index(bench, settings, None, progress=True)
    crs = metric_crs_for_bounds_wgs84(index.bounds_wgs84)
    regions = bench.regions
    metric = {rid: reproject_geom(r.polygon_wgs84, "EPSG:4326", crs) for rid, r in regions.items()}
    by_class: dict[str, list[str]] = {}
    for rid, r in sorted(regions.items()):
        by_class.setdefault(r.label, []).append(rid)
    text_for: dict[str, str] = {}
    for i in range(len(bench)):
        t = bench.truth(i)
        if bench.query_types[i] == "scene" and t.relevant:
            labels = {regions[r].label for r in t.relevant}
            if len(labels) == 1:
                text_for.setdefault(labels.pop(), bench.query_texts[i])
    iou_min = float(bench.meta.iou)
    rng = np.random.default_rng(args.seed)

    def precision(answer_regions, label: str) -> tuple[float, float]:
        same = [metric[r] for r in by_class[label]]
        strict = soft = 0
        for reg in answer_regions[: args.k]:
            g = reproject_geom(reg.polygon_wgs84, "EPSG:4326", crs)
            inter = np.array([g.intersection(s).area for s in same])
            union = np.array([g.union(s).area for s in same])
            strict += bool((inter / union >= iou_min).any())
            c = g.centroid
            soft += any(s.contains(Point(c.x, c.y)) for s in same)
        return strict / args.k, soft / args.k

    rows: list[dict] = []
    multi: list[dict] = []
    t0 = time.perf_counter()
    for label, rids in sorted(by_class.items()):
        if len(rids) < 2:
            continue
        text = text_for.get(label, f"an aerial image of {label}")
        t_strict, t_soft = precision(run_method("coarse", index, text, args.k).regions, label)
        picks = rng.choice(len(rids), size=min(args.examples, len(rids)), replace=False)
        for p in sorted(picks):
            rid = rids[int(p)]
            ex = Example(geometry=regions[rid].polygon_wgs84, crs="EPSG:4326")
            e_strict, e_soft = precision(query_by_example(index, [ex], k=args.k).regions, label)
            c_strict, c_soft = precision(
                query_by_example(index, [ex], text=label_text(text), k=args.k, lam=args.lam).regions, label
            )
            rows.append(
                {
                    "class": label,
                    "example": rid,
                    "n_class_chips": len(rids),
                    "text": text,
                    "p@10_example": e_strict,
                    "p@10_example_soft": e_soft,
                    "p@10_example+text": c_strict,
                    "p@10_example+text_soft": c_soft,
                    "p@10_text": t_strict,
                    "p@10_text_soft": t_soft,
                }
            )
        # all picked chips as positives (mean), then with 2 chips of other classes as negatives
        # (GeoVibes' 2·mean(pos) - mean(neg)); one query each per class
        exs = [Example(geometry=regions[rids[int(p)]].polygon_wgs84, crs="EPSG:4326") for p in sorted(picks)]
        others = [r for lab, rs in sorted(by_class.items()) if lab != label for r in rs]
        negs = [
            Example(geometry=regions[others[int(j)]].polygon_wgs84, crs="EPSG:4326")
            for j in rng.choice(len(others), size=2, replace=False)
        ]
        m_strict, m_soft = precision(query_by_example(index, exs, k=args.k).regions, label)
        n_strict, n_soft = precision(query_by_example(index, exs, negs, k=args.k).regions, label)
        multi.append(
            {
                "class": label,
                "examples": [rids[int(p)] for p in sorted(picks)],
                "p@10_pos": m_strict,
                "p@10_pos_soft": m_soft,
                "p@10_pos_neg": n_strict,
                "p@10_pos_neg_soft": n_soft,
                "p@10_text": t_strict,
                "p@10_text_soft": t_soft,
            }
        )
        print(
            f"{label:20s} text {t_soft:.2f}  example {np.mean([r['p@10_example_soft'] for r in rows if r['class'] == label]):.2f}"
            f"  {len(exs)} examples {m_soft:.2f}  +neg {n_soft:.2f}  (soft)",
            flush=True,
        )

    def mean(key: str) -> float:
        return round(float(np.mean([r[key] for r in rows])), 4) if rows else 0.0

    keys = [
        "p@10_example",
        "p@10_example+text",
        "p@10_text",
        "p@10_example_soft",
        "p@10_example+text_soft",
        "p@10_text_soft",
    ]
    result = {
        "bench": str(Path(args.bench)),
        "index": str(index.path),
        "model": index.meta.get("model_name"),
        "model_id": index.meta.get("model_id"),
        "k": args.k,
        "lambda": args.lam,
        "iou": iou_min,
        "examples_per_class": args.examples,
        "seed": args.seed,
        "queries": len(rows),
        "classes": len({r["class"] for r in rows}),
        "mean": {k: mean(k) for k in keys},
        "note": "text-only = the bench's scene query of the class with method coarse (no example); "
        "by-example excludes tiles overlapping the example chip. strict = IoU >= iou with a "
        "same-class chip; soft = result centre inside a same-class chip.",
        "multi_example": {
            "queries": len(multi),
            "mean": {
                k: round(float(np.mean([r[k] for r in multi])), 4) if multi else 0.0
                for k in (
                    "p@10_pos",
                    "p@10_pos_neg",
                    "p@10_text",
                    "p@10_pos_soft",
                    "p@10_pos_neg_soft",
                    "p@10_text_soft",
                )
            },
            "per_class": multi,
        },
        "seconds": round(time.perf_counter() - t0, 1),
        "per_query": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["mean"], indent=2))
    print(json.dumps(result["multi_example"]["mean"], indent=2))
    print(f"wrote {out}")
    return 0


def label_text(text: str) -> str:
    """The class text used as a (positive) modification of the example."""
    return "with " + text if not text.lower().startswith("with ") else text


if __name__ == "__main__":
    sys.exit(main())
