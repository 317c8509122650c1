"""Remote imagery: a Cloud-Optimized GeoTIFF served over loopback HTTP with range requests, STAC
Items and ItemCollections as inputs, clear one-line errors for bad remote input, and the MCP
server's allow-list of URL prefixes. Nothing leaves 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import anyio
import numpy as np
import pytest

from tests.fixtures.http_range import RangeServer

ORIGIN = (500_000.0, 4_000_000.0)
RES = 0.25


def write_cog(path: Path, size: int, origin=ORIGIN, square=None, colour=(220, 40, 40)) -> Path:
    """A tiled COG (uncompressed, so that byte counts mean something; uint8 RGB, ``RES`` m pixels, overviews down to one block): a green
    field with a checker pattern and a coloured square at pixel cols/rows ``square``."""
    import rasterio
    from rasterio.shutil import copy as rio_copy
    from rasterio.transform import from_origin

    cells = (np.arange(size) // 64) % 2
    pattern = ((cells[:, None] ^ cells[None, :]) * 20).astype(np.uint8)
    img = np.empty((3, size, size), np.uint8)
    for b, v in enumerate((50, 140, 50)):
        img[b] = v + pattern
    if square is not None:
        c0, r0, c1, r1 = square
        for b in range(3):
            img[b, r0:r1, c0:c1] = colour[b]
    tmp = path.with_suffix(".plain.tif")
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633")
    with rasterio.open(tmp, "w", transform=from_origin(*origin, RES, RES), **profile) as dst:
        dst.write(img)
    rio_copy(tmp, path, driver="COG", compress="NONE", blocksize=256, overview_resampling="average")
    tmp.unlink()
    return path


def _settings(**kw):
    from geosearch.settings import Settings

    return Settings(scales_m=[128.0, 256.0], overlap=0.5, batch_size=64, proposals=False, **kw)


def _rows(path: Path) -> dict:
    from geosearch.index import TileIndex

    idx = TileIndex.open(path)
    order = np.argsort(idx.tile_ids.astype(str))
    return {"ids": list(idx.tile_ids[order]), "emb": idx.embeddings[order], "index": idx}


def _item(item_id: str, href: str, **extra_assets) -> dict:
    assets = {
        "image": {
            "href": href,
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"],
        },
        "thumbnail": {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]},
        **extra_assets,
    }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "geometry": None,
        "properties": {"datetime": "2024-05-01T10:00:00Z"},
        "links": [],
        "assets": assets,
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A folder of COGs on a loopback range server: a 4096 px scene with a red square, and two
    1024 px neighbours (west: blue square, east: red square) for an ItemCollection."""
    folder = tmp_path_factory.mktemp("cogs")
    write_cog(folder / "scene.tif", 4096, square=(1800, 1800, 2200, 2200))
    write_cog(folder / "west.tif", 1024, square=(300, 300, 600, 600), colour=(30, 40, 220))
    east = (ORIGIN[0] + 1024 * RES, ORIGIN[1])
    write_cog(folder / "east.tif", 1024, origin=east, square=(400, 400, 700, 700))
    (folder / "notes.txt").write_text("not a raster\n" * 100)
    (folder / "stac").mkdir()
    # a STAC Item served without a .json suffix, whose asset href is relative to it
    (folder / "stac" / "item").write_text(json.dumps(_item("remote-rel", "../scene.tif")))
    with RangeServer(folder) as server:
        yield folder, server


@pytest.fixture(scope="module")
def local_scene(served, tmp_path_factory):
    """The scene indexed from its local file: the reference every remote build must equal."""
    from geosearch.index import build_index
    from geosearch.refine.testing import colour_model

    folder, _ = served
    out = tmp_path_factory.mktemp("local") / "local.duckdb"
    build_index([folder / "scene.tif"], out, model=colour_model(), settings=_settings(), progress=False)
    return _rows(out)


def _assert_same_index(remote: dict, local: dict) -> None:
    assert remote["ids"] == local["ids"]
    np.testing.assert_array_equal(remote["emb"], local["emb"])
    assert remote["index"].meta["mosaic_fingerprint"] == local["index"].meta["mosaic_fingerprint"]


# --- a COG over HTTP ------------------------------------------------------------------------------
def test_cog_over_http_is_indexed_with_range_reads_and_searched_like_the_local_file(
    served, local_scene, tmp_path
):
    import geosearch
    from geosearch.refine.testing import colour_model

    folder, server = served
    url = f"{server.url}/scene.tif"
    size = (folder / "scene.tif").stat().st_size
    server.reset()
    gs = geosearch.index(url, tmp_path / "remote.duckdb", model=colour_model(), settings=_settings())
    # range reads, not a download: every GET asked for a byte range, and far less than the file came
    ranges = server.ranged("scene.tif")
    assert ranges and all(r.startswith("bytes=") for r in ranges)
    assert 0 < server.bytes_sent["scene.tif"] < size / 2, (server.bytes_sent["scene.tif"], size)

    remote = _rows(tmp_path / "remote.duckdb")
    _assert_same_index(remote, local_scene)
    assert remote["index"].meta["mosaic"]["files"] == [url]  # the URL is recorded as given

    # search: the same tiles as the local index, the best one on the red square
    gs.index.attach_model(colour_model())
    local = geosearch.GeoSearch(local_scene["index"].path)
    local.index.attach_model(colour_model())
    hits = gs.search("red", k=5)
    assert [r.region_id for r in hits.regions] == [r.region_id for r in local.search("red", k=5).regions]
    x0, y0 = ORIGIN[0] + 1800 * RES, ORIGIN[1] - 2200 * RES
    best = gs.index.bounds[gs.index.position(hits.regions[0].region_id)]
    assert best[0] < x0 + 100 and best[2] > x0 and best[1] < y0 + 100 and best[3] > y0

    # reads at query time (refinement) go to the URL again, and see the same pixels (full
    # resolution: blocks the build never read, so not in GDAL's cache)
    server.reset()
    window = tuple(best)
    img = gs.index.mosaic().read(window, 512).rgb
    assert server.bytes_sent["scene.tif"] > 0
    np.testing.assert_array_equal(img, local.index.mosaic().read(window, 512).rgb)
    answer = gs.ask("red", k=1, explain=False)
    assert answer.regions and answer.regions[0].polygon_wgs84.area > 0


def test_cli_indexes_a_url_and_reports_bad_remote_input_in_one_line(served, tmp_path, capsys):
    from geosearch_server.cli import main

    folder, server = served
    base = ["--model", "geosearch-tiny", "--scales", "128", "256", "--proposals", "none", "--quiet"]
    out = tmp_path / "cli.duckdb"
    assert main(["index", f"{server.url}/west.tif", "--out", str(out), *base]) == 0
    assert json.loads(capsys.readouterr().out)["tiles_embedded"] > 0
    # a layer derived from the same URL (green field: NDVI with green as 'nir' and red as 'red')
    derive = ["layers", "derive", str(out), f"{server.url}/west.tif", "--kind", "vegetation", "--name", "veg"]
    assert main([*derive, "--nir", "2", "--red", "1"]) == 0, capsys.readouterr().err
    capsys.readouterr()

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"type": "Feature", "id": ')
    not_stac = tmp_path / "list.json"
    not_stac.write_text("[1, 2]")
    no_asset = tmp_path / "no_asset.json"
    no_asset.write_text(
        json.dumps({**_item("x", "a.tif"), "assets": {"meta": {"href": "m.xml", "type": "application/xml"}}})
    )
    catalog = tmp_path / "catalog.json"
    catalog.write_text(
        json.dumps({"type": "Catalog", "id": "c", "stac_version": "1.0.0", "description": "d", "links": []})
    )
    cases = {
        f"{server.url}/missing.tif": "404",
        f"http://127.0.0.1:{closed}/scene.tif": "connect",
        f"{server.url}/notes.txt": "not a readable raster",
        f"{server.url}/missing.json": "HTTP 404",
        str(bad_json): "not valid JSON",
        str(not_stac): "not a STAC Item",
        str(no_asset): "no GeoTIFF or JPEG 2000 asset",
        str(catalog): "STAC Catalog",
    }
    for src, expected in cases.items():
        t0 = time.perf_counter()
        rc = main(["index", src, "--out", str(tmp_path / "bad.duckdb"), *base])
        err = capsys.readouterr().err.strip()
        assert rc == 2, (src, err)
        assert "\n" not in err and "Traceback" not in err and expected in err, (src, err)
        assert time.perf_counter() - t0 < 20, src
    rc = main(
        ["index", f"{server.url}/west.tif", "--asset", "image", "--out", str(tmp_path / "b.duckdb"), *base]
    )
    assert rc == 2 and "--asset" in capsys.readouterr().err


def test_a_stalled_server_times_out_instead_of_hanging(tmp_path, monkeypatch):
    """A server that accepts the connection and never answers: GDAL_HTTP_TIMEOUT (here the user's
    own, 1 s, which GeoSearch keeps) ends the open with a clear error."""
    from geosearch.errors import InputError
    from geosearch.mosaic import open_mosaic

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    held: list = []
    stop = threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    try:
        t0 = time.perf_counter()
        with pytest.raises(InputError, match="stalled.tif"):
            open_mosaic(f"http://127.0.0.1:{sock.getsockname()[1]}/stalled.tif")
        assert time.perf_counter() - t0 < 10
    finally:
        stop.set()
        for c in held:
            c.close()
        sock.close()


# --- STAC -------------------------------------------------------------------------------------------
def test_stac_items_with_a_url_href_and_with_relative_hrefs_index_like_the_file(
    served, local_scene, tmp_path
):
    from geosearch.index import build_index
    from geosearch.refine.testing import colour_model

    folder, server = served
    url = f"{server.url}/scene.tif"
    # a local Item whose asset is at the loopback URL
    item = tmp_path / "item.json"
    item.write_text(json.dumps(_item("abs", url)))
    build_index([item], tmp_path / "abs.duckdb", model=colour_model(), settings=_settings(), progress=False)
    abs_rows = _rows(tmp_path / "abs.duckdb")
    _assert_same_index(abs_rows, local_scene)
    assert abs_rows["index"].meta["mosaic"]["files"] == [url]  # the asset, not the Item, is recorded

    # an Item fetched over HTTP (no .json suffix) whose asset href is relative to the Item's URL
    build_index(
        [f"{server.url}/stac/item"],
        tmp_path / "rel.duckdb",
        model=colour_model(),
        settings=_settings(),
        progress=False,
    )
    rel_rows = _rows(tmp_path / "rel.duckdb")
    _assert_same_index(rel_rows, local_scene)
    assert rel_rows["index"].meta["mosaic"]["files"] == [url]

    # a local Item with a relative href to a local file
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "scene.tif").symlink_to(folder / "scene.tif")
    local_item = tmp_path / "local-item.json"
    local_item.write_text(json.dumps(_item("local", "./imgs/scene.tif")))
    build_index(
        [local_item], tmp_path / "loc.duckdb", model=colour_model(), settings=_settings(), progress=False
    )
    loc_rows = _rows(tmp_path / "loc.duckdb")
    _assert_same_index(loc_rows, local_scene)
    assert loc_rows["index"].meta["mosaic"]["files"] == [str(tmp_path / "imgs" / "scene.tif")]


def test_an_item_collection_of_two_items_is_one_mosaic(served, tmp_path):
    import geosearch
    from geosearch.refine.testing import colour_model

    folder, server = served
    coll = {
        "type": "FeatureCollection",
        "features": [_item("west", f"{server.url}/west.tif"), _item("east", f"{server.url}/east.tif")],
    }
    path = tmp_path / "items.json"
    path.write_text(json.dumps(coll))
    settings = _settings().model_copy(update={"proposals": True})
    gs = geosearch.index(path, tmp_path / "coll.duckdb", model=colour_model(), settings=settings)
    desc = gs.index.meta["mosaic"]
    assert desc["files"] == [f"{server.url}/west.tif", f"{server.url}/east.tif"]
    assert desc["bounds"] == pytest.approx([ORIGIN[0], ORIGIN[1] - 256, ORIGIN[0] + 512, ORIGIN[1]])
    assert gs.index.proposals() is not None  # proposals were found and embedded over HTTP too
    gs.index.attach_model(colour_model())
    blue = gs.search("blue", k=1).regions[0]
    red = gs.search("red", k=1).regions[0]
    assert blue.polygon_wgs84.centroid.x < red.polygon_wgs84.centroid.x  # west's blue, east's red


def test_the_asset_is_chosen_by_name_then_role_then_media_type(tmp_path):
    from geosearch.errors import InputError
    from geosearch.stac import asset_hrefs

    def hrefs(item: dict, asset=None):
        p = tmp_path / "i.json"
        p.write_text(json.dumps(item))
        return [Path(h).name for h in asset_hrefs(p, asset)]

    tif = "image/tiff; application=geotiff"
    bands = {b: {"href": f"{b}.tif", "type": tif, "roles": ["data", "reflectance"]} for b in ("B02", "B03")}
    s2 = _item("s2", "img.tif", **bands, visual={"href": "tci.tif", "type": tif, "roles": ["visual"]})
    s2["assets"].pop("image")
    assert hrefs(s2) == ["tci.tif"]  # several 'data' bands: the one 'visual' asset
    assert hrefs(s2, "B03") == ["B03.tif"]
    with pytest.raises(InputError, match="no asset 'B08'.*B02, B03"):
        hrefs(s2, "B08")
    s2["assets"].pop("visual")
    with pytest.raises(InputError, match=r"several image assets \(B02, B03\).*--asset"):
        hrefs(s2)
    naip = _item("naip", "naip.tif")  # one 'data' image beside a thumbnail
    assert hrefs(naip) == ["naip.tif"]
    plain = _item("plain", "x.tif")
    plain["assets"] = {"a": {"href": "scene.jp2"}, "b": {"href": "notes.xml"}}
    assert hrefs(plain) == ["scene.jp2"]  # no roles, no media types: the one raster by its suffix


# --- the MCP server's allow-list -------------------------------------------------------------------
def test_the_mcp_server_opens_remote_rasters_only_under_the_allowed_prefixes(served, tmp_path, tiny_settings):
    import shutil

    from mcp import Client

    from geosearch.index import build_index
    from geosearch_server.mcp_server import create_server

    folder, server = served
    root = tmp_path / "root"
    root.mkdir()
    settings = tiny_settings.model_copy(update={"proposals": False})
    shutil.copy(folder / "east.tif", folder / "served.tif")  # a file no other test read (GDAL's cache)
    build_index([f"{server.url}/served.tif"], root / "east.duckdb", settings=settings, progress=False)
    args = {"index": "east.duckdb", "tile": "s128_r0_c0", "query": "red roofs"}

    def call(prefixes: list[str]):
        server.reset()

        async def go():
            s = settings.model_copy(update={"remote_prefixes": prefixes})
            async with Client(create_server([str(root)], settings=s)) as client:
                return await client.call_tool("zoom_tile", args)

        return anyio.run(go), sum(server.bytes_sent.values())

    ok, sent = call([f"{server.url}/"])
    assert not ok.is_error, ok.content[0].text
    assert sent > 0  # the tile was read from the URL
    for prefixes in ([], [f"{server.url}/other/"], [server.url.replace("127.0.0.1", "localhost") + "/"]):
        res, sent = call(prefixes)
        assert res.is_error, prefixes
        msg = res.content[0].text
        assert "refused" in msg and "served.tif" in msg and "\n" not in msg, msg
        assert sent == 0 and not server.requests, prefixes  # refused before any request


def test_the_allow_list_is_read_from_the_environment(monkeypatch):
    from geosearch.settings import Settings

    monkeypatch.setenv("GEOSEARCH_REMOTE_PREFIXES", "https://a.example.org/cogs/, s3://bucket/eo/")
    assert Settings().remote_prefixes == ["https://a.example.org/cogs/", "s3://bucket/eo/"]
    monkeypatch.delenv("GEOSEARCH_REMOTE_PREFIXES")
    assert Settings().remote_prefixes == []


def test_relocate_moves_an_index_between_a_folder_and_a_url_prefix(served, tmp_path):
    import shutil

    from geosearch.errors import InputError
    from geosearch.index import TileIndex, build_index, relocate_index
    from geosearch.refine.testing import colour_model

    folder, server = served
    name = "moved.tif"  # a file no other test read: GDAL caches what it read of a URL
    (tmp_path / "here").mkdir()
    shutil.copy(folder / "west.tif", tmp_path / "here" / name)
    shutil.copy(folder / "west.tif", folder / name)
    out = tmp_path / "west.duckdb"
    build_index([tmp_path / "here" / name], out, model=colour_model(), settings=_settings(), progress=False)
    window = tuple(TileIndex.open(out).bounds[0])
    before = TileIndex.open(out).mosaic().read(window, 32).rgb

    # the file went to a server: the same bytes, so the same imagery. The bytes are counted from
    # before the relocation: GDAL's per-process URL cache may already hold every block the read
    # below needs from the fingerprint check, and then that read sends nothing (a flaky 0 in CI)
    server.reset()
    assert relocate_index(out, [f"{server.url}/"]) == {"": [f"{server.url}/{name}"]}
    np.testing.assert_array_equal(TileIndex.open(out).mosaic().read(window, 32).rgb, before)
    assert server.bytes_sent[name] > 0
    # other imagery under the same name is refused, and the index is left as it was
    (tmp_path / "other").mkdir()
    shutil.copy(folder / "east.tif", tmp_path / "other" / name)
    with pytest.raises(InputError, match="not the imagery"):
        relocate_index(out, [tmp_path / "other"])
    with pytest.raises(InputError, match="404"):
        relocate_index(out, [f"{server.url}/stac/"])
    assert TileIndex.open(out).meta["mosaic"]["files"] == [f"{server.url}/{name}"]
    # and back to a local folder
    assert relocate_index(out, [tmp_path / "here"]) == {"": [str((tmp_path / "here" / name).resolve())]}


def test_serve_takes_remote_prefixes_on_the_command_line(tmp_path, capsys):
    from geosearch_server.cli import main

    argv = ["serve", "--root", str(tmp_path), "--remote-prefix", "https://data.example.org/cogs/"]
    assert main([*argv, "--print-config", "claude"]) == 0
    args = json.loads(capsys.readouterr().out)["mcpServers"]["geosearch"]["args"]
    assert args[-2:] == ["--remote-prefix", "https://data.example.org/cogs/"]
