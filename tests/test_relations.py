"""Relations engine on real vector data: distances, truth tables, formats, priors, CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import duckdb
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from pyproj import Transformer
from shapely.geometry import LineString, Point, box

from geosearch.db import connect
from geosearch.errors import GeoSearchError
from geosearch.relations import (
    check_relation,
    compute_priors,
    list_layers,
    load_priors,
    read_vector,
    register_layer,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROADS = DATA / "spacenet-vegas" / "roads_AOI_2_Vegas_img0.geojson"
BUILDINGS = DATA / "spacenet-atlanta" / "buildings.geojson"

needs_data = pytest.mark.skipif(
    not ROADS.exists() or not BUILDINGS.exists(), reason=f"shared test data not found under {DATA}"
)


def to_wgs(geom_m, crs: str):
    tr = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return shapely.transform(geom_m, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


@pytest.fixture()
def index(tmp_path: Path) -> Path:
    """A minimal index file: just ``meta`` and ``tiles`` as the index builder makes them."""
    path = tmp_path / "index.duckdb"
    con = connect(path)
    con.execute("CREATE TABLE meta(key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute(
        "CREATE TABLE tiles(tile_id VARCHAR PRIMARY KEY, scale_m DOUBLE, x0 DOUBLE, y0 DOUBLE, "
        "x1 DOUBLE, y1 DOUBLE, geom GEOMETRY, geom_wgs84 GEOMETRY)"
    )
    con.close()
    return path


@pytest.fixture()
def con(index: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """One open connection per test (opening one loads the spatial extension: ~1.5 s)."""
    c = connect(index)
    yield c
    c.close()


def _with_layer(con: duckdb.DuckDBPyConnection, path: Path, name: str) -> duckdb.DuckDBPyConnection:
    if not path.exists():
        pytest.skip(f"shared test data not found under {DATA}")
    register_layer(con, path, name)
    return con


@pytest.fixture()
def roads_index(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    return _with_layer(con, ROADS, "roads")


@pytest.fixture()
def buildings_index(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    return _with_layer(con, BUILDINGS, "buildings")


@needs_data
def test_registry_and_crs(roads_index: Path) -> None:
    register_layer(roads_index, BUILDINGS, "buildings")
    layers = {i.name: i for i in list_layers(roads_index)}
    assert layers["roads"].crs == "EPSG:4326" and layers["roads"].metric_crs == "EPSG:32611"
    assert layers["roads"].role == "roads" and layers["roads"].feature_count == 38
    assert layers["buildings"].crs == "EPSG:32616" and layers["buildings"].metric_crs == "EPSG:32616"
    assert layers["buildings"].geometry_type == "Polygon" and not layers["buildings"].derived
    con = roads_index
    idx = {r[0] for r in con.execute("SELECT index_name FROM duckdb_indexes()").fetchall()}
    assert {"layer_roads_geom_rtree", "layer_roads_geom_m_rtree"} <= idx
    # the stored 4326 geometry is lon/lat (x = lon around -115), the metric one is UTM metres
    x, y = con.execute(
        "SELECT ST_X(ST_Centroid(geom)), ST_Y(ST_Centroid(geom)) FROM layer_roads LIMIT 1"
    ).fetchone()
    assert -116 < x < -115 and 36 < y < 37
    xm, ym = con.execute(
        "SELECT ST_X(ST_Centroid(geom_m)), ST_Y(ST_Centroid(geom_m)) FROM layer_buildings LIMIT 1"
    ).fetchone()
    assert 700_000 < xm < 800_000 and 3_700_000 < ym < 3_800_000


@needs_data
def test_near_distances_match_shapely_roads(roads_index: Path) -> None:
    roads = gpd.read_file(ROADS).to_crs("EPSG:32611")
    minx, miny, maxx, maxy = roads.total_bounds
    rng = np.random.default_rng(1)
    pts = [
        Point(x, y)
        for x, y in zip(
            rng.uniform(minx - 150, maxx + 150, 60), rng.uniform(miny - 150, maxy + 150, 60), strict=True
        )
    ]
    regions_m = [p.buffer(rng.uniform(1, 15)) for p in pts]
    regions = [(f"r{i}", to_wgs(g, "EPSG:32611")) for i, g in enumerate(regions_m)]
    res = check_relation(roads_index, regions, "near", "roads", 20)
    union = roads.geometry.values
    for r, g in zip(res, regions_m, strict=True):
        dists = shapely.distance(g, union)
        assert r.unit == "m"
        assert abs(r.value - dists.min()) < 0.5
        assert r.holds == (dists.min() <= 20)
        assert (
            r.nearest_id == str(int(np.argmin(dists)))
            or dists.min() == 0
            or abs(dists[int(r.nearest_id)] - dists.min()) < 0.5
        )
    far = check_relation(roads_index, regions, "far_from", "roads", 20)
    assert [f.holds for f in far] == [not r.holds for r in res]


@needs_data
def test_buildings_distance_and_truth_tables(buildings_index: Path) -> None:
    b = gpd.read_file(BUILDINGS)  # EPSG:32616 already
    assert b.crs.to_epsg() == 32616
    ids = b["osm_id"].astype(str).tolist()
    target = b.geometry.iloc[5]
    inner = target.representative_point().buffer(0.5)
    straddle = box(*target.exterior.coords[0], *target.exterior.coords[0]).buffer(3)
    cx, cy = target.centroid.coords[0]
    far_sq = box(cx - 5, cy - 5, cx + 5, cy + 5)
    while shapely.distance(far_sq, b.geometry.values).min() < 60:
        far_sq = shapely.affinity.translate(far_sq, 40, 0)
    around = target.buffer(2)
    cases_m = {"inner": inner, "straddle": straddle, "far": far_sq, "around": around}
    regions = [(k, to_wgs(g, "EPSG:32616")) for k, g in cases_m.items()]
    within = {r.region_id: r for r in check_relation(buildings_index, regions, "within", "buildings")}
    assert within["inner"].holds and within["inner"].nearest_id == ids[5]
    assert within["inner"].value == pytest.approx(1.0, abs=1e-3)
    assert not within["straddle"].holds and 0.05 < within["straddle"].value < 0.95
    assert not within["far"].holds and within["far"].value == 0
    assert not within["around"].holds
    contains = {r.region_id: r for r in check_relation(buildings_index, regions, "contains", "buildings")}
    assert contains["around"].holds and contains["around"].nearest_id == ids[5]
    assert not contains["inner"].holds and not contains["far"].holds
    near = {r.region_id: r for r in check_relation(buildings_index, regions, "near", "buildings", 50)}
    assert near["inner"].holds and near["inner"].value == 0 and not near["far"].holds
    for key, g in cases_m.items():
        assert abs(near[key].value - shapely.distance(g, b.geometry.values).min()) < 0.5
    inter = {r.region_id: r for r in check_relation(buildings_index, regions, "intersects", "buildings")}
    assert inter["straddle"].holds and inter["inner"].holds and not inter["far"].holds
    # edge_of: distance to the building's outline, not to its interior
    edge = {r.region_id: r for r in check_relation(buildings_index, regions, "edge_of", "buildings", 1.0)}
    assert edge["straddle"].holds and not edge["far"].holds
    assert abs(edge["inner"].value - shapely.distance(inner, target.exterior)) < 0.5
    dens = {
        r.region_id: r
        for r in check_relation(buildings_index, regions, "density", "buildings", 0, threshold=1000)
    }
    assert (
        dens["around"].value == pytest.approx(1 / (around.area / 1e6), rel=0.02)
        or dens["around"].value > 1000
    )
    assert dens["far"].value == 0 and not dens["far"].holds
    below = check_relation(
        buildings_index, regions, "density", "buildings", 0, threshold=1, direction="below"
    )
    assert {r.region_id: r.holds for r in below}["far"]


@needs_data
def test_along_and_between(roads_index: Path) -> None:
    roads = gpd.read_file(ROADS).to_crs("EPSG:32611")
    # longest straight segment of all roads
    best = max(
        (
            (LineString(c[i : i + 2]), fid)
            for fid, g in enumerate(roads.geometry)
            for c in [list(g.coords)]
            for i in range(len(c) - 1)
        ),
        key=lambda t: t[0].length,
    )
    seg = best[0]
    assert seg.length > 60
    mid = seg.interpolate(0.5, normalized=True)
    part = shapely.ops.substring(seg, seg.length / 2 - 25, seg.length / 2 + 25)
    corridor = part.buffer(4, cap_style="flat")  # long thin box on the road: boundary within 5 m
    dx, dy = np.subtract(seg.coords[1], seg.coords[0]) / seg.length
    off = shapely.affinity.translate(corridor, -dy * 60, dx * 60)  # parallel, 60 m to the side
    regions = [("on", to_wgs(corridor, "EPSG:32611")), ("off", to_wgs(off, "EPSG:32611"))]
    res = {r.region_id: r for r in check_relation(roads_index, regions, "along", "roads", 5)}
    assert res["on"].holds and res["on"].value > 0.9
    share_off = (
        shapely.length(shapely.intersection(off.boundary, roads.union_all().buffer(5))) / off.boundary.length
    )
    assert abs(res["off"].value - share_off) < 0.05
    assert res["off"].holds == (share_off >= 0.3)
    area = {
        r.region_id: r for r in check_relation(roads_index, regions, "along", "roads", 5, along_mode="area")
    }
    assert area["on"].value > 0.95
    register_layer(roads_index, ROADS, "streets")
    btw = {r.region_id: r for r in check_relation(roads_index, regions, "between", "roads", 10, "streets")}
    assert btw["on"].holds and btw["on"].details["nearest_id_b"] is not None
    assert mid.distance(corridor) == 0


def test_formats_register(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    lines = [LineString([(-115.17 + i * 1e-3, 36.23), (-115.17 + i * 1e-3, 36.24)]) for i in range(5)]
    gdf = gpd.GeoDataFrame(
        {"id": [f"f{i}" for i in range(5)], "kind": ["road"] * 5}, geometry=lines, crs="EPSG:4326"
    )
    paths = {
        "gj": tmp_path / "a.geojson",
        "gpkg": tmp_path / "a.gpkg",
        "shp": tmp_path / "a.shp",
        "fgb": tmp_path / "a.fgb",
    }
    drivers = {"gj": "GeoJSON", "gpkg": "GPKG", "shp": "ESRI Shapefile", "fgb": "FlatGeobuf"}
    for key, path in paths.items():
        gdf.to_crs("EPSG:32611" if key == "shp" else "EPSG:4326").to_file(path, driver=drivers[key])
    # GeoParquet written by DuckDB (no pyarrow needed)
    con.register("src", pd.DataFrame({"id": gdf["id"], "wkb": list(shapely.to_wkb(gdf.geometry.values))}))
    pq = tmp_path / "a.parquet"
    con.execute(f"COPY (SELECT id, ST_GeomFromWKB(wkb) AS geometry FROM src) TO '{pq}' (FORMAT parquet)")
    paths["pq"] = pq
    regions = [("x", Point(-115.17, 36.235).buffer(1e-5))]
    for key, path in paths.items():
        info = register_layer(con, path, f"l_{key}")
        assert info.feature_count == 5, key
        assert info.metric_crs == "EPSG:32611", key
        r = check_relation(con, regions, "near", f"l_{key}", 5)[0]
        assert r.holds and r.nearest_id == "f0" and r.value < 0.5, key
    assert read_vector(pq).crs is not None


def test_osm_pbf_bad_file_is_clear(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    bad = tmp_path / "bad.osm.pbf"
    bad.write_bytes(b"not a pbf file at all")
    with pytest.raises(GeoSearchError, match="OSM PBF"):
        register_layer(con, bad, "osm")
    txt = tmp_path / "layer.txt"
    txt.write_text("hello")
    with pytest.raises(GeoSearchError, match="unsupported vector format"):
        register_layer(con, txt, "x")
    with pytest.raises(GeoSearchError, match="not found"):
        register_layer(con, tmp_path / "missing.geojson", "x")
    assert list_layers(con) == []


@needs_data
def test_tile_priors(buildings_index: Path) -> None:
    b = gpd.read_file(BUILDINGS)
    minx, miny, maxx, maxy = b.total_bounds
    tiles_m = {}
    step = 100.0
    for i, x in enumerate(np.arange(minx - 200, maxx + 100, step)):
        for j, y in enumerate(np.arange(miny - 200, maxy + 100, step)):
            tiles_m[f"t{i}_{j}"] = box(x, y, x + step, y + step)
    con = buildings_index
    con.execute("INSERT INTO meta VALUES ('crs', ?)", ["EPSG:32616"])
    con.register(
        "t",
        pd.DataFrame(
            {
                "tile_id": list(tiles_m),
                "wkb": list(shapely.to_wkb(list(tiles_m.values()))),
                "wkb84": list(shapely.to_wkb([to_wgs(g, "EPSG:32616") for g in tiles_m.values()])),
            }
        ),
    )
    con.execute(
        "INSERT INTO tiles SELECT tile_id, 100, 0, 0, 0, 0, ST_GeomFromWKB(wkb), ST_GeomFromWKB(wkb84) FROM t"
    )
    n = compute_priors(con)
    assert n == len(tiles_m)
    order = sorted(tiles_m, reverse=True) + ["missing"]
    pri = load_priors(con, order)
    arr = pri["buildings"]
    assert arr["distance_m"].shape == (len(order),) and np.isnan(arr["distance_m"][-1])
    for k, tid in enumerate(order[:-1]):
        g = tiles_m[tid]
        assert abs(arr["distance_m"][k] - shapely.distance(g, b.geometry.values).min()) < 0.5
        lo = int(shapely.intersects(g.buffer(-0.5), b.geometry.values).sum())
        hi = int(shapely.intersects(g.buffer(0.5), b.geometry.values).sum())
        assert lo / (g.area / 1e6) - 1e-6 <= arr["density_per_km2"][k] <= hi / (g.area / 1e6) + 1e-6


@needs_data
def test_cli_layers_and_relate(index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from geosearch_server.cli import main

    assert main(["layers", "add", str(index), str(ROADS), "--name", "roads", "--role", "roads"]) == 0
    assert main(["layers", "list", str(index)]) == 0
    out = capsys.readouterr().out
    assert "roads" in out and "EPSG:32611" in out
    roads = gpd.read_file(ROADS)
    c = roads.geometry.iloc[0].centroid
    regs = gpd.GeoDataFrame(
        {"id": ["on", "off"]}, geometry=[c.buffer(1e-4), Point(c.x + 0.02, c.y).buffer(1e-4)], crs="EPSG:4326"
    )
    rpath = tmp_path / "regions.geojson"
    regs.to_file(rpath)
    assert main(["relate", str(index), str(rpath), "near", "roads", "50", "--format", "geojson"]) == 0
    fc = json.loads(capsys.readouterr().out)
    props = {f["properties"]["id"]: f["properties"] for f in fc["features"]}
    assert props["on"]["holds"] is True and props["on"]["value_m"] == 0
    assert props["off"]["holds"] is False and props["off"]["value_m"] > 1000
    assert props["on"]["nearest_id"] is not None
    assert main(["relate", str(index), str(rpath), "near", "roads", "-5"]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["relate", str(index), str(rpath), "between", "roads", "50"]) == 2
