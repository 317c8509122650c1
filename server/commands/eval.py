"""``geosearch eval``: score a retrieval method on a benchmark folder (see docs/evaluation.md).

geosearch eval BENCH_DIR [--method M] [--model NAME] --out results.json [--index PATH] [-k 100]
geosearch eval --list-methods
geosearch eval --compare a.json b.json [c.json ...]
geosearch eval --plot results/*.json --out-dir results/plots
geosearch eval --results-table results/aid-dev/*.json [--update-readme README.md]
"""

from __future__ import annotations

import sys

from geosearch_server.commands._common import atomic_write_text, format_table


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a retrieval method on a benchmark folder (FORMAT.md)")
    p.add_argument(
        "bench", nargs="?", help="benchmark folder (bench.json, mosaic/, regions.geojson, queries.jsonl)"
    )
    p.add_argument(
        "--method",
        default="answer",
        help="retrieval method (default: answer, the served chain; see --list-methods)",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a chain setting for this run (e.g. seg_windows=6, w_context=0.5); "
        "VALUE is JSON or a plain string; repeatable",
    )
    p.add_argument(
        "--model", default=None, help="embedding model (default: GEOSEARCH_MODEL or the starter model)"
    )
    p.add_argument("--out", default=None, help="result JSON to write")
    p.add_argument(
        "--index", default=None, help="index file to build or reuse (default: BENCH_DIR/.geosearch/)"
    )
    p.add_argument("-k", type=int, default=100, help="results asked per query (1..100, default 100)")
    p.add_argument("--scales", type=float, nargs="+", default=None, help="tile sizes in metres for the index")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--list-methods", action="store_true", help="list the registered methods and exit")
    mode.add_argument(
        "--compare", nargs="+", metavar="RESULT", help="print metrics of result files side by side"
    )
    mode.add_argument(
        "--plot", nargs="+", metavar="RESULT", help="draw recall@k, abstention and answer pages"
    )
    mode.add_argument(
        "--results-table",
        nargs="+",
        metavar="RESULT",
        help="markdown results table (with --update-readme: write it between the markers)",
    )
    p.add_argument("--out-dir", default="results/plots", help="folder for --plot PNGs")
    p.add_argument(
        "--update-readme",
        default=None,
        metavar="README",
        help="with --results-table: replace the text between <!-- results:start/end --> markers",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from geosearch.errors import InputError

    if args.list_methods:
        return _list_methods()
    if args.compare:
        return _compare(args.compare)
    if args.plot:
        from geosearch.eval.plots import plot_results

        for path in plot_results(args.plot, args.out_dir):
            print(path)
        return 0
    if args.results_table:
        return _results_table(args.results_table, args.update_readme)
    if not args.bench:
        raise InputError("give a benchmark folder (or --list-methods / --compare / --plot / --results-table)")
    return _evaluate(args)


def parse_options(items: list[str]) -> dict:
    """``KEY=VALUE`` strings -> a dict (VALUE parsed as JSON when it is JSON)."""
    import json

    from geosearch.errors import InputError
    from geosearch.settings import CHAIN_FIELDS, check_options

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"--option needs KEY=VALUE (got {item!r})")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
        if key not in CHAIN_FIELDS and not key.startswith("w_") and key not in KNOWN_METHOD_OPTIONS:
            raise InputError(
                f"unknown option {key!r}; chain settings: {', '.join(CHAIN_FIELDS)}, w_<weight>, "
                f"or {', '.join(sorted(KNOWN_METHOD_OPTIONS))}"
            )
    return check_options(out)


# options that individual methods read (see their docstrings)
KNOWN_METHOD_OPTIONS = {
    "exclude",
    "abstain_threshold",
    "explain",
    "scale_m",  # answer / single-scale
    "band_roles",
    "date",
    "date_from",
    "date_to",
    "example_bbox",
    "example_crs",
    "example_tile",
    "lambda",
    "negative_tiles",
    "nms",
    "prior",
    "prior_keep",
    "prior_top",
    "prior_weight",
    "scales",
}  # change, by-example, coarse+prior


def _list_methods() -> int:
    from geosearch.pipeline import list_methods

    print(
        format_table(
            [{"method": m.name, "description": m.description} for m in list_methods()],
            ["method", "description"],
        )
    )
    return 0


def _evaluate(args) -> int:
    from geosearch.eval.harness import dumps_result, evaluate, summary_columns
    from geosearch.settings import get_settings

    updates: dict = {}
    for name in ("model", "threads", "device"):
        if getattr(args, name, None) is not None:
            updates[name] = getattr(args, name)
    if args.scales:
        updates["scales_m"] = args.scales
    settings = get_settings().model_copy(update=updates)

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr)

    result = evaluate(
        args.bench,
        args.method,
        k=args.k,
        index_path=args.index,
        settings=settings,
        options=parse_options(args.option),
        progress=not args.quiet,
        log=log,
    )
    if args.out:
        atomic_write_text(args.out, dumps_result(result))
    cols = summary_columns([result])
    rows = [{"type": "all", **result["metrics"]}]
    rows += [{"type": t, **m} for t, m in result["per_type"].items()]
    print(
        f"{result['bench']['name']}  method={result['method']}  model={result['model']['name']} "
        f"({result['model']['model_id']})"
    )
    print(format_table(rows, ["type", "n_queries", *cols]))
    c = result["cost"]
    print(
        f"cost: index {c['index_build_seconds']} s, {c['tiles_embedded']} tiles, {c['area_km2']} km2; "
        f"latency p50 {c['latency_p50_ms']} ms p95 {c['latency_p95_ms']} ms; "
        f"full-res reads/query {c['full_res_reads_per_query']}; peak RSS {c['peak_rss_mb']} MB"
    )
    at = (result.get("abstention_curve") or {}).get("abstain_recall_at_far") or {}
    if at:
        print(
            "abstention curve (the threshold swept): abstain_recall "
            + ", ".join(
                f"{'-' if v is None else f'{v:.4f}'} at false_abstain_rate <= {m}" for m, v in at.items()
            )
        )
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _compare(paths: list[str]) -> int:
    from geosearch.eval.harness import load_result, summary_columns

    results = [load_result(p) for p in paths]
    cols = summary_columns(results)
    rows = []
    for p, r in zip(paths, results):
        rows.append(
            {
                "result": p,
                "bench": r["bench"]["name"],
                "method": r["method"],
                "model": r["model"]["name"],
                **r["metrics"],
                "p50_ms": r.get("cost", {}).get("latency_p50_ms"),
            }
        )
    print(format_table(rows, ["result", "bench", "method", "model", *cols, "p50_ms"]))
    return 0


def _results_table(paths: list[str], readme: str | None) -> int:
    from geosearch.eval.plots import results_markdown, update_readme

    table = results_markdown(paths)
    if readme and update_readme(readme, table):
        print(f"updated the results table in {readme}")
    else:
        if readme:
            print(
                f"{readme}: markers <!-- results:start --> / <!-- results:end --> not found; "
                "table printed instead",
                file=sys.stderr,
            )
        print(table)
    return 0
