"""``geosearch eval``: answer every query of a benchmark folder with one method and score it.

Isolation: the system under test receives only the query text (a plain ``str``), the index of the
benchmark's mosaic and a :class:`MethodContext` whose ``layers_dir`` points at a private copy of the
benchmark's ``layers/`` folder. All answers are collected first (phase 1); the truth regions and
the ``relevant`` grades are only looked at afterwards (phase 2).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import mapping

from geosearch.errors import InputError
from geosearch.eval.bench_format import Benchmark, load_benchmark
from geosearch.eval.metrics import (
    MAX_RESULTS,
    QueryScore,
    abstain_recall_at,
    abstention_curve,
    aggregate,
    match_ranked,
)
from geosearch.geo import WGS84, transformer, utm_crs_for
from geosearch.index import TileIndex, build_index
from geosearch.models import get_model
from geosearch.pipeline import Answer, MethodContext, list_methods, run_method
from geosearch.settings import CHAIN_FIELDS, Settings, get_settings

RESULT_FORMAT = "geosearch-eval/1"
DEFAULT_METHOD = "answer"  # the served chain (geosearch ask / MCP answer)
SETTINGS_KEYS = (
    "model",
    "device",
    "threads",
    "batch_size",
    "scales_m",
    "overlap",
    "min_valid_fraction",
    "text_cache_size",
    *CHAIN_FIELDS,
)


@dataclass
class _Run:
    """Phase-1 record of one answered query: nothing from the truth in here."""

    answer: Answer | None
    latency_ms: float
    full_res_reads: int
    error: str | None = None


def method_names() -> list[str]:
    return [m.name for m in list_methods()]


def _settings_hash(settings: Settings, files: list[Path]) -> str:
    key = json.dumps(
        {
            "scales": sorted(settings.scales_m),
            "overlap": settings.overlap,
            "valid": settings.min_valid_fraction,
            "files": [(p.name, p.stat().st_size) for p in files],
        },
        sort_keys=True,
    )
    return hashlib.sha1(key.encode()).hexdigest()[:10]


def default_index_path(bench: Benchmark, settings: Settings, model_id: str | None = None) -> Path:
    """``BENCH_DIR/.geosearch/<model id>-<hash>.duckdb``, or a user cache when the folder is read-only."""
    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id or Path(settings.model).name)
    name = f"{tag}-{_settings_hash(settings, bench.mosaic_files)}.duckdb"
    local = bench.root / ".geosearch"
    try:
        local.mkdir(exist_ok=True)
        if os.access(local, os.W_OK):
            return local / name
    except OSError:
        pass
    bench_key = hashlib.sha1(str(bench.root.resolve()).encode()).hexdigest()[:10]
    return Path.home() / ".cache" / "geosearch" / "bench-index" / bench_key / name


def prepare_index(
    bench: Benchmark, settings: Settings, index_path: Path | None, progress: bool = False
) -> tuple[TileIndex, dict]:
    t0 = time.perf_counter()
    model = get_model(settings.model, settings=settings)
    path = Path(index_path) if index_path else default_index_path(bench, settings, model.model_id)
    existed = path.is_file()
    dates = (bench.meta.model_extra or {}).get("dates")  # multi-date bench (geosearch.change)
    if dates:
        from geosearch.change.dated import build_dated_index

        report = build_dated_index(
            bench.mosaic_files, dates, path, model=model, settings=settings, progress=progress
        )
    else:
        report = build_index(bench.mosaic_files, path, model=model, settings=settings, progress=progress)
    index = TileIndex.open(path)
    index.attach_model(model)
    info = {
        "index_path": str(path),
        "index_reused": existed and report.tiles_embedded == 0,
        "index_build_seconds": round(float(index.meta.get("build_seconds", report.seconds)), 3),
        "index_prepare_seconds_this_run": round(time.perf_counter() - t0, 3),
        "tiles_embedded": len(index),
        "area_km2": round(float(index.meta.get("area_km2", 0.0)), 4),
    }
    return index, info


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
    try:
        import psutil

        peak_mb = max(peak_mb, psutil.Process().memory_info().rss / (1024 * 1024))
    except Exception:  # noqa: BLE001
        pass
    return round(float(peak_mb), 1)


def _mosaic_full_res(index: TileIndex) -> int:
    m = index._mosaic  # only counted when a method opened the mosaic
    return int(m.stats.full_res_reads) if m is not None else 0


def answer_queries(
    index: TileIndex,
    texts: list[str],
    method: str,
    k: int,
    layers_dir: Path | None,
    on_query: Callable[[int, int], None] | None = None,
    *,
    settings: Settings | None = None,
    options: dict | None = None,
) -> list[_Run]:
    """Phase 1: only the query texts are handed to the method."""
    runs: list[_Run] = []
    with tempfile.TemporaryDirectory(prefix="geosearch-eval-layers-") as tmp:
        private_layers: str | None = None
        if layers_dir is not None:
            shutil.copytree(layers_dir, Path(tmp) / "layers")
            private_layers = str(Path(tmp) / "layers")
        for i, text in enumerate(texts):
            ctx = MethodContext(layers_dir=private_layers, settings=settings, options=dict(options or {}))
            before = _mosaic_full_res(index)
            t0 = time.perf_counter()
            try:
                answer = run_method(method, index, str(text), k, ctx)
                err = None
            except InputError as exc:  # the method refused this query: an empty, failed answer
                answer, err = None, str(exc)
            dt = (time.perf_counter() - t0) * 1000
            reads = max(int(answer.full_res_reads) if answer else 0, _mosaic_full_res(index) - before)
            runs.append(_Run(answer, dt, reads, err))
            if on_query:
                on_query(i + 1, len(texts))
    return runs


def _to_metric(geoms: list, crs) -> list:
    if not geoms:
        return []
    t = transformer(WGS84, crs)
    arr = shapely.transform(
        np.array(geoms, dtype=object), lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1]))
    )
    return [g if g.is_valid else shapely.make_valid(g) for g in arr]


def score_runs(bench: Benchmark, runs: list[_Run], metric_crs) -> list[QueryScore]:
    """Phase 2: the truth is only read here, after every answer is in."""
    ids = list(bench.regions)
    truth_metric = dict(zip(ids, _to_metric([bench.regions[r].polygon_wgs84 for r in ids], metric_crs)))
    scores: list[QueryScore] = []
    for i, run in enumerate(runs):
        truth = bench.truth(i)
        regions = run.answer.regions[:MAX_RESULTS] if run.answer else []
        abstained = bool(run.answer.abstained) if run.answer else False
        polys = _to_metric([r.polygon_wgs84 for r in regions], metric_crs)
        matches = match_ranked(
            polys, [r.score for r in regions], truth_metric, truth.relevant, bench.meta.iou
        )
        scores.append(QueryScore(truth.query_id, truth.qtype, dict(truth.relevant), abstained, matches))
    return scores


TOP_POLYGONS = 5


def _rank_entry(
    rank: int, score: float, truth_id: str | None, grade: int, iou: float, region_id: str
) -> dict:
    """One scored result: rank, score, hit flag and region id; the matched truth, grade and IoU on hits."""
    entry: dict = {
        "rank": rank,
        "score": round(float(score), 5),
        "hit": truth_id is not None,
        "region_id": region_id,
    }
    if truth_id is not None:
        entry.update({"truth_id": truth_id, "grade": grade, "iou": round(float(iou), 4)})
    return entry


def _round_geom(geom: dict, nd: int = 7) -> dict:
    def rnd(c):
        return [rnd(x) for x in c] if isinstance(c, (list, tuple)) else round(float(c), nd)

    return {"type": geom["type"], "coordinates": rnd(geom["coordinates"])}


def dumps_result(result: dict) -> str:
    """The result document as JSON: indented, with one line per query in ``per_query``."""
    head = {k: v for k, v in result.items() if k != "per_query"}
    text = json.dumps(head, indent=2, default=str)
    rows = ",\n".join(
        "    " + json.dumps(q, separators=(",", ":"), default=str) for q in result.get("per_query", [])
    )
    return text[:-2] + ',\n  "per_query": [\n' + rows + "\n  ]\n}\n"


def _chain_config(settings: Settings, options: dict | None) -> dict:
    """The chain constants this run used (settings overridden by options)."""
    from geosearch.chain import chain_config

    return chain_config(settings, options)


def _round(d: dict, nd: int = 4) -> dict:
    return {k: (round(v, nd) if isinstance(v, float) else v) for k, v in d.items()}


def evaluate(
    bench_dir: str | Path,
    method: str = DEFAULT_METHOD,
    *,
    model: str | None = None,
    k: int = 100,
    index_path: str | Path | None = None,
    settings: Settings | None = None,
    options: dict | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run one method over a benchmark folder and return the result document (JSON-ready).
    ``options`` override the chain's settings by name for every query (recorded in the result)."""
    if method not in method_names():
        raise InputError(f"unknown method {method!r}; known: {', '.join(sorted(method_names()))}")
    if not 1 <= k <= MAX_RESULTS:
        raise InputError(f"-k must be in 1..{MAX_RESULTS}")
    bench = load_benchmark(bench_dir)
    settings = settings or get_settings()
    if model:
        settings = settings.model_copy(update={"model": model})
    say = log or (lambda _m: None)
    say(f"index: preparing for {len(bench.mosaic_files)} mosaic file(s) with model {settings.model}")
    index, cost = prepare_index(bench, settings, Path(index_path) if index_path else None, progress)
    say(f"index: {cost['tiles_embedded']} tiles, {cost['area_km2']} km2 ({cost['index_path']})")

    t_answer = time.perf_counter()

    def tick(i: int, n: int) -> None:
        if i % 10 == 0 or i == n:
            say(f"{method}: answered {i}/{n} queries ({time.perf_counter() - t_answer:.0f} s)")

    runs = answer_queries(
        index,
        list(bench.query_texts),
        method,
        k,
        bench.layers_dir,
        on_query=tick,
        settings=settings,
        options=options,
    )

    b = index.bounds_wgs84
    metric_crs = utm_crs_for((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    scores = score_runs(bench, runs, metric_crs)
    ks = bench.meta.k
    metrics = _round(aggregate(scores, ks))
    per_type = {
        t: _round(aggregate([s for s in scores if s.qtype == t], ks))
        for t in sorted({s.qtype for s in scores})
    }
    per_query = []
    for text, run, s in zip(bench.query_texts, runs, scores):
        regions = run.answer.regions[:MAX_RESULTS] if run.answer else []
        top = regions[0] if regions else None
        per_query.append(
            {
                "id": s.query_id,
                "type": s.qtype,
                "text": text,
                "answerable": s.answerable,
                "n_relevant": len(s.relevant),
                "relevant": dict(s.relevant),
                "abstained": s.abstained,
                "reason": run.answer.reason if run.answer else run.error,
                "error": run.error,
                "n_returned": len(regions),
                "first_hit_rank": s.first_hit_rank,
                "first_exact_rank": s.first_exact_rank,
                "top1_score": None if top is None else round(float(top.score), 6),
                "top1_confidence": None
                if top is None or top.confidence is None
                else round(float(top.confidence), 6),
                "best_confidence": _best_confidence(run.answer, top),
                "ap": round(s.average_precision(), 4),
                "ndcg@10": round(s.ndcg(10), 4),
                "rr": round(s.reciprocal_rank(), 4),
                "latency_ms": round(run.latency_ms, 2),
                "full_res_reads": run.full_res_reads,
                "ranks": [
                    _rank_entry(m.rank, m.score, m.truth_id, m.grade, m.iou, r.region_id)
                    for m, r in zip(s.matches, regions)
                ],
                "top_polygons_wgs84": [_round_geom(mapping(r.polygon_wgs84)) for r in regions[:TOP_POLYGONS]],
            }
        )
    lat = np.array([r.latency_ms for r in runs]) if runs else np.zeros(1)
    cost.update(
        {
            "latency_p50_ms": round(float(np.percentile(lat, 50)), 2),
            "latency_p95_ms": round(float(np.percentile(lat, 95)), 2),
            "full_res_reads_per_query": round(float(np.mean([r.full_res_reads for r in runs])), 3),
            "peak_rss_mb": _peak_rss_mb(),
            "queries_failed": sum(1 for r in runs if r.error),
        }
    )
    info = next(m for m in list_methods() if m.name == method)
    curve = abstention_curve([q["best_confidence"] for q in per_query], [q["answerable"] for q in per_query])
    return {
        "format": RESULT_FORMAT,
        "bench": {
            "name": bench.meta.name,
            "description": bench.meta.description,
            "path": str(bench.root.resolve()),
            "iou": bench.meta.iou,
            "k": ks,
            "n_queries": len(bench),
        },
        "method": method,
        "method_description": info.description,
        "model": {"name": index.meta.get("model_name"), "model_id": index.meta.get("model_id")},
        "settings": {
            **{key: getattr(settings, key) for key in SETTINGS_KEYS},
            "k": k,
            "metric_crs": metric_crs.to_string(),
            "options": dict(options or {}),
            "chain": _chain_config(settings, options),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "metrics": metrics,
        "per_type": per_type,
        "cost": cost,
        "abstention_curve": {
            "abstain_recall_at_far": {f"{m:g}": abstain_recall_at(curve, m) for m in CURVE_FAR}
            if curve
            else {},
            "points": curve,
        },
        "per_query": per_query,
    }


CURVE_FAR = (0.05, 0.1, 0.15)  # false_abstain_rate levels the abstention curve is read at


def _best_confidence(answer, top) -> float | None:
    """What the method's abstention threshold decides on: the chain records it (its best
    candidate's confidence, also when it abstained); other methods, their top region's confidence,
    else its score (None: no region, always an abstention in the curve)."""
    if answer is None:
        return None
    if "best_confidence" in answer.details:
        c = answer.details["best_confidence"]
    else:
        c = None if top is None else (top.confidence if top.confidence is not None else top.score)
    return None if c is None else round(float(c), 6)


SUMMARY_TAIL = ["map", "ndcg@10", "mrr", "abstain_recall", "false_abstain_rate", "fdr@10"]


def summary_columns(results: list[dict]) -> list[str]:
    """Metric columns in a stable order: hit@k..., exact@k..., then the rest."""
    keys: list[str] = []
    for r in results:
        for key in r.get("metrics", {}):
            if key not in keys and not key.startswith("n_"):
                keys.append(key)

    def kval(key: str) -> int:
        return int(key.split("@")[1])

    hits = sorted((c for c in keys if c.startswith("hit@")), key=kval)
    exact = sorted((c for c in keys if c.startswith("exact@")), key=kval)
    tail = [c for c in SUMMARY_TAIL if c in keys]
    return hits + exact + tail + [c for c in keys if c not in hits + exact + tail]


def load_result(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"result file not found: {p}")
    try:
        data = json.loads(p.read_text())
    except ValueError as exc:
        raise InputError(f"{p} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or "metrics" not in data or "method" not in data:
        raise InputError(f"{p} is not a `geosearch eval` result (no metrics/method)")
    return data
