"""What users take away from an answer: GIS files by extension (GeoJSON, GeoPackage, FlatGeobuf,
GeoParquet, CSV) with provenance, the self-contained HTML map (drawn in headless Chromium and
checked against the imagery), the MCP map resource, and the Python API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import box, shape
from test_answer_chain import CRS, SQUARE_A, SQUARE_B, _mosaic, _px_box, chain_root  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SQUARES = [_px_box(*SQUARE_A), _px_box(*SQUARE_B)]


def _cli(*argv: str) -> int:
    from geosearch_server.cli import main

    return main(list(argv))


def _best_iou(geom84) -> float:
    g = _mosaic(geom84)
    return max(g.intersection(s).area / g.union(s).area for s in SQUARES)


@pytest.mark.parametrize("ext", [".geojson", ".gpkg", ".fgb", ".parquet", ".csv"])
def test_ask_out_writes_the_format_its_extension_names(chain_root, tmp_path, ext, capsys):  # noqa: F811
    import geopandas as gpd
    import pandas as pd
    from shapely import wkt

    out = tmp_path / f"answer{ext}"
    assert _cli("ask", str(chain_root / "scene.duckdb"), "red", "-k", "3", "--out", str(out)) == 0
    assert out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    if ext == ".geojson":
        gj = json.loads(out.read_text())
        assert gj["type"] == "FeatureCollection"
        prov = gj["properties"]["provenance"]
        assert "colour" in prov["model"] and prov["mosaic_files"][0].endswith("scene.tif")
        assert _best_iou(shape(gj["features"][0]["geometry"])) >= 0.8
        return
    if ext == ".csv":
        df = pd.read_csv(out)
        geoms = [wkt.loads(v) for v in df["wkt"]]
        assert {"lon", "lat"} <= set(df.columns)
    else:
        df = gpd.read_parquet(out) if ext == ".parquet" else gpd.read_file(out)
        assert df.crs is not None and df.crs.to_epsg() == 4326
        geoms = list(df.geometry)
    assert len(df) >= 1 and df["rank"].iloc[0] == 1 and df["kind"].iloc[0] == "region"
    for col in ("query", "model", "index", "mosaic_files", "created", "score", "confidence", "scale_m"):
        assert col in df.columns, col
    assert df["query"].iloc[0] == "red"
    assert "colour" in str(df["model"].iloc[0])
    assert str(df["mosaic_files"].iloc[0]).endswith("scene.tif")
    assert any(c.startswith("f_") for c in df.columns)  # the score breakdown, one column a term
    assert _best_iou(geoms[0]) >= 0.8


def test_ask_out_refuses_an_extension_it_cannot_write(chain_root, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "answer.shp"
    assert _cli("ask", str(chain_root / "scene.duckdb"), "red", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "unknown extension '.shp'" in err and ".gpkg" in err and "Traceback" not in err
    assert not out.exists()


def test_an_abstention_still_writes_a_valid_geopackage(chain_root, tmp_path):  # noqa: F811
    import geopandas as gpd

    out = tmp_path / "blue.gpkg"
    assert _cli("ask", str(chain_root / "scene.duckdb"), "blue", "--out", str(out)) == 0
    df = gpd.read_file(out)
    assert df.crs.to_epsg() == 4326
    assert (df["kind"] == "region").sum() == 0  # abstained: near-misses only, marked as such
    assert set(df["kind"]) <= {"near_miss"} and bool(df["abstained"].all()) if len(df) else True


# --- the HTML map ----------------------------------------------------------------------------
def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _screenshot(page: Path, fragment: str, out: Path, size=(1200, 800)) -> np.ndarray:
    from PIL import Image

    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        # wait for the inlined imagery to decode and paint before the shot (without these the shot
        # could catch a page whose basemap was not drawn yet, and every pixel differs)
        "--run-all-compositor-stages-before-draw",
        "--virtual-time-budget=10000",
        f"--window-size={size[0]},{size[1]}",
        f"--screenshot={out}",
        page.resolve().as_uri() + "#" + fragment,
    ]
    env = {**os.environ, "HOME": str(out.parent)}  # chromium writes its profile under HOME
    # on a loaded machine headless chromium has once hung past 120 s (after its virtual time ran
    # out): it gets three tries of 60 s, and a shot written before a hang at exit counts
    for _ in range(3):
        out.unlink(missing_ok=True)
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=60, env=env)
            break
        except subprocess.TimeoutExpired:
            if out.is_file() and out.stat().st_size:
                break
    else:
        pytest.fail("chromium wrote no screenshot in three tries of 60 s")
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def _box_iou(a, b) -> float:
    return box(*a).intersection(box(*b)).area / box(*a).union(box(*b)).area


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_html_map_draws_the_regions_on_the_imagery(chain_root, tmp_path):  # noqa: F811
    from scipy import ndimage

    page = tmp_path / "red.html"
    assert _cli("ask", str(chain_root / "scene.duckdb"), "red", "-k", "3", "--html", str(page)) == 0
    text = page.read_text()
    assert "https://" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert '"id": "answer-1"' in text and "data:image/png;base64," in text  # imagery inlined

    # imagery alone: where the red squares are on the screen
    base = _screenshot(page, "regions=0&near=0&ui=0", tmp_path / "base.png")
    red = (base[..., 0] > 150) & (base[..., 1] < 110) & (base[..., 2] < 110)
    red[:, base.shape[1] - 345 :] = False  # the map only: the side panel's thumbnails are red too
    labels, n = ndimage.label(red)
    assert n >= 2, "both red squares should be visible on the basemap"
    sizes = ndimage.sum(red, labels, range(1, n + 1))
    squares = [_bbox(labels == i + 1) for i in np.argsort(sizes)[::-1][:2]]

    # the best region alone, drawn over the same view: the changed pixels are its outline
    top = _screenshot(page, "only=answer-1&near=0&ui=0", tmp_path / "top.png")
    changed = np.abs(top - base).sum(axis=2) > 60
    assert changed.sum() > 200, "the region's polygon should be drawn"
    drawn = _bbox(changed)
    assert max(_box_iou(drawn, s) for s in squares) >= 0.6, (drawn, squares)

    # the whole page as a user sees it (side panel with evidence thumbnails)
    full = _screenshot(page, "", tmp_path / "full.png")
    assert full[:, -300:].std() > 10  # the side panel has content, not a blank column
    shutil.copy(tmp_path / "full.png", Path(os.environ.get("GEOSEARCH_SCREENSHOT_DIR", tmp_path)) / "map.png")


def test_mcp_answer_map_resource(chain_root):  # noqa: F811
    import anyio
    from mcp import Client

    from geosearch_server.mcp_server import create_server

    async def go():
        async with Client(create_server([str(chain_root)])) as client:
            res = await client.call_tool("answer", {"text": "red", "index": "scene.duckdb", "k": 2})
            assert not res.is_error
            sc = res.structured_content
            assert sc["map_uri"] == sc["uri"] + "/map"
            assert all("/" not in f for f in sc["geojson"]["properties"]["provenance"]["mosaic_files"])
            page = await client.read_resource(sc["map_uri"])
            c = page.contents[0]
            assert c.mime_type == "text/html" and c.text.startswith("<!doctype html>")
            assert sc["regions"][0]["id"] in c.text
            with pytest.raises(Exception, match="(?i)answer"):
                await client.read_resource("geosearch://answers/nope/map")

    anyio.run(go)


# --- the Python API --------------------------------------------------------------------------
def test_python_api(chain_root, tmp_path):  # noqa: F811
    import geosearch

    gs = geosearch.open(chain_root / "scene.duckdb")
    ans = gs.ask("red", k=3)
    assert isinstance(ans, geosearch.Answer) and not ans.abstained and len(ans) >= 1
    gdf = ans.to_geodataframe()
    assert gdf.crs.to_epsg() == 4326 and gdf["rank"].tolist()[: len(ans)] == list(range(1, len(ans) + 1))
    assert _best_iou(gdf.geometry.iloc[0]) >= 0.8
    assert ans.to_geojson()["features"][0]["properties"]["id"] == ans.regions[0].region_id
    page = ans.show(tmp_path / "m.html", open_browser=False)
    assert page.read_text().startswith("<!doctype html>")
    assert ans.save(tmp_path / "a.fgb") == "FlatGeobuf"
    hits = gs.search("red", k=4)
    assert len(hits) == 4 and hits.method == "search" and hits.to_geodataframe().crs.to_epsg() == 4326
    rel = gs.relate(ans, "within", "water", negated=True)
    assert set(rel) >= {r.region_id for r in ans.regions}
    assert all(isinstance(v["satisfied"], bool) for v in rel.values())
    blue = gs.ask("blue")
    assert blue.abstained and len(blue) == 0 and blue.to_geodataframe()["kind"].eq("near_miss").all()


def test_python_api_example_runs(chain_root, tmp_path):  # noqa: F811
    """examples/python_api.py, as a user runs it: a separate process, another folder."""
    env = {**os.environ, "GEOSEARCH_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(
        [sys.executable, str(REPO / "examples" / "python_api.py"), str(chain_root / "scene.duckdb"), "red"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "region(s)" in res.stdout
    for name in ("answer.gpkg", "answer.html"):
        assert (tmp_path / name).stat().st_size > 0


def test_installed_names_are_namespaced(tmp_path):
    """Nothing generic lands in site-packages: the repository's tools/, server/ and prompts/ are
    installed as geosearch_tools, geosearch_server and geosearch_prompts."""
    code = (
        "import importlib.util as u, sys;"
        "print([n for n in ('tools', 'server', 'prompts') if u.find_spec(n)]);"
        "import geosearch_tools.answer, geosearch_server.cli, geosearch_prompts;"
        "print(geosearch_prompts.load_prompt('query_parser')[:1])"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == "[]"


def test_mcp_answer_comes_with_a_picture(chain_root):  # noqa: F811
    import base64
    import io

    import anyio
    from mcp import Client
    from PIL import Image

    from geosearch_server.mcp_server import create_server

    async def go():
        async with Client(create_server([str(chain_root)])) as client:
            return await client.call_tool("answer", {"text": "red", "index": "scene.duckdb", "k": 2})

    res = anyio.run(go)
    images = [c for c in res.content if c.type == "image"]
    assert len(images) == 1 and images[0].mime_type == "image/png"
    img = Image.open(io.BytesIO(base64.b64decode(images[0].data)))
    assert max(img.size) == 512  # a useful size, whatever the window's native pixels
    px = np.asarray(img.convert("RGB")).astype(int)
    yellow = (px[..., 0] > 200) & (px[..., 1] > 200) & (px[..., 2] < 80)
    assert yellow.sum() > 100  # the regions are outlined
    assert res.structured_content["preview"]["uri"].startswith("geosearch://previews/")


def test_ask_out_refuses_a_missing_folder(chain_root, tmp_path, capsys):  # noqa: F811
    missing = tmp_path / "no" / "such" / "a.gpkg"
    assert _cli("ask", str(chain_root / "scene.duckdb"), "red", "--out", str(missing)) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "no").exists()
    assert _cli("ask", str(chain_root / "scene.duckdb"), "red", "--html", str(tmp_path)) == 2
