"""``geosearch ask INDEX "text"``: answer a region query with the planner (deterministic, or --llm)."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("ask", help="answer a question in words with the planner: regions or an abstention")
    p.add_argument("index")
    p.add_argument("text")
    p.add_argument("-k", type=int, default=5, help="at most this many regions")
    p.add_argument("--bbox", type=float, nargs=4, metavar=("MINX", "MINY", "MAXX", "MAXY"),
                   help="restrict to this lon/lat bbox")
    p.add_argument("--format", choices=["table", "geojson"], default="table")
    p.add_argument("--out", default=None, help="write the GeoJSON answer to this file")
    p.add_argument("--llm", action="store_true", help="let the configured chat model choose the tools")
    p.add_argument("--no-explain", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from server.commands._common import atomic_write_json, format_table
    from server.planner import PlanRequest, answer
    from tools.common import Workspace

    ws = Workspace([], restrict=False)
    req = PlanRequest(text=args.text, index=str(ws.resolve(args.index)), area=list(args.bbox) if args.bbox else None,
                      k=args.k, explain=not args.no_explain)
    res = answer(req, ws, llm=args.llm)
    gj = res.geojson()
    if args.out:
        atomic_write_json(args.out, gj)
    if args.format == "geojson":
        print(json.dumps(gj))
        return 0
    if res.abstained:
        print(f"abstained: {res.reason}")
        rows_src, title = res.near_misses, "near-misses"
    else:
        rows_src, title = res.regions, f"{len(res.regions)} region(s) ({res.method}, {res.planner} planner)"
    print(title)
    rows = [{"rank": i, "id": r.id, "score": r.score, "confidence": r.confidence, "flags": ",".join(r.flags),
             "bbox_wgs84": [round(v, 6) for v in r.bbox]} for i, r in enumerate(rows_src, start=1)]
    print(format_table(rows, ["rank", "id", "score", "confidence", "flags", "bbox_wgs84"]))
    if res.explanation:
        print("\n" + res.explanation)
    if args.out:
        print(f"\nGeoJSON written to {args.out}")
    return 0
