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


def test_bad_eval_options_exit_2_before_any_work(capsys, tmp_path):
    """``--option`` values are checked like the settings: wrong types, out-of-range values, choices
    that do not exist and unknown weights give one line and exit 2 (they used to raise a traceback
    mid-run, or pass silently)."""
    bench = str(tmp_path / "no-bench")  # never opened: the options are refused first
    cases = [
        ("proposal_pool=abc", "valid integer"),
        ("pyramid_top_n=-3", "greater than or equal to 1"),
        ("region_shape=circle", "'bbox' or 'polygon'"),
        ("w_size=abc", "a weight is a finite number"),
        ("w_size=NaN", "a weight is a finite number"),
        ("w_sise=0.1", "unknown weight 'w_sise'"),
    ]
    for option, needle in cases:
        rc, err = _err(capsys, ["eval", bench, "--method", "segment", "--option", option])
        assert rc == 2, (option, err)
        assert needle in err, (option, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1, err


def test_check_options_coerces_and_knows_every_rerank_weight():
    import dataclasses

    from geosearch.errors import InputError
    from geosearch.refine.rerank import RerankWeights
    from geosearch.settings import WEIGHT_OPTIONS, check_options

    assert check_options({"pyramid_top_n": "8", "w_agree": 1, "exclude": ["x"]}) == {
        "pyramid_top_n": 8,
        "w_agree": 1.0,
        "exclude": ["x"],
    }
    scalar = {f.name for f in dataclasses.fields(RerankWeights) if f.name != "extras"}
    assert scalar <= set(WEIGHT_OPTIONS)
    with pytest.raises(InputError, match="proposal_nms_iou"):
        check_options({"proposal_nms_iou": 2.0})
