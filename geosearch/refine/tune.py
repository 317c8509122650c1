"""Tuning and calibration on a *dev tuning* benchmark (never on the benchmark that is reported,
never on the test split).

    python -m geosearch.refine.tune grid  out/aid-dev-tune  '{"seg_threshold": [0.5, 0.6]}'
    python -m geosearch.refine.tune fit   out/aid-dev-tune,out/aid-dev-tune1 '{"features": ["d_ref"]}'
    python -m geosearch.refine.tune cv    DIR1,DIR2,... '{"features": [["d_ref"], ["g_above"]], "max_false": [0.05, 0.1]}'
    python -m geosearch.refine.tune slope DIR1,DIR2,...   # the region slope of "find all" answers

``grid`` runs the ``segment`` method over the benchmark for each combination of options (they
override the chain settings of :func:`geosearch.chain.chain_config`) and prints hit@10 / map / cost. ``fit`` runs
``segment`` once, fits the logistic confidence on the top region's calibration features (label:
answerable vs ``absent``), chooses the abstention threshold (false-abstain rate <= 0.15) and
writes ``calibration.json`` with a note of the data that fitted it. ``cv`` cross-validates the
abstention over benches that differ in left-out classes, layout and background
(``scripts/make_dev_benches.py``): each bench is left out in turn, the confidence and threshold are
fitted on the others, and abstain_recall / false_abstain_rate / answered hit@10 are measured on the
one left out; it prints every fold, the mean and the worst fold per feature set and budget, and the
one :func:`choose` picks (``save``: fitted on all the benches and written to calibration.json).
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from geosearch.eval.bench_format import load_benchmark
from geosearch.eval.harness import answer_queries, prepare_index, score_runs
from geosearch.eval.metrics import aggregate
from geosearch.fileio import atomic_write_text
from geosearch.geo import utm_crs_for
from geosearch.refine import calibrate
from geosearch.refine.pyramid import dense_count
from geosearch.settings import get_settings

_INDEX_CACHE: dict = {}


def run_bench(
    bench_dir: str, method: str = "segment", options: dict | None = None, k: int = 100, stride: int = 1
) -> dict:
    bench = load_benchmark(bench_dir)
    if stride > 1:  # every stride-th query (quick tuning passes)
        import dataclasses

        bench = dataclasses.replace(
            bench,
            query_ids=bench.query_ids[::stride],
            query_texts=bench.query_texts[::stride],
            _truth=bench._truth[::stride],
        )
    key = str(Path(bench_dir).resolve())
    if key not in _INDEX_CACHE:
        _INDEX_CACHE[key] = prepare_index(bench, get_settings(), None)[0]
    index = _INDEX_CACHE[key]
    t0 = time.perf_counter()
    runs = answer_queries(index, list(bench.query_texts), method, k, bench.layers_dir, options=options)
    secs = time.perf_counter() - t0
    b = index.bounds_wgs84
    scores = score_runs(bench, runs, utm_crs_for((b[0] + b[2]) / 2, (b[1] + b[3]) / 2))
    metrics = aggregate(scores, bench.meta.k)
    per_type = {
        t: aggregate([s for s in scores if s.qtype == t], bench.meta.k) for t in {s.qtype for s in scores}
    }
    return {
        "metrics": metrics,
        "per_type": per_type,
        "runs": runs,
        "scores": scores,
        "seconds": secs,
        "index": index,
        "reads": float(np.mean([r.full_res_reads for r in runs])),
    }


def grid(bench_dir: str, space: dict, method: str = "segment", stride: int = 1) -> list[dict]:
    keys = list(space)
    rows = []
    for values in itertools.product(*[space[k] for k in keys]):
        opts = dict(zip(keys, values))
        r = run_bench(bench_dir, method, opts, stride=stride)
        m = r["metrics"]
        row = {
            **opts,
            "hit@10": round(m["hit@10"], 4),
            "map": round(m["map"], 4),
            "hit@1": round(m["hit@1"], 4),
            "reads/q": round(r["reads"], 1),
            "s": round(r["seconds"], 1),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def fit_and_save(
    index, features: list[str], x: np.ndarray, y: np.ndarray, max_false: float, fitted_on: str
) -> tuple[dict, np.ndarray]:
    """Logistic fit (label 1 = answerable), threshold at false-abstain rate <= ``max_false``, saved to
    calibration.json for the index's model; returns the parameters and the fitted confidences."""
    coef, b = calibrate.fit_logistic(x, y)
    p = 1 / (1 + np.exp(-(x @ coef + b)))
    thr = calibrate.choose_threshold(p[y == 1], p[y == 0], max_false)
    params = {
        "model": index.meta.get("model_name"),
        "model_id": index.meta.get("model_id"),
        "features": features,
        "coef": [round(float(c), 6) for c in coef],
        "intercept": round(float(b), 6),
        "threshold": round(float(thr), 6),
        "fitted_on": fitted_on,
        "fit_abstain_recall": round(float(np.mean(p[y == 0] < thr)), 4),
        "fit_false_abstain_rate": round(float(np.mean(p[y == 1] < thr)), 4),
        "created": time.strftime("%Y-%m-%d"),
    }
    calibrate.save_calibration(str(index.meta.get("model_name")), params)
    print(json.dumps(params, indent=2))
    return params, p


def fit(
    bench_dirs: str | list[str],
    options: dict | None = None,
    max_false: float = 0.15,
    features: list[str] | None = None,
) -> dict:
    """Run ``segment`` over one or more tuning benchmarks (comma-separated), fit the logistic
    confidence on the named calibration features of each query's answer (label: answerable vs
    ``absent``), choose the threshold (false-abstain rate <= ``max_false``) and save it."""
    dirs = bench_dirs.split(",") if isinstance(bench_dirs, str) else list(bench_dirs)
    features = features or list(calibrate.FEATURES)
    parts = [bench_features(d, features, options) for d in dirs]
    notes = [_bench_note(d) for d in dirs]
    index = _INDEX_CACHE[str(Path(dirs[-1]).resolve())]
    x, y = np.vstack([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    params, p = fit_and_save(
        index,
        features,
        x,
        y,
        max_false,
        f"AID/RSICD dev-split tuning benchmarks only: {', '.join(notes)}; "
        f"{int(y.sum())} answerable + {int((1 - y).sum())} absent queries, method segment",
    )
    curve = calibrate.tradeoff(p[y == 1], p[y == 0])
    return {"params": params, "curve": curve}


def bench_features(
    bench_dir: str, features: list[str], options: dict | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The calibration features of the served chain's best region for every query of a bench
    (the ``segment`` ablation: the chain without abstention), the labels (1 = answerable) and
    whether the ranking put a right region in the top 10 (what abstaining on it would cost)."""
    r = run_bench(bench_dir, "segment", options)
    x, y, hit = [], [], []
    for run, sc in zip(r["runs"], r["scores"]):
        f = (run.answer.details.get("calibration_features") if run.answer else None) or {}
        missing = [n for n in features if n not in f]
        if missing:
            raise SystemExit(
                f"feature(s) {missing} not computed for {bench_dir} (is the model's gallery present?)"
            )
        x.append([f[n] for n in features])
        y.append(1.0 if sc.answerable else 0.0)
        hit.append(sc.first_hit_rank is not None and sc.first_hit_rank <= 10)
    return np.array(x, float), np.array(y, float), np.array(hit, bool)


MIN_MEAN_RECALL = 0.75  # the selection rule's floors (issue 13's bars are 0.7 mean and 0.5 worst
MIN_WORST_RECALL = 0.6  # fold, with a margin, since the rule picks among many candidates)
MAX_MEAN_FALSE = 0.1


def cross_validate(
    bench_dirs: list[str],
    feature_sets: list[list[str]],
    max_false: float | list[float] = 0.1,
    options: dict | None = None,
    save: bool = False,
) -> dict:
    """Leave one bench out: fit the confidence and choose the threshold (false-abstain rate <=
    ``max_false``, one budget or several) on the other benches, then measure abstain_recall,
    false_abstain_rate and ``answered_hit@10`` (answerable queries answered with a right region in
    the top 10: what the user gets) on the bench left out. Returns, per feature set and budget
    (``"a+b@0.05"``), every fold, the mean and the worst fold, and under ``"chosen"`` the one
    :func:`choose` picks. ``save``: then fit the chosen one on all the benches and save it."""
    budgets = [float(b) for b in (max_false if isinstance(max_false, (list, tuple)) else [max_false])]
    names = sorted({f for fs in feature_sets for f in fs})
    data = {d: bench_features(d, names, options) for d in bench_dirs}
    out: dict = {}
    for fs, budget in itertools.product(feature_sets, budgets):
        cols = [names.index(f) for f in fs]
        folds = []
        for held in bench_dirs:
            xs = np.vstack([data[d][0][:, cols] for d in bench_dirs if d != held])
            ys = np.concatenate([data[d][1] for d in bench_dirs if d != held])
            coef, b = calibrate.fit_logistic(xs, ys)
            p = 1 / (1 + np.exp(-(xs @ coef + b)))
            thr = calibrate.choose_threshold(p[ys == 1], p[ys == 0], budget)
            xt, yt, ht = data[held][0][:, cols], data[held][1], data[held][2]
            pt = 1 / (1 + np.exp(-(xt @ coef + b)))
            ans = yt == 1
            folds.append(
                {
                    "held_out": Path(held).name,
                    "abstain_recall": round(float(np.mean(pt[~ans] < thr)), 4),
                    "false_abstain_rate": round(float(np.mean(pt[ans] < thr)), 4),
                    "answered_hit@10": round(float(np.mean((pt[ans] >= thr) & ht[ans])), 4),
                    "ranked_hit@10": round(float(np.mean(ht[ans])), 4),
                    "threshold": round(float(thr), 4),
                }
            )
        ar = [f["abstain_recall"] for f in folds]
        fa = [f["false_abstain_rate"] for f in folds]
        out[f"{'+'.join(fs)}@{budget:g}"] = {
            "features": fs,
            "max_false": budget,
            "folds": folds,
            "mean_abstain_recall": round(float(np.mean(ar)), 4),
            "mean_false_abstain_rate": round(float(np.mean(fa)), 4),
            "worst_abstain_recall": round(float(np.min(ar)), 4),
            "worst_false_abstain_rate": round(float(np.max(fa)), 4),
            "mean_answered_hit@10": round(float(np.mean([f["answered_hit@10"] for f in folds])), 4),
            "mean_ranked_hit@10": round(float(np.mean([f["ranked_hit@10"] for f in folds])), 4),
        }
    key = choose(out)
    out["chosen"] = key
    if save:
        cv = out[key]
        cols = [names.index(f) for f in cv["features"]]
        x = np.vstack([data[d][0][:, cols] for d in bench_dirs])
        y = np.concatenate([data[d][1] for d in bench_dirs])
        note = (
            f"AID/RSICD dev-split benches only: {', '.join(_bench_note(d) for d in bench_dirs)}; "
            f"{int(y.sum())} answerable + {int((1 - y).sum())} absent queries, the served chain without "
            f"abstention; false-abstain budget {cv['max_false']:g}; leave-one-bench-out: mean abstain_recall "
            f"{cv['mean_abstain_recall']} at mean false_abstain_rate {cv['mean_false_abstain_rate']}, worst "
            f"fold {cv['worst_abstain_recall']}, mean answered hit@10 {cv['mean_answered_hit@10']} of "
            f"{cv['mean_ranked_hit@10']} ranked"
        )
        index = _INDEX_CACHE[str(Path(bench_dirs[-1]).resolve())]
        out["saved"] = fit_and_save(index, cv["features"], x, y, cv["max_false"], note)[0]
    return out


def choose(results: dict) -> str:
    """The selection rule: among the candidates whose cross-validated mean abstain_recall is >=
    :data:`MIN_MEAN_RECALL`, worst fold >= :data:`MIN_WORST_RECALL` and mean false_abstain_rate <=
    :data:`MAX_MEAN_FALSE`, the one that answers the most answerable queries with a right region in
    the top 10 (abstaining on a query the ranking got right is what costs users), then the higher
    mean abstain_recall, then fewer features. Without any such candidate: the highest mean
    abstain_recall at mean false_abstain_rate <= :data:`MAX_MEAN_FALSE`, then the best worst fold."""
    cands = {k: v for k, v in results.items() if isinstance(v, dict) and "folds" in v}
    ok = [
        k
        for k, v in cands.items()
        if v["mean_abstain_recall"] >= MIN_MEAN_RECALL
        and v["worst_abstain_recall"] >= MIN_WORST_RECALL
        and v["mean_false_abstain_rate"] <= MAX_MEAN_FALSE
    ]
    order = ("mean_answered_hit@10", "mean_abstain_recall")
    if not ok:
        ok = [k for k, v in cands.items() if v["mean_false_abstain_rate"] <= MAX_MEAN_FALSE] or list(cands)
        order = ("mean_abstain_recall", "worst_abstain_recall")
    return max(ok, key=lambda k: (*(cands[k][m] for m in order), -len(cands[k]["features"])))


FIND_ALL_SLOPES = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 100.0, 150.0]


def find_all_quality(rows: list[dict], threshold: float, slope: float) -> dict:
    """What a "find all" answer would return for each answered query of a bench at this region slope:
    the regions whose confidence (the top one's logit minus ``slope`` times the own-extent score gap)
    passes ``threshold``. ``rows``: per query ``answerable``, ``n_relevant``, ``confidence`` (of the
    best region), ``scores`` (own-extent, ranked) and ``truth`` (the truth id each ranked region hit,
    or ``None``). Returns mean recall of the instances, precision and F1 over answered answerable
    queries (precision counts answered absent queries as 0) and the mean number returned."""
    lt = np.log(threshold / (1 - threshold))
    rec, prec, f1, n = [], [], [], []
    for r in rows:
        c0 = r["confidence"]
        if c0 is None or c0 < threshold or not r["scores"]:
            continue
        l0, s0 = np.log(c0 / (1 - c0)), r["scores"][0]
        keep = [i for i, s in enumerate(r["scores"]) if l0 - slope * max(0.0, s0 - s) >= lt]
        truth = [r["truth"][i] if i < len(r["truth"]) else None for i in keep]
        p = sum(t is not None for t in truth) / max(len(keep), 1)
        n.append(len(keep))
        if r["answerable"]:
            rc = len({t for t in truth if t is not None}) / max(r["n_relevant"], 1)
            rec.append(rc)
            prec.append(p)
            f1.append(0.0 if rc + p == 0 else 2 * rc * p / (rc + p))
        else:
            prec.append(0.0)
    mean = lambda v: float(np.mean(v)) if v else 0.0  # noqa: E731
    return {"recall": mean(rec), "precision": mean(prec), "f1": mean(f1), "returned": mean(n)}


def fit_region_slope(bench_dirs: list[str], slopes: list[float] | None = None, save: bool = True) -> dict:
    """Choose the calibration's ``region_slope`` (how fast a lower region's confidence falls with its
    score gap to the best one, which decides what a "find all" answer returns) on dev benches: the
    slope with the best mean F1 of the returned instances over the benches (IoU 0.5; every answerable
    query treated as "find all" of its class), then the worst bench. Saved into the model's entry."""
    slopes = [float(x) for x in (slopes or FIND_ALL_SLOPES)]
    index = None
    per_bench: dict[str, list[dict]] = {}
    for d in bench_dirs:
        r = run_bench(d, "segment")
        index = r["index"]
        rows = []
        for run, sc in zip(r["runs"], r["scores"]):
            regs = run.answer.regions if run.answer else []
            rows.append(
                {
                    "answerable": sc.answerable,
                    "n_relevant": len(sc.relevant),
                    "confidence": regs[0].confidence if regs else None,
                    "scores": [float(x.details.get("features", {}).get("s_region", x.score)) for x in regs],
                    "truth": [m.truth_id for m in sc.matches],
                }
            )
        per_bench[Path(d).name] = rows
    params = calibrate.load_calibration(index.meta.get("model_name"))
    table = []
    for k in slopes:
        q = {b: find_all_quality(rows, float(params["threshold"]), k) for b, rows in per_bench.items()}
        col = {m: [v[m] for v in q.values()] for m in ("f1", "recall", "precision", "returned")}
        table.append(
            {
                "slope": k,
                **{f"mean_{m}": round(float(np.mean(v)), 4) for m, v in col.items()},
                "worst_f1": round(float(np.min(col["f1"])), 4),
                "per_bench": {b: {m: round(x, 4) for m, x in v.items()} for b, v in q.items()},
            }
        )
    best = max(table, key=lambda t: (t["mean_f1"], t["worst_f1"]))
    out = {"chosen": best["slope"], "table": table}
    if save and params.get("calibrated"):
        entry = {key: v for key, v in params.items() if key != "calibrated"}
        entry["region_slope"] = best["slope"]
        entry["region_slope_fitted_on"] = (
            f"{', '.join(per_bench)}: every answerable query as 'find all' of its class, best mean F1 of "
            f"the returned instances ({best['mean_f1']}, recall {best['mean_recall']}, precision "
            f"{best['mean_precision']}, {best['mean_returned']} regions per answer)"
        )
        calibrate.save_calibration(str(index.meta.get("model_name")), entry)
    return out


def _bench_note(d: str) -> str:
    meta = json.loads((Path(d) / "bench.json").read_text())
    bg = meta.get("background")
    return (
        f"{Path(d).name} (seed {meta.get('seed')}, {meta.get('layout', 'shelf')}"
        f"{' on ' + str(bg.get('source')) if bg else ''}, left out {'/'.join(meta.get('left_out_classes', []))})"
    )


def fit_query_level(bench_dir: str, features: list[str] | None = None, max_false: float = 0.15) -> dict:
    """Fit the logistic confidence on query-level features only (:func:`calibrate.query_features`,
    cheap: no refinement run) and save it to calibration.json for the index's model."""
    from geosearch.refine.common import query_vector
    from geosearch.refine.rerank import positive_text

    features = features or ["bank_count"]
    bench = load_benchmark(bench_dir)
    index = prepare_index(bench, get_settings(), None)[0]
    feats = [
        calibrate.query_features(index, query_vector(index, [positive_text(t)])) for t in bench.query_texts
    ]
    y = np.array([1.0 if bench.truth(i).answerable else 0.0 for i in range(len(bench))])
    x = np.array([[f[n] for n in features] for f in feats])
    seed = json.loads((Path(bench_dir) / "bench.json").read_text()).get("seed")
    params, _ = fit_and_save(
        index,
        features,
        x,
        y,
        max_false,
        f"{bench_dir} (AID/RSICD dev split only, build_aid_bench seed {seed}): {int(y.sum())} "
        f"answerable + {int((1 - y).sum())} absent queries; query-level features",
    )
    return params


def cost_report(bench_dir: str, result_json: str) -> dict:
    """Full-resolution windows read per query (from a ``geosearch eval`` result of a refine method)
    against what a dense tiling at the finest scale the pyramid reached would embed. The finest
    scale per query comes from re-running the pyramid (same settings) in-process."""
    res = json.loads(Path(result_json).read_text())
    r = run_bench(bench_dir, "pyramid", {})
    index = r["index"]
    rows = []
    for run, pq in zip(r["runs"], res["per_query"]):
        finest = run.answer.details.get("finest_scale_m") if run.answer else None
        dense = dense_count(index, finest) if finest else None
        rows.append({"id": pq["id"], "reads": pq["full_res_reads"], "finest_scale_m": finest, "dense": dense})
    reads = np.array([x["reads"] for x in rows], float)
    ratio = np.array([x["reads"] / x["dense"] for x in rows if x["dense"]], float)
    finest_all = min(x["finest_scale_m"] for x in rows if x["finest_scale_m"])
    dense_all = dense_count(index, finest_all)
    out = {
        "queries": len(rows),
        "full_res_reads_per_query_mean": round(float(reads.mean()), 2),
        "full_res_reads_per_query_max": int(reads.max()),
        "full_res_reads_total": int(reads.sum()),
        "per_query_ratio_mean": round(float(ratio.mean()), 5),
        "per_query_ratio_max": round(float(ratio.max()), 5),
        "finest_scale_m_overall": finest_all,
        "dense_windows_at_finest_overall": dense_all,
        "total_reads_over_dense": round(float(reads.sum() / dense_all), 4),
        "finest_scale_counts": {
            str(k): int(v)
            for k, v in zip(*np.unique([x["finest_scale_m"] or 0 for x in rows], return_counts=True))
        },
    }
    print(json.dumps(out, indent=2))
    return out


def plot_tradeoff(curve: list[dict], chosen: float | None, out: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    far = [c["false_abstain_rate"] for c in curve]
    rec = [c["abstain_recall"] for c in curve]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(far, rec, marker=".", lw=1)
    if chosen is not None:
        c = min(curve, key=lambda c: abs(c["threshold"] - chosen))
        ax.scatter(
            [c["false_abstain_rate"]],
            [c["abstain_recall"]],
            color="red",
            zorder=3,
            label=f"threshold {chosen:.3f}",
        )
        ax.legend(loc="lower right")
    ax.axvline(0.15, color="grey", ls=":")
    ax.axhline(0.7, color="grey", ls=":")
    ax.set_xlabel("false_abstain_rate")
    ax.set_ylabel("abstain_recall")
    ax.set_title(title, fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def curve_from_result(result_json: str) -> list[dict]:
    """abstain_recall / false_abstain_rate against the top-1 confidence of a ``segment`` result."""
    res = json.loads(Path(result_json).read_text())
    ans = np.array(
        [
            q["top1_confidence"] if q["top1_confidence"] is not None else 0.0
            for q in res["per_query"]
            if q["answerable"]
        ],
        float,
    )
    absent = np.array(
        [
            q["top1_confidence"] if q["top1_confidence"] is not None else 0.0
            for q in res["per_query"]
            if not q["answerable"]
        ],
        float,
    )
    return calibrate.tradeoff(ans, absent)


def final(bench_dir: str, out_dir: str, methods: list[str], wait_calibration_for: str | None = None) -> None:
    """Evaluate methods on the *reported* benchmark in one process (``geosearch eval`` documents,
    written to ``out_dir/<method>.json``); ``abstain`` waits until calibration.json holds the
    model's fitted entry. Answers of ``segment`` are reused by ``abstain`` through the method cache."""
    from geosearch.eval.harness import evaluate

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for m in methods:
        if m == "answer" and wait_calibration_for:
            while not calibrate.load_calibration(wait_calibration_for).get("calibrated"):
                time.sleep(10)
        t0 = time.perf_counter()
        doc = evaluate(bench_dir, m)
        (Path(out_dir) / f"{m}.json").write_text(json.dumps(doc, indent=1) + "\n")
        met = doc["metrics"]
        print(
            m,
            round(time.perf_counter() - t0, 1),
            "s",
            json.dumps(
                {k: met[k] for k in ("hit@1", "hit@10", "map", "abstain_recall", "false_abstain_rate")}
            ),
            flush=True,
        )
    if "answer" in methods:  # trade-off curve of the calibrated top-1 confidence (answers are cached)
        from geosearch.pipeline import run_method

        bench = load_benchmark(bench_dir)
        index = prepare_index(bench, get_settings(), None)[0]
        conf = []
        rows = []
        seg = (
            json.loads((Path(out_dir) / "segment.json").read_text())
            if (Path(out_dir) / "segment.json").is_file()
            else None
        )
        for i, text in enumerate(bench.query_texts):
            a = run_method("segment", index, text, 100)
            conf.append(a.regions[0].confidence if a.regions and a.regions[0].confidence is not None else 0.0)
            reads = seg["per_query"][i]["full_res_reads"] if seg else a.full_res_reads
            rows.append(
                {
                    "reads": reads,
                    "finest": a.details.get("finest_scale_m"),
                    "dense": dense_count(index, a.details.get("finest_scale_m")),
                }
            )
        reads = np.array([r["reads"] for r in rows], float)
        ratios = np.array([r["reads"] / r["dense"] for r in rows if r["dense"]], float)
        finest_all = min(r["finest"] for r in rows if r["finest"])

        dense_all = dense_count(index, finest_all)
        fin, cnt = np.unique([r["finest"] or 0 for r in rows], return_counts=True)
        cost = {
            "full_res_reads_per_query_mean": round(float(reads.mean()), 2),
            "full_res_reads_per_query_max": int(reads.max()),
            "full_res_reads_total": int(reads.sum()),
            "per_query_reads_over_dense_mean": round(float(ratios.mean()), 5),
            "per_query_reads_over_dense_max": round(float(ratios.max()), 5),
            "finest_scale_m_counts": {f"{f:g}": int(c) for f, c in zip(fin, cnt)},
            "finest_scale_m_overall": finest_all,
            "dense_windows_at_finest_overall": dense_all,
            "total_reads_over_dense_overall": round(float(reads.sum() / dense_all), 4),
            "dense_windows_per_scale": {
                f"{sc:g}": dense_count(index, float(sc)) for sc in (32, 64, 128, 256)
            },
        }
        (Path(out_dir) / "cost.json").write_text(json.dumps(cost, indent=1))
        print(json.dumps(cost), flush=True)
        conf_arr = np.array(conf, float)
        answerable = np.array([bench.truth(i).answerable for i in range(len(bench))])
        curve = calibrate.tradeoff(conf_arr[answerable], conf_arr[~answerable])
        params = calibrate.load_calibration(wait_calibration_for)
        (Path(out_dir) / "abstain_curve.json").write_text(
            json.dumps({"threshold": params["threshold"], "curve": curve}, indent=1)
        )
        plot_tradeoff(
            curve,
            params["threshold"],
            str(Path(out_dir) / "abstain_tradeoff.png"),
            f"abstain on {bench.meta.name} ({params.get('model')})",
        )


if __name__ == "__main__":
    cmd, bench_dir = sys.argv[1], sys.argv[2]
    arg = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    if cmd == "grid":
        stride = int(arg.pop("_stride", 1))
        grid(bench_dir, arg, arg.pop("_method", ["segment"])[0] if "_method" in arg else "segment", stride)
    elif cmd == "fit":
        feats = arg.pop("features", None)
        fit(bench_dir, arg, max_false=float(arg.pop("max_false", 0.15)), features=feats)
    # tune cv DIR1,DIR2,... '{"features": [["d_ref"], ["g_above"]], "max_false": [0.05, 0.1]}'
    elif cmd == "cv":
        res = cross_validate(
            bench_dir.split(","),
            arg.pop("features", [["d_ref"]]),
            arg.pop("max_false", 0.1),
            arg,
            save=bool(arg.pop("save", False)),
        )
        print(json.dumps(res, indent=1))
    elif cmd == "slope":  # tune slope DIR1,DIR2,... '{"slopes": [20, 50, 80]}'
        res = fit_region_slope(bench_dir.split(","), arg.get("slopes"), save=bool(arg.get("save", True)))
        print(json.dumps(res, indent=1))
    elif cmd == "fitq":
        fit_query_level(bench_dir, arg.get("features"))
    elif cmd == "final":
        final(bench_dir, arg["out"], arg["methods"], arg.get("wait"))
    elif cmd == "cost":
        cost_report(bench_dir, sys.argv[3])
    elif cmd == "curve":
        params = calibrate.load_calibration(arg.get("model"))
        curve = curve_from_result(bench_dir)
        plot_tradeoff(curve, params["threshold"], arg["out"], arg.get("title", ""))
        if arg.get("json"):  # the curve itself, next to the plot
            atomic_write_text(
                arg["json"],
                json.dumps(
                    {
                        "result": bench_dir,
                        "threshold": params["threshold"],
                        "features": params["features"],
                        "curve": curve,
                    },
                    indent=1,
                )
                + "\n",
            )
    elif cmd == "run":
        r = run_bench(bench_dir, arg.pop("method", "segment"), arg, stride=int(arg.pop("_stride", 1)))
        print(
            json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r["metrics"].items()}),
            round(r["seconds"], 1),
            r["reads"],
        )
    else:
        raise SystemExit(f"unknown command {cmd}")
