"""Crafted indexes: an index inside a data root that names rasters outside it, remote or virtual
paths, VRTs with escaping sources, network descriptions, symlinks, loops, FIFOs and devices. Over
MCP, every tool and resource that reads imagery must refuse them; no file outside the roots is
read (checked by access times where the filesystem keeps them) and no HTTP request is sent (a
canary server on 127.0.0.1 counts them)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import pytest

from tests.fixtures.rasters import write_raster


class Canary:
    def __init__(self):
        self.hits: list[str] = []
        canary = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _hit(self):
                canary.hits.append(f"{self.command} {self.path}")
                self.send_response(404)
                self.end_headers()

            do_GET = do_HEAD = do_POST = _hit

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def _vrt(source: str, relative: bool = False, extra: str = "") -> str:
    return f"""<VRTDataset rasterXSize="128" rasterYSize="128">
  <SRS>EPSG:32633</SRS><GeoTransform>500000, 1, 0, 4500000, 0, -1</GeoTransform>
  <VRTRasterBand dataType="Byte" band="1"{extra}>
    <SimpleSource><SourceFilename relativeToVRT="{int(relative)}">{source}</SourceFilename>
      <SourceBand>1</SourceBand></SimpleSource>
  </VRTRasterBand>
</VRTDataset>"""


@pytest.fixture(scope="module")
def crafted(tmp_path_factory, tiny_settings):
    from geosearch import db
    from geosearch.index import build_index

    base = tmp_path_factory.mktemp("sandbox")
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    write_raster(root / "m.tif", width=128, height=128)
    write_raster(outside / "outside.tif", width=128, height=128)
    (outside / "sub").mkdir()
    write_raster(outside / "sub" / "o.tif", width=128, height=128)
    build_index([root / "m.tif"], root / "legit.duckdb", settings=tiny_settings, progress=False)
    canary = Canary()
    c = canary.url
    o = str(outside / "outside.tif")

    # files inside the root that point elsewhere
    (root / "abs.vrt").write_text(_vrt(o))
    (root / "rel.vrt").write_text(_vrt("../outside/outside.tif", relative=True))
    (root / "curl.vrt").write_text(_vrt(f"/vsicurl/{c}/x.tif"))
    (root / "inner.vrt").write_text(_vrt(o))
    (root / "nested.vrt").write_text(_vrt("inner.vrt", relative=True))
    (root / "python.vrt").write_text(
        """<VRTDataset rasterXSize="128" rasterYSize="128">
  <VRTRasterBand dataType="Byte" band="1" subClass="VRTDerivedRasterBand">
    <PixelFunctionType>f</PixelFunctionType><PixelFunctionLanguage>Python</PixelFunctionLanguage>
    <PixelFunctionCode>import os</PixelFunctionCode>
    <SimpleSource><SourceFilename relativeToVRT="1">m.tif</SourceFilename></SimpleSource>
  </VRTRasterBand>
</VRTDataset>"""
    )
    for i in range(6):  # a chain deeper than the limit, every link inside the root
        nxt = "m.tif" if i == 5 else f"deep{i + 1}.vrt"
        (root / f"deep{i}.vrt").write_text(_vrt(nxt, relative=True))
    (root / "wms.tif").write_text(
        f"<GDAL_WMS><Service name='TMS'><ServerUrl>{c}/${{z}}/${{x}}/${{y}}.png</ServerUrl></Service></GDAL_WMS>"
    )
    (root / "stac.json").write_text(json.dumps({"type": "Feature", "assets": {"a": {"href": f"{c}/a.tif"}}}))
    os.symlink(o, root / "link.tif")
    os.symlink(outside / "sub", root / "linkdir")
    os.symlink(root / "loop_a.tif", root / "loop_b.tif")
    os.symlink(root / "loop_b.tif", root / "loop_a.tif")
    os.mkfifo(root / "fifo.tif")
    shutil.copy(root / "m.tif", root / "withovr.tif")
    os.symlink(o, root / "withovr.tif.ovr")
    os.link(outside / "sub" / "o.tif", root / "hardlink.tif")  # a hard link is the root's own file
    (root / "folder.tif").mkdir()

    cases = {
        "abs_outside": [o],
        "rel_escape": ["../outside/outside.tif"],
        "rel_etc": ["../../../../../../etc/hosts"],
        "etc_hosts": ["/etc/hosts"],
        "vsicurl": [f"/vsicurl/{c}/x.tif"],
        "vsicurl_streaming": [f"/vsicurl_streaming/{c}/x.tif"],
        "http": [f"{c}/x.tif"],
        "https": [c.replace("http", "https") + "/x.tif"],
        "vsizip": [f"/vsizip/{outside}/a.zip/x.tif"],
        "vsigzip": [f"/vsigzip/{o}.gz"],
        "vsis3": ["/vsis3/bucket/x.tif"],
        "vsigs": ["/vsigs/bucket/x.tif"],
        "vsimem": ["/vsimem/x.tif"],
        "vsistdin": ["/vsistdin/"],
        "s3_url": ["s3://bucket/x.tif"],
        "file_url": [f"file://{o}"],
        "vrt_url": [f"vrt://{o}"],
        "gtiff_dir": [f"GTIFF_DIR:1:{o}"],
        "netcdf": [f"NETCDF:{outside}/x.nc:var"],
        "wms_conn": [f"WMS:{c}/wms"],
        "vrt_abs_source": [str(root / "abs.vrt")],
        "vrt_rel_source": [str(root / "rel.vrt")],
        "vrt_curl_source": [str(root / "curl.vrt")],
        "vrt_nested": [str(root / "nested.vrt")],
        "vrt_python": [str(root / "python.vrt")],
        "vrt_too_deep": [str(root / "deep0.vrt")],
        "wms_xml_file": [str(root / "wms.tif")],
        "stac_json_file": [str(root / "stac.json")],
        "symlink_file": [str(root / "link.tif")],
        "symlink_dir": [str(root / "linkdir" / "o.tif")],
        "symlink_loop": [str(root / "loop_a.tif")],
        "fifo": [str(root / "fifo.tif")],
        "device": ["/dev/zero"],
        "ovr_sidecar_link": [str(root / "withovr.tif")],
        "folder": [str(root / "folder.tif")],
        "second_file_outside": [str(root / "m.tif"), o],
    }
    for name, files in cases.items():
        dst = root / f"{name}.duckdb"
        shutil.copy(root / "legit.duckdb", dst)
        con = db.connect(dst)
        meta = json.loads(con.execute("SELECT value FROM meta WHERE key = 'mosaic'").fetchone()[0])
        meta["files"] = files
        con.execute("UPDATE meta SET value = ? WHERE key = 'mosaic'", [json.dumps(meta)])
        con.execute("UPDATE mosaics SET files = ?, description = ?", [json.dumps(files), json.dumps(meta)])
        con.close()
    # the outside files' access times, set before their modification times: a read updates them
    # (relatime), a stat does not
    watched = [outside / "outside.tif", outside / "sub" / "o.tif", Path("/etc/hosts")]
    old = time.time() - 10 * 86400
    for p in watched[:2]:
        os.utime(p, (old, p.stat().st_mtime))
    return {"root": root, "cases": cases, "canary": canary, "watched": watched[:2], "old": old}


def _atime_works(tmp: Path) -> bool:
    p = tmp / "probe"
    p.write_bytes(b"x" * 10)
    old = time.time() - 10 * 86400
    os.utime(p, (old, p.stat().st_mtime))
    p.read_bytes()
    return p.stat().st_atime > old + 86400


def test_crafted_indexes_open_nothing_outside_the_roots(crafted, tmp_path):
    from mcp import Client

    from geosearch_server.mcp_server import create_server

    root, cases = crafted["root"], crafted["cases"]
    assert len(cases) >= 30
    results: dict[str, list[str]] = {}

    async def go():
        async with Client(create_server([str(root)])) as client:
            ok = await client.call_tool(
                "zoom_tile", {"index": "legit.duckdb", "tile": "s128_r0_c0", "query": "x"}
            )
            assert not ok.is_error, ok.content[0].text  # the control case works
            for name in cases:
                idx = f"{name}.duckdb"
                calls = [
                    ("zoom_tile", {"index": idx, "tile": "s128_r0_c0", "query": "x"}),
                    ("segment_region", {"index": idx, "bbox": [15.0, 40.6, 15.001, 40.601], "query": "x"}),
                    (
                        "explain",
                        {
                            "index": idx,
                            "query": "x",
                            "regions": [{"id": "a", "bbox": [15, 40.6, 15.001, 40.601]}],
                        },
                    ),
                    ("answer", {"text": "x", "index": idx, "k": 1}),
                    ("coarse_search", {"index": idx, "query": "x", "k": 1}),
                ]
                msgs = []
                for tool, args in calls:
                    res = await client.call_tool(tool, args)
                    assert res.is_error, f"{name}: {tool} answered from a crafted index"
                    msgs.append(res.content[0].text)
                with pytest.raises(Exception):  # noqa: B017 - any resource error
                    await client.read_resource(f"geosearch://tile-previews/s128_r0_c0/{idx}")
                results[name] = msgs

    anyio.run(go)
    hardlink_msgs = [m for name in results for m in results[name] if "hardlink" in m]
    assert not hardlink_msgs
    for name, msgs in results.items():
        assert all("\n" not in m and "Traceback" not in m for m in msgs), name
        assert all(any(w in m for w in ("refused", "cannot be opened", "not found")) for m in msgs), (
            name,
            msgs,
        )
    assert crafted["canary"].hits == [], crafted["canary"].hits
    if _atime_works(tmp_path):
        for p in crafted["watched"]:
            assert p.stat().st_atime < crafted["old"] + 86400, f"{p} was read"


def test_a_hard_link_inside_the_root_is_the_roots_own_file(crafted, tiny_settings):
    from geosearch.index import build_index
    from geosearch_tools.common import Workspace

    root = crafted["root"]
    build_index([root / "hardlink.tif"], root / "hl.duckdb", settings=tiny_settings, progress=False)
    ws = Workspace([root], settings=tiny_settings)
    with ws.using("hl.duckdb") as h:
        assert h.index.mosaic().read(h.index.bounds[0], 8).rgb.shape == (8, 8, 3)


def test_an_allowed_url_prefix_passes_the_policy_and_nothing_else(tmp_path):
    from geosearch.errors import InputError
    from geosearch.sandbox import FilePolicy

    pol = FilePolicy.for_roots([tmp_path], ["/vsicurl/https://data.example.org/cogs/"])
    assert pol.check_raster("/vsicurl/https://data.example.org/cogs/a.tif").startswith("/vsicurl/")
    for bad in (
        "/vsicurl/https://data.example.org/other/a.tif",
        "/vsicurl/https://data.example.org.evil/cogs/x",
    ):
        with pytest.raises(InputError, match="refused"):
            pol.check_raster(bad)
    assert pol.gdal_env() == {}  # URLs allowed: GDAL's HTTP is left on
    assert FilePolicy.for_roots([tmp_path]).gdal_env()["GDAL_HTTP_PROXY"].startswith("127.0.0.1")


def test_url_prefixes_are_compared_as_urls(tmp_path):
    from geosearch.errors import InputError
    from geosearch.sandbox import FilePolicy

    pol = FilePolicy.for_roots([tmp_path], ["https://data.example.org/cogs/", "/vsis3/bucket/eo/"])
    for ok in (
        "https://data.example.org/cogs/a.tif",
        "/vsicurl/https://data.example.org/cogs/sub/a.tif?sig=1",  # the same URL through GDAL's path
        "HTTPS://DATA.example.org:443/cogs/a.tif",
        "s3://bucket/eo/scene.tif",
    ):
        assert pol.check_raster(ok) == ok
    for bad in (
        "https://data.example.org.evil/cogs/a.tif",  # another host
        "https://data.example.org@evil.org/cogs/a.tif",  # user info: the host is evil.org
        "https://user@data.example.org/cogs/a.tif",
        "https://data.example.org:8443/cogs/a.tif",  # another port
        "http://data.example.org/cogs/a.tif",  # another scheme
        "https://data.example.org/cogs/../private/a.tif",
        "https://data.example.org/cogs/%2E%2E/private/a.tif",
        "https://data.example.org/cogsecret/a.tif",
        "s3://bucket/other/a.tif",
        "/vsicurl?url=https://data.example.org/cogs/a.tif",
    ):
        with pytest.raises(InputError, match="not under the URL prefixes"):
            pol.check_raster(bad)
    with pytest.raises(InputError, match="a remote VRT"):
        pol.check_driver("VRT", "https://data.example.org/cogs/a.vrt")
    pol.check_driver("GTiff", "https://data.example.org/cogs/a.tif")
