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


def test_bad_area_crs_and_context_exit_2(built, capsys):
    """An unknown ``--bbox-crs`` is one line (was a pyproj traceback), ``--bbox-crs`` without
    ``--bbox`` is refused (was ignored), and a non-finite or absurd ``--context`` is refused (was
    NaN scores)."""
    _, _, out = built
    bbox = ["--bbox", "1", "2", "3", "4"]
    cases = [
        (["search", str(out), "a lake", "--bbox-crs", "EPSG:99999", *bbox], "unknown CRS 'EPSG:99999'"),
        (["search", str(out), "a lake", "--bbox-crs", "banana", *bbox], "unknown CRS 'banana'"),
        (["like", str(out), *bbox, "--bbox-crs", "EPSG:99999"], "unknown CRS 'EPSG:99999'"),
        (["search", str(out), "a lake", "--bbox-crs", "EPSG:4326"], "--bbox-crs needs --bbox"),
        (["like", str(out), "--tile", "x", "--bbox-crs", "EPSG:4326"], "--bbox-crs needs --bbox"),
        (["search", str(out), "a lake", "--context", "inf"], "--context must be a number from 0 to 100"),
        (["search", str(out), "a lake", "--context", "1e308"], "--context must be a number from 0 to 100"),
        (["search", str(out), "a lake", "--context", "nan"], "--context must be a number from 0 to 100"),
        (["search", str(out), "a lake", "--context", "-1"], "--context must be a number from 0 to 100"),
    ]
    for argv, needle in cases:
        rc, err = _err(capsys, argv)
        assert rc == 2, (argv, err)
        assert needle in err, (argv, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1, err


def test_ask_output_not_writable_exit_2_before_any_work(built, capsys, tmp_path, monkeypatch):
    """``ask --out`` / ``--html`` into a folder that cannot be written is refused up front (it used
    to run the whole answer, then crash with a PermissionError traceback)."""
    import tempfile

    _, _, out = built
    calls = []

    def refuse(*args, **kwargs):
        calls.append(kwargs.get("dir"))
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    import geosearch_tools.answer as t_answer

    monkeypatch.setattr(t_answer, "run", lambda *a, **k: pytest.fail("the answer ran before the check"))
    for flag, name in (("--out", "x.geojson"), ("--out", "x.gpkg"), ("--html", "x.html")):
        rc, err = _err(capsys, ["ask", str(out), "a lake", flag, str(tmp_path / name)])
        assert rc == 2, err
        assert f"{flag} " in err and "is not writable (Permission denied)" in err, err
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert calls and all(str(c) == str(tmp_path) for c in calls)
    rc, err = _err(capsys, ["ask", str(out), "a lake", "--out", str(tmp_path / "no" / "x.geojson")])
    assert rc == 2 and "does not exist" in err, err


def test_ask_write_error_is_one_line(built, capsys, tmp_path, monkeypatch):
    """An OSError while the answer is written (disk full, ...) is one line and exit 2 too."""
    import geosearch.fileio

    _, _, out = built

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(geosearch.fileio, "atomic_write_text", full)
    rc, err = _err(capsys, ["ask", str(out), "bright square", "--html", str(tmp_path / "m.html")])
    assert rc == 2, err
    assert (
        err
        == f"geosearch: error: --html {str(tmp_path / 'm.html')!r}: cannot write it: No space left on device"
    )
    assert not (tmp_path / "m.html").exists()


def test_bad_index_options_exit_2_before_anything_is_created(built, capsys, tmp_path, monkeypatch):
    """Device, batch size, threads, tile scales and date are checked before the index file exists."""
    import torch

    _, raster, _ = built  # 1 m pixels: a tile must be at least 8 m
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    dest = tmp_path / "s.duckdb"
    base = ["index", str(raster), "--out", str(dest), "--model", "geosearch-tiny", "--quiet"]
    cases = [
        (["--device", "tpu"], "--device 'tpu': not a device; use auto, cpu, cuda, cuda:N"),
        (
            ["--device", "cuda"],
            "device 'cuda' (--device / GEOSEARCH_DEVICE) requested but CUDA is not available",
        ),
        (["--batch-size", "0"], "argument --batch-size: must be at least 1, not 0"),
        (["--threads", "0"], "argument --threads: must be at least 1, not 0"),
        (["--threads", "-3"], "argument --threads: must be at least 1, not -3"),
        (
            ["--scales", "4", "64"],
            "tile scale 4 m is too small for this raster: a tile must span at least 8 pixels",
        ),
        (["--date", "2020-13-45"], "--date '2020-13-45': not a date; give a real date as YYYY-MM-DD"),
        (["--date", "2020"], "--date '2020': not a date"),
    ]
    for extra, needle in cases:
        rc, err = _err(capsys, base + extra)
        assert rc == 2, (extra, err)
        assert needle in err, (extra, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        assert not dest.exists(), extra


def test_device_and_threads_settings_are_checked(monkeypatch):
    """GEOSEARCH_DEVICE / GEOSEARCH_THREADS that do not validate name the variable (exit 2 at the
    CLI); resolve_device refuses names and devices this machine lacks."""
    import torch

    from geosearch.errors import GeoSearchError, InputError
    from geosearch.models.base import resolve_device
    from geosearch.settings import Settings, get_settings

    assert Settings(device="CUDA:1").device == "cuda:1"
    for name, value, needle in (
        ("GEOSEARCH_DEVICE", "tpu", "GEOSEARCH_DEVICE='tpu'"),
        ("GEOSEARCH_THREADS", "-3", "GEOSEARCH_THREADS='-3'"),
        ("GEOSEARCH_SEARCH_CONTEXT", "inf", "GEOSEARCH_SEARCH_CONTEXT='inf'"),
    ):
        monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        try:
            with pytest.raises(InputError, match=needle):
                get_settings()
        finally:
            monkeypatch.delenv(name)
            get_settings.cache_clear()
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(GeoSearchError, match="not a device"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GeoSearchError, match="CUDA is not available"):
        resolve_device("cuda:0")
    assert resolve_device("auto").type in ("cpu", "mps")


def test_an_empty_ask_is_one_message(built, capsys):
    """``ask ""`` said "invalid input: text: String should have at least 1 character" where
    ``ask "   "`` said "empty query": both now say the latter."""
    _, _, out = built
    for text in ("", "   "):
        rc, err = _err(capsys, ["ask", str(out), text])
        assert rc == 2 and err == "geosearch: error: empty query: give some words to search for", err
