"""Figures and tables from ``geosearch eval`` result files.

* ``recall_at_k_<bench>.png``: hit@k for k = 1..100, one curve per method/model.
* ``abstention_<bench>.png``: abstain_recall against false_abstain_rate while a threshold sweeps
  over the top-1 confidence (``Region.confidence`` when the method sets it, else the top-1 score).
* ``answers_<bench>_<method>.png``: the top answers of a few queries drawn on the mosaic overview.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from geosearch.errors import InputError
from geosearch.eval.metrics import abstention_curve, hit_curve
from geosearch.fileio import atomic_path, atomic_write_text


def save_figure(fig, out: str | Path) -> None:
    """Write a PNG atomically: to a temporary name beside ``out``, then rename."""
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp)


README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"
TABLE_COLUMNS = [
    "hit@1",
    "hit@5",
    "hit@10",
    "exact@1",
    "exact@10",
    "map",
    "ndcg@10",
    "mrr",
    "abstain_recall",
    "false_abstain_rate",
    "fdr@10",
]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "bench"


def _label(r: dict) -> str:
    return f"{r['method']} ({r['model']['name']})"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_recall(results: list[dict], out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ks = np.arange(1, 101)
    for r in results:
        ranks = [q["first_hit_rank"] for q in r["per_query"] if q["answerable"]]
        ax.plot(ks, hit_curve(ranks), label=_label(r))
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("hit@k (answerable queries)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(f"{results[0]['bench']['name']}: recall@k")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)
    return out


def _best_confidence(q: dict) -> float | None:
    """A query's confidence for the abstention curve: ``best_confidence`` where the result has it;
    in older results the top-1 confidence (else score) of answered queries, None for abstained."""
    if "best_confidence" in q:
        return q["best_confidence"]
    if q["abstained"]:
        return None
    return q["top1_confidence"] if q.get("top1_confidence") is not None else q.get("top1_score")


def plot_abstention(results: list[dict], out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    n = len(results)
    for i, r in enumerate(results):
        qs = r["per_query"]
        curve = abstention_curve([_best_confidence(q) for q in qs], [q["answerable"] for q in qs])
        pts = [(p["false_abstain_rate"], p["abstain_recall"]) for p in curve]
        if not pts:
            continue
        x, y = zip(*pts)
        # methods that share a confidence share a curve: the first result is drawn on top and the
        # later ones wider beneath it, so each stays visible
        line = ax.plot(x, y, label=_label(r), lw=1.5 + 1.5 * i, zorder=2 + n - i, alpha=0.9)[0]
        m = r["metrics"]
        if m.get("abstain_recall") is not None and m.get("false_abstain_rate") is not None:
            ax.scatter(
                [m["false_abstain_rate"]], [m["abstain_recall"]], color=line.get_color(), zorder=3 + 2 * n
            )
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="chance")
    ax.set_xlabel("false_abstain_rate (answerable queries)")
    ax.set_ylabel("abstain_recall (absent queries)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(
        f"{results[0]['bench']['name']}: abstention trade-off\n(threshold swept on best confidence; dot: served point)",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)
    return out


def plot_answers(
    result: dict, out: Path, n_queries: int = 4, top: int = 5, max_side: int = 768
) -> Path | None:
    """Top answers (green = hit, red = miss) and the grade-2 truth (blue) of a few queries."""
    from shapely.geometry import shape

    from geosearch.eval.bench_format import load_regions, mosaic_files
    from geosearch.geo import WGS84, reproject_geom
    from geosearch.mosaic import open_mosaic

    root = Path(result["bench"]["path"])
    if not (root / "mosaic").is_dir():
        return None
    mosaic = open_mosaic(mosaic_files(root))
    x0, y0, x1, y1 = mosaic.bounds
    scale = max(x1 - x0, y1 - y0) / max_side
    w, h = max(1, int((x1 - x0) / scale)), max(1, int((y1 - y0) / scale))
    img = mosaic.read(mosaic.bounds, (h, w)).rgb
    regions = load_regions(root / "regions.geojson")
    qs = [q for q in result["per_query"] if q["answerable"] and q["n_returned"]]
    qs.sort(key=lambda q: 2 not in (q.get("relevant") or {}).values())  # caption-like queries first
    chosen = [q for q in qs if q["first_hit_rank"]][: n_queries // 2]
    chosen += [q for q in qs if q not in chosen][: n_queries - len(chosen)]
    if not chosen:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.5 * len(chosen), 4.8), dpi=80, squeeze=False)

    def draw(ax, geom, color, lw):
        g = reproject_geom(geom, WGS84, mosaic.crs)
        for part in getattr(g, "geoms", [g]):
            xs, ys = part.exterior.xy
            ax.plot((np.asarray(xs) - x0) / scale, (y1 - np.asarray(ys)) / scale, color=color, lw=lw)

    for ax, q in zip(axes[0], chosen):
        ax.imshow(img)
        ax.set_axis_off()
        for rid, grade in (q.get("relevant") or {}).items():
            if grade == 2 and rid in regions:
                draw(ax, regions[rid].polygon_wgs84, "deepskyblue", 1.2)
        polys = q.get("top_polygons_wgs84") or [rk.get("polygon_wgs84") for rk in q["ranks"]]
        for rk, geom in list(zip(q["ranks"], polys))[:top]:
            if geom is not None:
                draw(ax, shape(geom), "lime" if rk["hit"] else "red", 1.0)
        ax.set_title(f"{q['id']}: {q['text'][:48]}\nfirst hit rank {q['first_hit_rank']}", fontsize=8)
    fig.suptitle(
        f"{result['bench']['name']} / {_label(result)}: top {top} answers "
        "(green hit, red miss, blue grade-2 truth)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    save_figure(fig, out)
    plt.close(fig)
    return out


def plot_results(paths: list[str], out_dir: str | Path) -> list[Path]:
    from geosearch.eval.harness import load_result

    results = [load_result(p) for p in paths]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    by_bench: dict[str, list[dict]] = {}
    for r in results:
        by_bench.setdefault(r["bench"]["name"], []).append(r)
    for name, group in by_bench.items():
        slug = _slug(name)
        written.append(plot_recall(group, out_dir / f"recall_at_k_{slug}.png"))
        written.append(plot_abstention(group, out_dir / f"abstention_{slug}.png"))
        for r in group:
            try:
                p = plot_answers(r, out_dir / f"answers_{slug}_{_slug(r['method'])}.png")
            except (InputError, OSError) as exc:
                print(f"answers page for {r['method']} skipped: {exc}")
                p = None
            if p:
                written.append(p)
    return written


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _model_label(model: dict) -> str:
    """``name@first 8 hex of the weights`` (retrained weights keep their name), or the name."""
    mid = str(model.get("model_id") or "")
    tag = mid.rsplit("@", 1)[1][:8] if "@" in mid else ""
    return f"{model.get('name', '')}@{tag}" if tag else str(model.get("name", ""))


def results_markdown(paths: list[str]) -> str:
    from geosearch.eval.harness import load_result

    results = [load_result(p) for p in paths]
    # per bench, the served chain first, then the component baselines
    order = {"answer": 0, "segment": 1, "pyramid": 2, "coarse": 3, "single-scale": 4}
    results.sort(
        key=lambda r: (r["bench"]["name"], order.get(r["method"], 9), r["method"], _model_label(r["model"]))
    )
    cols = [c for c in TABLE_COLUMNS if any(c in r["metrics"] for r in results)]
    head = ["bench", "method", "model", "queries", *cols, "p50 ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        m = r["metrics"]
        row = [
            r["bench"]["name"],
            f"`{r['method']}`",
            _model_label(r["model"]),
            str(m.get("n_queries", "")),
            *[_fmt(m.get(c)) for c in cols],
            _fmt(r.get("cost", {}).get("latency_p50_ms")),
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("Generated by `geosearch eval --results-table`; definitions in docs/evaluation.md.")
    return "\n".join(lines)


def update_readme(readme: str | Path, table: str) -> bool:
    """Replace only the text between the results markers; False when they are absent."""
    path = Path(readme)
    if not path.is_file():
        return False
    text = path.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < 0 or end < start:
        return False
    new = text[: start + len(README_START)] + "\n" + table + "\n" + text[end:]
    atomic_write_text(path, new)
    return True
