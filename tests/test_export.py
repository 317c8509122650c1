"""The GeoJSON file holds the same rows as every other format: regions, then near-misses."""

from __future__ import annotations

import json

from test_answer_chain import chain_root  # noqa: F401


def _cli(*argv: str) -> int:
    from geosearch_server.cli import main

    return main(list(argv))


def test_geojson_rows_match_the_other_formats(chain_root, tmp_path):  # noqa: F811
    import geopandas as gpd

    gj, gpkg = tmp_path / "a.geojson", tmp_path / "a.gpkg"
    for out in (gj, gpkg):
        assert _cli("ask", str(chain_root / "scene.duckdb"), "red", "-k", "3", "--out", str(out)) == 0
    doc = json.loads(gj.read_text())
    rows = [f["properties"] for f in doc["features"]]
    table = gpd.read_file(gpkg)
    assert [r["rank"] for r in rows] == list(table["rank"]) == list(range(1, len(rows) + 1))
    assert [r["kind"] for r in rows] == list(table["kind"])
    assert [r["id"] for r in rows] == list(table["id"])
    assert rows[0]["kind"] == "region" and rows[0]["query"] == "red" and "colour" in rows[0]["model"]
    assert any(k.startswith("f_") for k in rows[0])
    assert "provenance" in doc["properties"] and "near_misses" not in doc["properties"]


def test_an_abstention_geojson_lists_its_near_misses_as_features(chain_root, tmp_path):  # noqa: F811
    import geosearch

    out = tmp_path / "blue.geojson"
    assert _cli("ask", str(chain_root / "scene.duckdb"), "blue", "--out", str(out)) == 0
    doc = json.loads(out.read_text())
    assert doc["properties"]["abstained"] is True and doc["properties"]["reason"]
    kinds = [f["properties"]["kind"] for f in doc["features"]]
    assert kinds and set(kinds) == {"near_miss"}  # a GIS shows what came close, marked as such
    assert all(f["properties"]["abstained"] for f in doc["features"])
    ans = geosearch.open(chain_root / "scene.duckdb").ask("blue")
    assert len(kinds) == len(ans.near_misses)
    assert ans.to_geojson()["properties"]["near_misses"]  # the served answer keeps its own shape


def test_the_map_page_lists_scores_not_proposal_ids(chain_root, tmp_path):  # noqa: F811
    import geosearch

    ans = geosearch.open(chain_root / "scene.duckdb").ask("red", k=3)
    assert "proposal" in ans.regions[0].details["features"]  # the region came from a stored proposal
    page = ans.show(tmp_path / "m.html", open_browser=False).read_text()
    assert '"s_region"' in page and '"proposal"' not in page


def test_lower_regions_under_the_threshold_say_so(chain_root):  # noqa: F811
    """The best region passed, so the answer stands; a lower region whose own confidence is under
    the threshold is flagged ``below_threshold`` (a user read 0.57 beside a 0.77 line unflagged)."""
    from geosearch.chain import FLAG_BELOW, answer
    from geosearch.index import TileIndex
    from geosearch.pipeline import MethodContext

    index = TileIndex.open(chain_root / "scene.duckdb")
    free = answer(index, "red", 5, MethodContext(options={"abstain_threshold": 0.0}))
    assert not free.abstained and len(free.regions) >= 2
    assert not any(FLAG_BELOW in r.flags for r in free.regions)
    confs = [r.confidence for r in free.regions]
    thr = (confs[0] + min(confs[1:])) / 2  # between the best and the lowest: some lower regions fall under
    ans = answer(index, "red", 5, MethodContext(options={"abstain_threshold": thr}))
    assert not ans.abstained and FLAG_BELOW not in ans.regions[0].flags
    flagged = [FLAG_BELOW in r.flags for r in ans.regions[1:]]
    assert flagged == [r.confidence < thr for r in ans.regions[1:]] and any(flagged)


def test_a_not_found_page_gives_its_reason_once(chain_root, tmp_path):  # noqa: F811
    import geosearch

    ans = geosearch.open(chain_root / "scene.duckdb").ask("blue")
    assert ans.abstained and ans.reason
    page = ans.show(tmp_path / "nf.html", open_browser=False).read_text()
    why = ans.reason.removeprefix("not found: ")
    assert page.count(why[:60]) == 1  # in the status box, not again in the explanation below it
