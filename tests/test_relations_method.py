"""Relations in the answering chain: candidates checked on real vector layers (a benchmark layers folder)."""

import json

import pytest
from shapely.geometry import LineString, mapping

from geosearch.geo import WGS84, reproject_geom
from geosearch.index import TileIndex, build_index
from geosearch.pipeline import MethodContext, run_method
from tests.fixtures.rasters import write_raster


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_settings):
    tmp = tmp_path_factory.mktemp("relmethod")
    raster = write_raster(tmp / "m.tif", width=256, height=256)
    build_index([raster], tmp / "i.duckdb", settings=tiny_settings, progress=False)
    index = TileIndex.open(tmp / "i.duckdb")
    x0, y0, _, y1 = index.mosaic_bounds
    road = reproject_geom(LineString([(x0 + 5, y0), (x0 + 5, y1)]), index.crs, WGS84)  # along the west edge
    layers = tmp / "layers"
    layers.mkdir()
    (layers / "roads.geojson").write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [{"type": "Feature", "geometry": mapping(road), "properties": {"id": "r1"}}],
            }
        )
    )
    return index, layers


def _own_box(index, r):
    return reproject_geom(r.polygon_wgs84, WGS84, index.crs).bounds


def test_regions_failing_the_relation_become_near_misses(setup):
    index, layers = setup
    ctx = MethodContext(layers_dir=str(layers), options={"abstain_threshold": 0.0, "max_near_misses": 50})
    ans = run_method("answer", index, "a bright square within 20 m of a road", 20, ctx)
    assert ans.method == "answer" and ans.details["relations_checked"] == ["near:roads"]
    assert ans.regions and ans.near_misses and not ans.abstained
    x0 = index.mosaic_bounds[0]
    for r in ans.regions:  # every kept region starts within 20 m of the road (+ bbox rounding)
        assert "relation_failed" not in r.flags and r.details["relations"][0]["satisfied"]
        assert _own_box(index, r)[0] - (x0 + 5) <= 20 + 1e-6
    for r in ans.near_misses:
        assert "relation_failed" in r.flags and not r.details["relations"][0]["satisfied"]
        assert _own_box(index, r)[0] - (x0 + 5) > 20 - 1e-6


def test_the_explanation_counts_every_candidate_that_failed(setup):
    """Only a few failures are shown as near-misses; the explanation counts all of them (it said
    "3 candidate(s) failed" when 82 had)."""
    index, layers = setup
    ctx = MethodContext(layers_dir=str(layers), options={"abstain_threshold": 0.0, "max_near_misses": 1})
    ans = run_method("answer", index, "a bright square far from a road", 20, ctx)
    n_fail = ans.details["relations_failed"]
    shown = sum("relation_failed" in r.flags for r in ans.near_misses)
    assert n_fail > shown == 1
    assert f"{n_fail} candidate(s) failed them, the best 1 shown as near-misses" in ans.explanation


def test_missing_layer_is_flagged_not_guessed(setup):
    index, layers = setup
    ctx = MethodContext(layers_dir=str(layers), options={"abstain_threshold": 0.0})
    ans = run_method("answer", index, "a bright square near a river", 5, ctx)
    assert ans.details["relations_unchecked"] and not ans.details["relations_checked"]
    assert ans.regions and all("relation_not_checkable" in r.flags for r in ans.regions)
