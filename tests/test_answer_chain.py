"""The one answering chain: what the MCP ``answer`` tool and ``geosearch ask`` serve is exactly what
``geosearch eval``'s default method scores, and it gets known answers right on a generated raster
(the deterministic ``geosearch-colour`` model, so that a separate server process sees the same model)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import numpy as np
import pytest
from shapely.geometry import box, shape
from test_mcp_server import _env, _stdio_client, _validate

REPO = Path(__file__).resolve().parents[1]
ORIGIN = (500_000.0, 4_000_000.0)
CRS = "EPSG:32633"
SQUARE_A = (64, 64, 192, 192)  # px (c0, r0, c1, r1): a textured red square on dry land
SQUARE_B = (320, 320, 448, 448)  # the same inside a water polygon
WATER = (300, 300, 470, 470)
QUERIES = ["red", "red not within water", "blue"]


def _px_box(c0, r0, c1, r1):
    x0, y1 = ORIGIN
    return box(x0 + c0, y1 - r1, x0 + c1, y1 - r0)


@pytest.fixture(scope="module")
def chain_root(tmp_path_factory):
    import rasterio
    from rasterio.transform import from_origin

    from geosearch.geo import reproject_geom
    from geosearch.index import build_index
    from geosearch.relations import register_layer
    from geosearch.settings import Settings

    root = tmp_path_factory.mktemp("chain")
    rng = np.random.default_rng(1)
    img = np.empty((3, 512, 512), np.int16)
    img[0], img[1], img[2] = 60, 150, 60
    img += rng.integers(-12, 12, img.shape).astype(np.int16)
    for c0, r0, c1, r1 in (SQUARE_A, SQUARE_B):
        tex = rng.integers(-25, 25, (r1 - r0, c1 - c0))  # a textured roof, not a flat colour
        img[0, r0:r1, c0:c1] = 210 + tex
        img[1, r0:r1, c0:c1] = 45 + tex // 3
        img[2, r0:r1, c0:c1] = 40 + tex // 3
    tif = root / "scene.tif"
    with rasterio.open(
        tif,
        "w",
        driver="GTiff",
        width=512,
        height=512,
        count=3,
        dtype="uint8",
        crs=CRS,
        transform=from_origin(*ORIGIN, 1.0, 1.0),
    ) as ds:
        ds.write(np.clip(img, 0, 255).astype(np.uint8))
    settings = Settings(scales_m=[128.0, 256.0], overlap=0.5, batch_size=64)
    build_index([tif], root / "scene.duckdb", model="geosearch-colour", settings=settings, progress=False)
    water = reproject_geom(_px_box(*WATER), CRS, "EPSG:4326")
    (root / "water.geojson").write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {"type": "Feature", "properties": {"id": "lake"}, "geometry": water.__geo_interface__}
                ],
            }
        )
    )
    register_layer(root / "scene.duckdb", root / "water.geojson", "water", role="water")
    return root


def _mosaic(geom84):
    from geosearch.geo import reproject_geom

    return reproject_geom(geom84, "EPSG:4326", CRS)


def _inside_share(g, water) -> float:
    return g.intersection(water).area / g.area


def _iou(a, b) -> float:
    return a.intersection(b).area / a.union(b).area


def _summary(features: list[dict], abstained: bool, near: list[dict]) -> dict:
    def one(f):
        return (
            tuple(round(v, 6) for v in shape(f["geometry"]).bounds),
            round(f["properties"]["score"], 5),
            None if f["properties"]["confidence"] is None else round(f["properties"]["confidence"], 4),
        )

    return {"abstained": abstained, "regions": [one(f) for f in features], "near": [one(f) for f in near]}


def _from_geojson(gj: dict) -> dict:
    p = gj["properties"]
    return _summary(gj["features"], p["abstained"], p["near_misses"])


def _from_file(gj: dict) -> dict:
    """An ``ask --out`` GeoJSON file: the rows of every export format (regions, then near-misses)."""
    feats = gj["features"]
    by_kind = {k: [f for f in feats if f["properties"]["kind"] == k] for k in ("region", "near_miss")}
    assert by_kind["region"] + by_kind["near_miss"] == feats
    return _summary(by_kind["region"], gj["properties"]["abstained"], by_kind["near_miss"])


def _eval_answers(root: Path) -> list[dict]:
    """The queries answered by `geosearch eval`'s own phase-1 loop with its default method."""
    from geosearch.eval.harness import DEFAULT_METHOD, answer_queries
    from geosearch.index import TileIndex

    assert DEFAULT_METHOD == "answer"
    runs = answer_queries(TileIndex.open(root / "scene.duckdb"), QUERIES, DEFAULT_METHOD, 5, None)
    return [_from_geojson(json.loads(json.dumps(r.answer.geojson(), default=str))) for r in runs]


def _mcp_answers(root: Path) -> tuple[list[dict], list[dict]]:
    out: list[dict] = []

    async def main():
        async with _stdio_client(root) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            for q in QUERIES:
                res = await client.call_tool("answer", {"text": q, "index": "scene.duckdb", "k": 5})
                out.append(_validate(tools["answer"], res))

    anyio.run(main)
    return [_from_geojson(o["geojson"]) for o in out], out


def _ask_answers(root: Path, tmp_path: Path) -> list[dict]:
    import subprocess

    out = []
    for i, q in enumerate(QUERIES):
        dest = tmp_path / f"ask{i}.geojson"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "geosearch_server.cli",
                "ask",
                str(root / "scene.duckdb"),
                q,
                "-k",
                "5",
                "--out",
                str(dest),
            ],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        out.append(_from_file(json.loads(dest.read_text())))
    return out


@pytest.mark.slow
def test_eval_mcp_and_ask_serve_the_same_chain(chain_root, tmp_path):
    via_eval = _eval_answers(chain_root)
    via_mcp, raw = _mcp_answers(chain_root)
    via_ask = _ask_answers(chain_root, tmp_path)
    assert via_eval == via_mcp == via_ask
    assert [a["abstained"] for a in via_eval] == [False, False, True]

    # known answers through the MCP answer tool
    red, red_dry, blue = raw
    sq_a, sq_b = _px_box(*SQUARE_A), _px_box(*SQUARE_B)
    top = _mosaic(shape(red["regions"][0]["polygon"]))
    assert max(_iou(top, sq_a), _iou(top, sq_b)) >= 0.8
    water = _px_box(*WATER)
    kept = [_mosaic(shape(r["polygon"])) for r in red_dry["regions"]]
    assert kept and _iou(kept[0], sq_a) >= 0.8
    # "within" means wholly inside the layer: no kept region is, every dropped one is
    assert all(_inside_share(g, water) < 0.99 for g in kept), "a region inside the water layer was kept"
    assert all(_inside_share(_mosaic(shape(r["polygon"])), water) > 0.99 for r in red_dry["near_misses"])
    near = red_dry["near_misses"]
    assert near and _iou(_mosaic(shape(near[0]["polygon"])), sq_b) >= 0.8, (
        "the red square in the water comes back as the first near-miss"
    )
    assert all("relation_failed" in r["flags"] for r in near)
    rel = red_dry["regions"][0]["details"]["relations"][0]
    assert rel["predicate"] == "within" and rel["negated"] and rel["satisfied"] and not rel["holds"]
    assert blue["abstained"] and blue["reason"].startswith("not found") and not blue["regions"]
    assert blue["near_misses"], "an abstention shows its best near-misses"
    assert red["explanation"] and "red" in red["explanation"]


def test_negation_and_unchecked_relations_in_the_chain(chain_root):
    """In-process: negation keeps the square outside the water, "within" keeps the one inside, a
    relation on a missing layer is flagged, never silently applied."""
    from geosearch.index import TileIndex
    from geosearch.pipeline import run_method

    index = TileIndex.open(chain_root / "scene.duckdb")
    outside = run_method("answer", index, "red not within water", 5)
    inside = run_method("answer", index, "red within the lake", 5)
    water = _px_box(*WATER)
    assert outside.regions and all(
        _inside_share(_mosaic(r.polygon_wgs84), water) < 0.99 for r in outside.regions
    )
    assert inside.regions and all(
        _inside_share(_mosaic(r.polygon_wgs84), water) > 0.99 for r in inside.regions
    )
    assert outside.details["relations_checked"] == ["not within:water"]
    # what the abstention threshold decided on, recorded for eval's abstention curve
    thr = outside.details["abstain_threshold"]
    assert outside.details["best_confidence"] == outside.regions[0].confidence >= thr
    blue = run_method("answer", index, "blue", 3)
    assert blue.abstained and blue.near_misses and blue.details["best_confidence"] is not None
    assert blue.details["best_confidence"] < thr
    roads = run_method("answer", index, "red next to a road", 3)
    assert roads.regions and all("relation_not_checkable" in r.flags for r in roads.regions)
    assert roads.details["relations_unchecked"]


def test_chain_settings_are_recorded_and_overridable(chain_root):
    from geosearch.chain import chain_config
    from geosearch.index import TileIndex
    from geosearch.pipeline import MethodContext, run_method
    from geosearch.settings import CHAIN_FIELDS, get_settings

    cfg = chain_config()
    assert set(CHAIN_FIELDS) <= set(cfg) and cfg["pyramid_top_n"] == get_settings().pyramid_top_n
    assert chain_config(options={"seg_windows": 1, "nonsense": 3})["seg_windows"] == 1
    index = TileIndex.open(chain_root / "scene.duckdb")
    a = run_method("answer", index, "red", 3, MethodContext(options={"pyramid_budget": 0}))
    assert a.details["windows_embedded"] == 0


def test_a_word_the_model_never_saw_gets_a_vocabulary_reason(chain_root, tmp_path, monkeypatch):
    """With a labelled reference gallery the chain knows what the model knows: a query like
    nothing the model was trained on is "not found" with a reason that says so, not confident
    regions; a known word is still answered."""
    from geosearch.chain import answer
    from geosearch.index import TileIndex
    from geosearch.pipeline import MethodContext
    from geosearch.refine import gallery, vocabulary
    from geosearch.settings import get_settings

    idx = TileIndex.open(chain_root / "scene.duckdb")
    model = idx.model()
    chips = np.zeros((6, 16, 16, 3), np.uint8)
    chips[:2] = (210, 40, 40)  # red
    chips[2:4] = (50, 160, 60)  # green
    chips[4:] = (40, 60, 200)  # blue
    emb = model.encode_images(chips)
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    gallery.save_gallery(
        models_dir / gallery.gallery_filename(idx.meta["model_name"]),
        emb,
        ["Red", "Red", "Green", "Green", "Blue", "Blue"],
        idx.meta["model_id"],
        "test chips",
    )
    monkeypatch.setenv("GEOSEARCH_MODELS_DIR", str(models_dir))
    get_settings.cache_clear()
    monkeypatch.setattr(gallery, "_LOADED", {})
    monkeypatch.setattr(vocabulary, "_FLOORS", {})
    try:
        ctx = MethodContext(options={"explain": False})
        unknown = answer(idx, "asdkjh qwe", 3, ctx)
        assert unknown.abstained and not unknown.regions
        assert unknown.reason.startswith("not found: the model knows nothing like 'asdkjh qwe'")
        assert unknown.details["vocabulary"]["unknown"]
        assert unknown.details["best_confidence"] is None  # the vocabulary decided, not the threshold
        known = answer(idx, "red", 3, ctx)
        assert not known.details["vocabulary"]["unknown"]
        assert known.details["vocabulary"]["known_floor"] > 0.5
    finally:
        get_settings.cache_clear()
