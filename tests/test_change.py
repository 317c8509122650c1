"""Multi-date indexes (alignment, refusal of misaligned dates), time parsing and change queries."""

from __future__ import annotations

import numpy as np
import pytest

from geosearch import db
from geosearch.change.dated import build_dated_index, group_by_date
from geosearch.change.temporal import parse_time, resolve_dates
from geosearch.errors import GeoSearchError, IndexMismatchError, InputError
from geosearch.index import TileIndex, build_index
from geosearch.pipeline import MethodContext, run_method
from tests.fixtures.rasters import write_raster

D1, D2, D3 = "2012-07-31", "2015-09-26", "2020-08-31"


@pytest.fixture(scope="module")
def kw():  # one scale and one model object keep these builds small
    from geosearch.models import get_model
    from geosearch.settings import Settings

    settings = Settings(model="geosearch-tiny", batch_size=16, scales_m=[64.0], overlap=0.5)
    return {"settings": settings, "model": get_model("geosearch-tiny", settings=settings), "progress": False}


def _scene(seed: int, changed: bool) -> np.ndarray:
    rng = np.random.default_rng(0)
    data = (rng.random((4, 128, 128)) * 60 + 40).astype("uint8")
    data[3] = 150  # NIR: vegetated everywhere
    if changed:  # bright, non-vegetated block in the north-east quadrant
        data[:3, 4:60, 68:124] = 230
        data[3, 4:60, 68:124] = 60
    return data


@pytest.fixture(scope="module")
def dated(tmp_path_factory, kw):
    tmp = tmp_path_factory.mktemp("dated")
    a = write_raster(tmp / "m_2012.tif", width=128, height=128, count=4, data=_scene(0, False))
    # the later date is shifted by 2 m (less than a pixel step of the grid) and slightly larger
    b = write_raster(
        tmp / "m_2020.tif",
        width=130,
        height=129,
        count=4,
        origin=(499998.0, 4500001.0),
        data=np.pad(_scene(0, True), ((0, 0), (1, 0), (2, 0)), mode="edge"),
    )
    out = tmp / "i.duckdb"
    build_index([a], out, **kw, date=D1)
    rep = build_index([b], out, **kw, date=D3)
    return tmp, a, b, out, rep


def test_dates_are_aligned_on_the_first_grid(dated, kw):
    tmp, a, b, out, rep = dated
    idx = TileIndex.open(out)
    assert idx.date_list == [D1, D3]
    assert idx.info()["dates"] == [D1, D3]
    first = {str(t): tuple(bb) for t, bb, d in zip(idx.tile_ids, idx.bounds, idx.dates) if d == D1}
    second = {str(t): tuple(bb) for t, bb, d in zip(idx.tile_ids, idx.bounds, idx.dates) if d == D3}
    assert set(first) == set(second) and len(first) == rep.tiles_total
    assert all(first[t] == second[t] for t in first)  # same cell, same bounds, same id
    assert idx.position(next(iter(first)), D3) != idx.position(next(iter(first)), D1)
    assert idx.mosaic(D3).paths[0].name == "m_2020.tif" and idx.mosaic().paths[0].name == "m_2012.tif"
    # resuming either date embeds nothing
    assert build_index([b], out, **kw, date=D3).tiles_embedded == 0
    assert build_index([a], out, **kw).tiles_embedded == 0
    con = db.connect(out, read_only=True)
    assert con.execute("SELECT count(*) FROM mosaics").fetchone()[0] == 2
    con.close()


def test_refuses_misaligned_or_undated(dated, kw, tmp_path):
    _, a, b, out, _ = dated
    other_crs = write_raster(tmp_path / "c.tif", width=128, height=128, count=4, crs="EPSG:32632")
    with pytest.raises(IndexMismatchError, match="CRS"):
        build_index([other_crs], out, **kw, date="2019-01-01")
    other_res = write_raster(tmp_path / "r.tif", width=64, height=64, count=4, res=(2.0, 2.0))
    with pytest.raises(IndexMismatchError, match="pixel size"):
        build_index([other_res], out, **kw, date="2019-01-01")
    far = write_raster(tmp_path / "f.tif", width=128, height=128, count=4, origin=(600000.0, 4500000.0))
    with pytest.raises(IndexMismatchError, match="half"):
        build_index([far], out, **kw, date="2019-01-01")
    with pytest.raises(IndexMismatchError, match="another mosaic"):  # a new mosaic needs a date
        build_index([other_crs], out, **kw)
    with pytest.raises(IndexMismatchError, match="already holds another mosaic"):
        build_index([far], out, **kw, date=D1)
    with pytest.raises(IndexMismatchError, match="already in index"):
        build_index([b], out, **kw, date="2019-01-01")
    undated = tmp_path / "u.duckdb"
    build_index([a], undated, **kw)
    with pytest.raises(IndexMismatchError, match="without a date"):
        build_index([b], undated, **kw, date=D3)


def test_legacy_single_key_index_gets_a_second_date(tmp_path, kw):
    a = write_raster(tmp_path / "a.tif", width=128, height=128, count=4, data=_scene(0, False))
    b = write_raster(tmp_path / "b.tif", width=128, height=128, count=4, data=_scene(0, True))
    out = tmp_path / "i.duckdb"
    build_index([a], out, **kw, date=D1)
    con = db.connect(out)  # make it look like an index from before multi-date support
    con.execute("CREATE TABLE t2 (tile_id VARCHAR PRIMARY KEY, x INTEGER)")
    con.execute("DELETE FROM mosaics")
    con.close()
    build_index([b], out, **kw, date=D2)
    assert TileIndex.open(out).date_list == [D1, D2]


def test_parse_time():
    q = parse_time("new buildings since 2015")
    assert (q.kind, q.subject, q.date_from, q.date_to) == ("new", "buildings", "2015", None)
    q = parse_time("fields that disappeared between 2010 and 2018")
    assert (q.kind, q.subject, q.date_from, q.date_to) == ("disappeared", "fields", "2010", "2018")
    q = parse_time("what changed in the past year")
    assert (q.kind, q.subject, q.relative_days) == ("changed", "", 365)
    q = parse_time("flooded fields since 2012")
    assert (q.kind, q.subject) == ("new", "flooded fields")
    assert parse_time("a harbour").kind is None
    with pytest.raises(InputError):
        parse_time("  ")


def test_resolve_dates_and_errors(dated):
    idx = TileIndex.open(dated[3])
    assert resolve_dates(idx, parse_time("new roads since 2012")) == (D1, D3)
    assert resolve_dates(idx, None, "2012", "2020-08-31") == (D1, D3)
    assert resolve_dates(idx, parse_time("changes in the past 3 years")) == (D1, D3)
    with pytest.raises(InputError, match="no date matching"):
        resolve_dates(idx, None, "1999")
    with pytest.raises(InputError, match="before"):
        resolve_dates(idx, None, "2020", "2012")
    with pytest.raises(InputError, match="not a date"):
        resolve_dates(idx, None, "last tuesday")


def test_change_method_finds_the_changed_block(dated, kw):
    idx = TileIndex.open(dated[3])
    idx.attach_model(kw["model"])
    ans = run_method("change", idx, "what changed", 3, MethodContext())
    assert ans.details["date_from"] == D1 and ans.details["date_to"] == D3
    top = ans.regions[0]
    assert top.details["dates"] == [D1, D3] and top.details["embedding_change"] > 0
    x0, y0, x1, y1 = idx.bounds[idx.position(top.region_id, D1)]
    assert x1 > 500064 and y1 > 4499936  # overlaps the changed north-east quadrant
    assert {e["date"] for e in top.details["evidence"]} == {D1, D3}
    spec = run_method("change+spectral", idx, "new buildings", 3, MethodContext())
    assert spec.details.get("spectral") == {"ndvi": -1.0}
    gone = run_method("change+spectral", idx, "vegetation that disappeared", 3, MethodContext())
    assert gone.details["kind"] == "disappeared" and gone.details["spectral"] == {"ndvi": -1.0}
    assert idx.bounds[idx.position(gone.regions[0].region_id, D1)][2] > 500064
    bx = idx.bounds[idx.position(spec.regions[0].region_id, D1)]
    assert bx[2] > 500064 and bx[3] > 4499936
    assert idx.bounds[idx.position(spec.regions[0].region_id)].tolist() == bx.tolist()


def test_change_needs_two_dates(tmp_path, kw):
    a = write_raster(tmp_path / "a.tif", width=128, height=128, count=4)
    build_index([a], tmp_path / "i.duckdb", **kw)
    idx = TileIndex.open(tmp_path / "i.duckdb")
    with pytest.raises(GeoSearchError, match="at least two dates"):
        run_method("change", idx, "new buildings", 5, MethodContext())


def test_cli_change(dated, capsys):
    from geosearch_server.cli import main

    out = str(dated[3])
    assert main(["change", out, "new buildings", "--from", "2012", "--to", "2020", "-k", "2"]) == 0
    assert "new 'buildings': 2012-07-31 -> 2020-08-31" in capsys.readouterr().out
    assert main(["change", out, "new buildings", "--from", "1999"]) == 2
    assert "no date matching" in capsys.readouterr().err
    assert main(["change", str(dated[0] / "missing.duckdb"), "new"]) == 2


def test_group_by_date(tmp_path, kw):
    files = [tmp_path / "x_a.tif", tmp_path / "x_b.tif"]
    assert list(group_by_date(files, {"x_b": D3, "x_a": D1})) == [D1, D3]
    with pytest.raises(InputError, match="no date given"):
        group_by_date(files, {"x_a": D1})
    with pytest.raises(InputError, match="YYYY-MM-DD"):
        group_by_date(files, {"x_a": "2012", "x_b": D3})
    a = write_raster(tmp_path / "x_a.tif", width=128, height=128, count=4, data=_scene(0, False))
    b = write_raster(tmp_path / "x_b.tif", width=128, height=128, count=4, data=_scene(0, True))
    rep = build_dated_index([a, b], {"x_a": D1, "x_b": D2}, tmp_path / "d.duckdb", **kw)
    assert rep.tiles_embedded == 2 * rep.tiles_total // 2 and TileIndex.open(
        tmp_path / "d.duckdb"
    ).date_list == [D1, D2]
