"""The `relations` retrieval method: candidates re-ranked by relations checked on real vector math."""

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
    (layers / "roads.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": mapping(road), "properties": {"id": "r1"}}]}))
    return index, layers


def test_regions_holding_the_relation_rank_first(setup):
    index, layers = setup
    ctx = MethodContext(layers_dir=str(layers), options={"base_method": "coarse"})
    ans = run_method("relations", index, "a bright square within 20 m of a road", 20, ctx)
    assert ans.method == "relations" and ans.details["relations_checked"] == ["near:roads"]
    held = ["relation_failed" not in r.flags for r in ans.regions]
    assert any(held) and not all(held)
    first_fail = held.index(False)
    assert all(held[:first_fail]) and not any(held[first_fail:])  # holding regions first
    x0 = index.mosaic_bounds[0]
    for r, ok in zip(ans.regions, held):
        tile_x0 = index.bounds[index.position(r.region_id)][0]
        assert ok == (tile_x0 - (x0 + 5) <= 20)  # the tile starts within 20 m of the road


def test_missing_layer_is_flagged_not_guessed(setup):
    index, layers = setup
    ctx = MethodContext(layers_dir=str(layers), options={"base_method": "coarse"})
    ans = run_method("relations", index, "a bright square near a river", 5, ctx)
    assert ans.details["relations_unchecked"] and not ans.details["relations_checked"]
    assert all("relation_not_checkable" in r.flags for r in ans.regions)
