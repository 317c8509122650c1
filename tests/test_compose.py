"""Query by example and composed queries: the arithmetic, modifications, and errors."""

from __future__ import annotations

import numpy as np
import pytest

from geosearch.change.compose import (
    Example,
    compose_vector,
    examples_vector,
    parse_modification,
    query_by_example,
)
from geosearch.errors import InputError
from geosearch.index import TileIndex, build_index
from geosearch.pipeline import MethodContext, run_method
from geosearch.search import text_vector
from tests.fixtures.rasters import write_raster


def unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def test_compose_arithmetic():
    rng = np.random.default_rng(1)
    img, t1, t2 = (unit(rng.normal(size=8)) for _ in range(3))
    assert np.allclose(compose_vector(img, [], 0.3), img, atol=1e-6)
    q = compose_vector(img, [(1.0, t1)], 0.7)
    assert np.allclose(q, unit(0.7 * img + 0.3 * t1), atol=1e-6)
    q = compose_vector(3 * img, [(-1.0, 2 * t1), (1.0, t2)], 0.5)  # inputs are normalised first
    assert np.allclose(q, unit(0.5 * img + 0.5 * (t2 - t1)), atol=1e-6)
    assert np.allclose(compose_vector(img, [(1.0, t1)], 1.0), img, atol=1e-6)
    assert np.allclose(compose_vector(img, [(1.0, t1)], 0.0), t1, atol=1e-6)
    with pytest.raises(InputError, match="lambda"):
        compose_vector(img, [(1.0, t1)], 1.5)


def test_examples_vector_geovibes_baseline():
    p1, p2, n1 = unit([1, 0, 0]), unit([0, 1, 0]), unit([0, 0, 1])
    assert np.allclose(examples_vector([p1, p2]), unit([0.5, 0.5, 0]), atol=1e-6)
    assert np.allclose(examples_vector([p1, p2], [n1]), unit([1, 1, -1]), atol=1e-6)
    with pytest.raises(InputError, match="positive"):
        examples_vector([])
    with pytest.raises(InputError, match="zero vector"):
        examples_vector([p1, -p1])


def test_parse_modification():
    m = parse_modification("but closer to the river")
    assert m.relation == ("near", "river") and m.terms == []
    m = parse_modification("without the ships")
    assert m.terms == [(-1.0, "ships")] and m.relation is None
    m = parse_modification("with more trees and no cars, far from the road")
    assert m.terms == [(1.0, "trees"), (-1.0, "cars")] and m.relation == ("far_from", "road")
    assert parse_modification(None).terms == [] and parse_modification("").relation is None


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    from geosearch.models import get_model
    from geosearch.settings import Settings

    tmp = tmp_path_factory.mktemp("compose")
    settings = Settings(model="geosearch-tiny", batch_size=16, scales_m=[64.0], overlap=0.5)
    r = write_raster(tmp / "m.tif", width=160, height=160)
    model = get_model("geosearch-tiny", settings=settings)
    build_index([r], tmp / "i.duckdb", settings=settings, progress=False, model=model)
    idx = TileIndex.open(tmp / "i.duckdb")
    idx.attach_model(model)
    return idx


def test_query_by_example(index):
    tid = str(index.tile_ids[4])
    ans = query_by_example(index, [Example(tile_id=tid)], k=3, exclude_examples=False)
    assert ans.regions[0].region_id == tid and ans.regions[0].details["similarity"] == pytest.approx(
        1, abs=1e-5
    )
    ans = query_by_example(index, [Example(tile_id=tid)], k=3)
    assert tid not in [r.region_id for r in ans.regions]
    # a bbox equal to a tile uses that tile's embedding
    bbox = index.polygons_wgs84()[4].bounds
    same = query_by_example(index, [Example.bbox(bbox)], k=1, exclude_examples=False)
    assert same.regions[0].region_id == tid
    # text modification: the scores follow the composed vector exactly
    mod = query_by_example(
        index, [Example(tile_id=tid)], text="without the bright square", k=2, lam=0.6, exclude_examples=False
    )
    q = unit(0.6 * index.embeddings[4] - 0.4 * text_vector(index, "bright square"))
    best = index.position(mod.regions[0].region_id)
    assert mod.regions[0].details["similarity"] == pytest.approx(float(index.embeddings[best] @ q), abs=1e-5)
    assert mod.details["modification"]["terms"] == [[-1.0, "bright square"]]
    # a relation without a matching layer falls back to a text term
    rel = query_by_example(index, [Example(tile_id=tid)], text="but closer to the river", k=2)
    assert "relation" not in rel.details and len(rel.regions) == 2
    neg = query_by_example(index, [Example(tile_id=tid)], [Example(tile_id=str(index.tile_ids[0]))], k=2)
    assert neg.details["negatives"] == 1


def test_example_errors(index, capsys):
    with pytest.raises(InputError, match="outside the indexed mosaic"):
        query_by_example(index, [Example.bbox([0, 0, 1, 1])], k=3)
    with pytest.raises(InputError, match="no tile"):
        query_by_example(index, [Example(tile_id="s64_r99_c99")], k=3)
    with pytest.raises(InputError, match="needs an example"):
        run_method("by-example", index, "like", 3, MethodContext())
    ans = run_method(
        "by-example", index, "like", 3, MethodContext(options={"example_tile": str(index.tile_ids[2])})
    )
    assert ans.method == "by-example" and len(ans.regions) == 3
    from geosearch_server.cli import main

    assert main(["like", str(index.path), "--bbox", "0", "0", "1", "1"]) == 2
    assert "outside" in capsys.readouterr().err
    assert (
        main(
            [
                "like",
                str(index.path),
                "--tile",
                str(index.tile_ids[2]),
                "--text",
                "without the square",
                "-k",
                "2",
            ]
        )
        == 0
    )
    assert "similarity" in capsys.readouterr().out
