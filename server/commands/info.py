"""``geosearch info INDEX``: what an index holds."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("info", help="describe an index")
    p.add_argument("index")
    p.set_defaults(func=run, fast_exit=True)  # read-only: no interpreter teardown (cli._exit_now)


def run(args) -> int:
    from geosearch.index import TileIndex

    print(json.dumps(TileIndex.open(args.index).info(), indent=2, default=str))
    return 0
