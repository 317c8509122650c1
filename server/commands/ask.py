"""``geosearch ask INDEX "text"``: answer a region query with the answering chain (the same one
``geosearch eval`` scores and the MCP ``answer`` tool serves), or with ``--llm`` the LLM planner."""

from __future__ import annotations

import json


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
    p.add_argument("--out", default=None, help="write the GeoJSON answer to this file")
    p.add_argument("--llm", action="store_true", help="let the configured chat model choose the tools")
    p.add_argument("--no-explain", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from geosearch.errors import InputError
    from server.commands._common import atomic_write_json, format_table
    from tools.common import Workspace, jsonable, parse_area

    if not 1 <= args.k <= 50:
        raise InputError(f"-k must be between 1 and 50 (got {args.k})")
    if not args.text.strip():
        raise InputError("empty query: give some words to search for")
    ws = Workspace([], restrict=False)
    path = str(ws.resolve(args.index))
    area = list(args.bbox) if args.bbox else None
    if args.llm:
        from server.planner import run_llm_planner

        ans = run_llm_planner(args.text, path, ws, k=args.k, area=area)
    else:
        from geosearch.chain import answer
        from geosearch.pipeline import MethodContext

        with ws.using(path) as h:
            ctx = MethodContext(
                area=parse_area(area), options={"explain": not args.no_explain}, settings=ws.settings
            )
            ans = answer(h.index, args.text, args.k, ctx)
    gj = jsonable(ans.geojson())
    gj["properties"]["index"] = path
    if args.out:
        atomic_write_json(args.out, gj)
    if args.format == "geojson":
        print(json.dumps(gj))
        return 0
    if ans.abstained:
        print(ans.reason)
        rows_src, title = ans.near_misses, "near-misses"
    else:
        rows_src, title = ans.regions, f"{len(ans.regions)} region(s) ({ans.method})"
    print(title)
    rows = [
        {
            "rank": i,
            "id": r.region_id,
            "score": r.score,
            "confidence": r.confidence,
            "flags": ",".join(r.flags),
            "bbox_wgs84": [round(v, 6) for v in r.polygon_wgs84.bounds],
        }
        for i, r in enumerate(rows_src, start=1)
    ]
    print(format_table(rows, ["rank", "id", "score", "confidence", "flags", "bbox_wgs84"]))
    if ans.explanation:
        print("\n" + ans.explanation)
    if args.out:
        print(f"\nGeoJSON written to {args.out}")
    return 0
