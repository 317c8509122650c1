"""Injection attempts are refused with GeoSearchError and leave the database unchanged."""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import pytest
from shapely.geometry import LineString, Point

from geosearch.db import connect
from geosearch.errors import GeoSearchError
from geosearch.relations import (
    check_relation,
    derive_layer,
    drop_layer,
    register_layer,
    store_layer,
)
from geosearch.relations.layers import check_column

ATTACKS = [
    "roads; DROP TABLE tiles",
    "roads' OR '1'='1",
    "../etc/passwd",
    "near); --",
    "50; DROP",
    'roads"; DROP TABLE layers; --',
    "Roads",
    "",
    " roads",
    "roads\n",
    "r" * 64,
    None,
    5,
    "roads UNION SELECT * FROM meta",
    "1roads",
    "roads--",
]
BAD_DISTANCES = [math.nan, float("nan"), "NaN", -5, 1e12, "50; DROP", math.inf, "-1", "1e7", "", True, None]


@pytest.fixture()
def index(tmp_path: Path) -> Path:
    path = tmp_path / "index.duckdb"
    con = connect(path)
    con.execute("CREATE TABLE meta(key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO meta VALUES ('bounds_wgs84', '[-115.2, 36.2, -115.1, 36.3]')")
    con.execute(
        "CREATE TABLE tiles(tile_id VARCHAR PRIMARY KEY, scale_m DOUBLE, x0 DOUBLE, y0 DOUBLE, "
        "x1 DOUBLE, y1 DOUBLE, geom GEOMETRY, geom_wgs84 GEOMETRY)"
    )
    con.execute("INSERT INTO tiles VALUES ('t0', 128, 0, 0, 1, 1, ST_Point(0, 0), ST_Point(-115.15, 36.25))")
    gdf = gpd.GeoDataFrame(
        {"id": ["a", "b"], "name": ["x", "y"]},
        geometry=[
            LineString([(-115.17, 36.23), (-115.16, 36.24)]),
            LineString([(-115.15, 36.23), (-115.14, 36.24)]),
        ],
        crs="EPSG:4326",
    )
    store_layer(con, "roads", gdf, source="test")
    con.close()
    return path


def snapshot(path: Path) -> dict:
    con = connect(path, read_only=True)
    tables = sorted(
        r[0]
        for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
        ).fetchall()
    )
    counts = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    layers = con.execute("SELECT name, feature_count, metric_crs FROM layers ORDER BY name").fetchall()
    meta = con.execute("SELECT * FROM meta ORDER BY key").fetchall()
    con.close()
    return {"tables": tables, "counts": counts, "layers": layers, "meta": meta}


REGIONS = [("r1", Point(-115.165, 36.235).buffer(1e-4))]


def test_attacks_refused_and_db_unchanged(index: Path, tmp_path: Path) -> None:
    before = snapshot(index)
    assert before["tables"] == ["layer_roads", "layers", "meta", "tiles"]
    src = tmp_path / "l.geojson"
    gpd.GeoDataFrame(geometry=[Point(-115.1, 36.2)], crs="EPSG:4326").to_file(src)
    con = connect(index)
    for attack in ATTACKS:
        with pytest.raises(GeoSearchError):
            check_relation(con, REGIONS, "near", attack, 50)
        with pytest.raises(GeoSearchError):
            check_relation(con, REGIONS, "between", "roads", 50, attack)
        with pytest.raises(GeoSearchError):
            check_relation(con, REGIONS, attack, "roads", 50)
        with pytest.raises(GeoSearchError):
            register_layer(con, src, attack)
        with pytest.raises(GeoSearchError):
            drop_layer(con, attack)
        with pytest.raises(GeoSearchError):
            derive_layer(con, src, "water", attack)
        with pytest.raises(GeoSearchError):
            check_column(con, "roads", attack)
    for bad in BAD_DISTANCES:
        with pytest.raises(GeoSearchError):
            check_relation(con, REGIONS, "near", "roads", bad)
    with pytest.raises(GeoSearchError):
        check_relation(con, REGIONS, "along", "roads", 10, threshold=math.nan)
    with pytest.raises(GeoSearchError):
        check_relation(con, REGIONS, "density", "roads", 10, threshold="1; DROP TABLE tiles")
    for unknown in ("missing_layer", "layer_roads", "layers", "tiles", "meta"):
        with pytest.raises(GeoSearchError, match="unknown layer"):
            check_relation(con, REGIONS, "near", unknown, 10)
    with pytest.raises(GeoSearchError):
        check_relation(con, [("r", Point(500000, 4000000))], "near", "roads", 10)  # not lon/lat
    with pytest.raises(GeoSearchError):
        check_relation(con, REGIONS, "near", "roads")  # distance missing
    with pytest.raises(GeoSearchError):
        check_relation(con, REGIONS, "within", "roads")  # not a polygon layer
    # valid calls still work after the attempts, and accept numeric strings
    res = check_relation(con, REGIONS, "near", "roads", "50")
    assert res[0].holds
    assert check_column(con, "roads", "name") == "name"
    con.close()
    assert snapshot(index) == before


def test_cli_attacks_exit_2(index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from geosearch_server.cli import main

    regions = tmp_path / "r.geojson"
    gpd.GeoDataFrame({"id": ["r1"]}, geometry=[REGIONS[0][1]], crs="EPSG:4326").to_file(regions)
    before = snapshot(index)
    for attack in ATTACKS[:3]:
        assert main(["relate", str(index), str(regions), "near", attack, "50"]) == 2
        assert main(["relate", str(index), str(regions), attack, "roads", "50"]) == 2
    for bad in ("NaN", "1e12", "50; DROP"):
        assert main(["relate", str(index), str(regions), "near", "roads", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all(line.startswith("geosearch: error:") for line in err)
    assert snapshot(index) == before
