"""The CLI: main paths work, bad input gives one line on stderr and exit code 2."""

import json

import pytest
from shapely.geometry import box, mapping

from geosearch_server.cli import main
from tests.fixtures.rasters import write_raster


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    raster = write_raster(tmp / "m.tif", width=256, height=256)
    out = tmp / "i.duckdb"
    rc = main(
        [
            "index",
            str(raster),
            "--out",
            str(out),
            "--model",
            "geosearch-tiny",
            "--scales",
            "64",
            "128",
            "--quiet",
        ]
    )
    assert rc == 0
    return tmp, raster, out


def test_search_table_and_geojson(built, capsys):
    _, _, out = built
    capsys.readouterr()
    assert main(["search", str(out), "bright square", "-k", "3"]) == 0
    table = capsys.readouterr().out
    assert "rank" in table and ("s64_" in table or "s128_" in table)
    assert main(["search", str(out), "bright square", "-k", "3", "--format", "geojson"]) == 0
    fc = json.loads(capsys.readouterr().out)
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 3
    assert fc["features"][0]["geometry"]["type"] == "Polygon"


def test_info(built, capsys):
    _, _, out = built
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tiles"] == 58 and info["status"] == "complete"


def _err(capsys, argv):
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    return rc, err


def test_bad_input_exit_2(built, capsys, tmp_path):
    _, raster, out = built
    notraster = tmp_path / "x.tif"
    notraster.write_text("nope")
    write_raster(tmp_path / "mix" / "a.tif", crs="EPSG:32633")
    write_raster(tmp_path / "mix" / "b.tif", crs="EPSG:32634")
    far = tmp_path / "far.geojson"
    far.write_text(
        json.dumps({"type": "Feature", "geometry": mapping(box(-10, -10, -9, -9)), "properties": {}})
    )
    cases = [
        (["index", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "a.duckdb")], "not found"),
        (["index", str(notraster), "--out", str(tmp_path / "b.duckdb")], "not a readable raster"),
        (["index", str(tmp_path / "mix"), "--out", str(tmp_path / "c.duckdb")], "mixed CRS"),
        (["search", str(out), "   "], "empty query"),
        (["search", str(out), "roads", "--area", str(far)], "does not overlap"),
        (["search", str(out), "roads", "--bbox", "1", "1", "0", "0"], "bbox"),
        (["search", str(tmp_path / "none.duckdb"), "roads"], "index not found"),
        (["index", str(raster), "--out", str(out), "--model", "no-such-model"], "unknown model"),
        (["search", str(out)], "error"),
        (
            [
                "models",
                "gallery",
                str(tmp_path / "m.jsonl"),
                "--model",
                "geosearch-tiny",
                "--split",
                "test",
                "--out",
                str(tmp_path / "g.npz"),
            ],
            "train split only",
        ),
    ]
    for argv, needle in cases:
        rc, err = _err(capsys, argv)
        assert rc == 2, (argv, err)
        assert needle in err, (argv, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
