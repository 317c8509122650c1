"""``geosearch ask INDEX "text"``: answer a region query with the answering chain (the same one
``geosearch eval`` scores and the MCP ``answer`` tool serves), or with ``--llm`` the LLM planner."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("ask", help="answer a question in words: ranked regions or an honest 'not found'")
    p.add_argument("index")
    p.add_argument("text")
    p.add_argument("-k", type=int, default=5, help="at most this many regions (1..50)")
    p.add_argument(
        "--bbox",
        type=float,
        nargs=4,
        metavar=("MINX", "MINY", "MAXX", "MAXY"),
        help="restrict to this lon/lat bbox",
    )
    p.add_argument("--format", choices=["table", "geojson"], default="table")
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="write the answer for GIS: .geojson, .gpkg, .fgb, .parquet or .csv (by extension)",
    )
    p.add_argument(
        "--html", default=None, metavar="FILE", help="write a self-contained map page of the answer"
    )
    p.add_argument("--llm", action="store_true", help="let the configured chat model choose the tools")
    p.add_argument("--no-explain", action="store_true")
    p.add_argument(
        "--timings",
        action="store_true",
        help="print the wall time of each phase (imports, index open, model load, answer) to stderr "
        "as one line: geosearch-timings {json}",
    )
    p.set_defaults(func=run, fast_exit=True)  # read-only: no interpreter teardown (cli._exit_now)


def run(args) -> int:
    from geosearch import timing

    try:
        return _run(args)
    finally:
        if getattr(args, "timings", False):
            print(timing.report_line(), file=sys.stderr)


def _run(args) -> int:
    from geosearch.timing import phase

    with phase("imports"):
        from pydantic import ValidationError

        from geosearch.errors import InputError
        from geosearch.export import format_for
        from geosearch_server.commands._common import check_output_file, format_table
        from geosearch_tools import answer as t_answer
        from geosearch_tools.common import Workspace, tool_error_message

    if args.out:
        format_for(args.out)  # refuse an unknown extension before any work
    if args.html and not args.html.lower().endswith((".html", ".htm")):
        raise InputError(f"--html {args.html!r}: give a file name ending in .html")
    for flag, target in (("--out", args.out), ("--html", args.html)):
        if target:
            check_output_file(flag, target)  # folder exists and is writable: before any work
    if not args.text.strip():  # the same line for "" and "   " (pydantic's would name a field)
        raise InputError("empty query: give some words to search for")
    ws = Workspace([], restrict=False, warm=False)  # one query: no read-ahead of the whole ANN
    path = str(ws.resolve(args.index))
    try:
        inp = t_answer.AnswerInput(
            text=args.text,
            index=path,
            area=list(args.bbox) if args.bbox else None,
            k=args.k,
            explain=not args.no_explain,
            preview=False,  # the CLI writes --html instead
        )
    except ValidationError as exc:
        raise InputError(tool_error_message(exc)) from exc
    with phase("answer"):
        if args.llm:
            from geosearch_server.planner import run_llm_planner

            out = t_answer.to_output(run_llm_planner(inp.text, path, ws, k=inp.k, area=inp.area), ws, path)
        else:
            out = t_answer.run(inp, ws)  # the answering chain, exactly as the MCP answer tool runs it
    if args.out:
        from geosearch.export import write_answer

        try:
            fmt = write_answer(out.geojson, args.out)
        except OSError as exc:
            raise InputError(f"--out {args.out!r}: cannot write it: {exc.strerror or exc}") from None
    if args.html:
        from geosearch.fileio import atomic_write_text
        from geosearch.mapview import answer_map_html

        with ws.using(path) as h:
            page = answer_map_html(h.index, out.geojson)
        try:
            atomic_write_text(args.html, page)
        except OSError as exc:
            raise InputError(f"--html {args.html!r}: cannot write it: {exc.strerror or exc}") from None
    if args.format == "geojson":
        print(json.dumps(out.geojson))
        return 0
    if out.abstained:
        print(out.reason)
        rows_src, title = out.near_misses, "near-misses"
    else:
        rows_src, title = out.regions, f"{len(out.regions)} region(s) ({out.method})"
    print(title)
    rows = [
        {
            "rank": i,
            "id": r.id,
            "score": r.score,
            "confidence": r.confidence,
            "flags": ",".join(r.flags),
            "bbox_wgs84": [round(v, 6) for v in r.bbox],
        }
        for i, r in enumerate(rows_src, start=1)
    ]
    print(format_table(rows, ["rank", "id", "score", "confidence", "flags", "bbox_wgs84"]))
    if out.explanation:
        print("\n" + out.explanation)
    if args.out:
        print(f"\n{fmt} written to {args.out}")
    if args.html:
        print(f"map page written to {args.html}")
    return 0
