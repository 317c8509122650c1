"""`geosearch eval` end to end on a tiny generated benchmark (model geosearch-tiny)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from bench_fixtures import make_bench

from geosearch.errors import InputError
from geosearch.eval.harness import evaluate
from geosearch.pipeline import Answer, MethodContext, hits_to_regions, register_method
from geosearch.search import search
from geosearch_server.cli import main

os.environ.setdefault("GEOSEARCH_THREADS", "2")
SCALES = ["--scales", "128", "256"]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return make_bench(tmp_path_factory.mktemp("bench") / "tiny", extra_props=True, layers=True)


@pytest.fixture(scope="module")
def results(bench: Path, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("results")
    paths = {}
    for method in ("single-scale", "coarse"):
        paths[method] = out / f"{method}.json"
        rc = main(
            [
                "eval",
                str(bench),
                "--method",
                method,
                "--model",
                "geosearch-tiny",
                *SCALES,
                "--out",
                str(paths[method]),
                "--quiet",
            ]
        )
        assert rc == 0
    return paths


def test_eval_end_to_end_both_methods(results, capsys):
    for method, path in results.items():
        r = json.loads(path.read_text())
        assert r["method"] == method and r["bench"]["name"] == "tiny"
        assert r["model"]["name"] == "geosearch-tiny" and r["model"]["model_id"]
        for key in (
            "hit@1",
            "hit@5",
            "hit@10",
            "exact@1",
            "exact@5",
            "exact@10",
            "map",
            "ndcg@10",
            "mrr",
            "abstain_recall",
            "false_abstain_rate",
            "fdr@10",
        ):
            assert key in r["metrics"]
        assert set(r["per_type"]) == {"object", "scene", "absent"}
        assert len(r["per_query"]) == 4
        q = r["per_query"][0]
        assert q["ranks"] and {"rank", "score", "hit", "region_id"} <= set(q["ranks"][0])
        assert all({"truth_id", "grade", "iou"} <= set(x) for x in q["ranks"] if x["hit"])
        assert len(q["top_polygons_wgs84"]) == min(5, q["n_returned"])
        for key in (
            "index_build_seconds",
            "tiles_embedded",
            "area_km2",
            "latency_p50_ms",
            "latency_p95_ms",
            "full_res_reads_per_query",
            "peak_rss_mb",
        ):
            assert key in r["cost"]
        assert r["cost"]["tiles_embedded"] > 0 and r["cost"]["area_km2"] == pytest.approx(0.262, abs=0.01)
        assert r["settings"]["scales_m"] == [128.0, 256.0]
    # the second run reused the index built by the first
    assert json.loads(results["coarse"].read_text())["cost"]["index_reused"] is True


def test_perfect_hits_are_scored(results):
    """The 128 m patch r0 coincides with a 128 m tile: any ranking containing that tile hits it."""
    r = json.loads(results["coarse"].read_text())
    q0 = r["per_query"][0]
    assert q0["n_returned"] > 10
    assert q0["first_hit_rank"] is not None  # 59 tiles, k=100: the exact tile is somewhere in the list
    hit = next(x for x in q0["ranks"] if x["hit"])
    assert hit["truth_id"] == "r0" and hit["iou"] == pytest.approx(1.0, abs=1e-3)


def test_compare_plot_and_results_table(results, tmp_path, capsys):
    paths = [str(p) for p in results.values()]
    assert main(["eval", "--compare", *paths]) == 0
    out = capsys.readouterr().out
    assert "single-scale" in out and "coarse" in out and "hit@1" in out
    assert main(["eval", "--plot", *paths, "--out-dir", str(tmp_path / "plots")]) == 0
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert "recall_at_k_tiny.png" in pngs and "abstention_tiny.png" in pngs
    assert any(p.startswith("answers_tiny_") for p in pngs)
    readme = tmp_path / "README.md"
    readme.write_text("# T\nbefore\n<!-- results:start -->\nold\n<!-- results:end -->\nafter\n")
    assert main(["eval", "--results-table", *paths, "--update-readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and "before" in text and "after" in text and "| tiny | `coarse`" in text
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert main(["eval", "--results-table", *paths, "--update-readme", str(plain)]) == 0
    assert plain.read_text() == "no markers\n"
    assert "| bench |" in capsys.readouterr().out


def test_list_methods(capsys):
    assert main(["eval", "--list-methods"]) == 0
    out = capsys.readouterr().out
    assert "single-scale" in out and "coarse" in out


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("geosearch: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_missing_bench_json(bench, tmp_path, capsys):
    b = make_bench(tmp_path / "b")
    (b / "bench.json").unlink()
    assert main(["eval", str(b), "--model", "geosearch-tiny", "--quiet"]) == 2
    assert "bench.json" in _one_line_error(capsys)


def test_bad_queries_line(tmp_path, capsys):
    b = make_bench(tmp_path / "b")
    with open(b / "queries.jsonl", "a") as fh:
        fh.write('{"id": "bad", "text": "x", "type": "nonsense", "relevant": {}}\n')
    assert main(["eval", str(b), "--model", "geosearch-tiny", "--quiet"]) == 2
    assert "queries.jsonl:5" in _one_line_error(capsys)
    (b / "queries.jsonl").write_text('{"id": "q", "text": "a", "type": "scene", "relevant": {"nope": 2}}\n')
    assert main(["eval", str(b), "--model", "geosearch-tiny", "--quiet"]) == 2
    assert "nope" in _one_line_error(capsys)
    (b / "queries.jsonl").write_text("not json\n")
    assert main(["eval", str(b), "--model", "geosearch-tiny", "--quiet"]) == 2
    _one_line_error(capsys)


def test_unknown_method(bench, capsys):
    assert main(["eval", str(bench), "--method", "no-such-method", "--model", "geosearch-tiny"]) == 2
    assert "unknown method" in _one_line_error(capsys)


def test_no_bench_given(capsys):
    assert main(["eval"]) == 2
    _one_line_error(capsys)


def test_method_cannot_reach_the_truth(bench, results):
    """Methods get a plain str, the index and a context with no truth fields; layers are a private copy."""
    # what a method may see besides the text: user inputs and settings, never a truth field
    assert {f.name for f in dataclasses.fields(MethodContext)} == {
        "layers_dir",
        "options",
        "area",
        "settings",
        "parsed",
        "progress",
    }
    seen: list[tuple] = []

    @register_method("spy-test", "records what a method receives")
    def spy(index, text, k, ctx):
        seen.append((type(text), text, k, dataclasses.asdict(ctx), sorted(os.listdir(ctx.layers_dir))))
        return Answer(text, "spy-test", hits_to_regions(search(index, text, k)))

    truth_text = (bench / "regions.geojson").read_text()
    r = evaluate(
        bench, "spy-test", k=10, index_path=results["coarse"].parent / "spy.duckdb", settings=_settings()
    )
    texts = [json.loads(line)["text"] for line in (bench / "queries.jsonl").read_text().splitlines()]
    assert [s[1] for s in seen] == texts
    for typ, _text, k, ctx, layer_files in seen:
        assert typ is str and k == 10
        assert ctx["options"] == {}
        assert ctx["layers_dir"] and not Path(ctx["layers_dir"]).resolve().is_relative_to(bench.resolve())
        assert layer_files == ["roads.geojson"]
        assert "relevant" not in json.dumps(ctx, default=str) and "r0" not in json.dumps(ctx, default=str)
    assert r["method"] == "spy-test"
    assert (bench / "regions.geojson").read_text() == truth_text


def _settings():
    from geosearch.settings import get_settings

    return get_settings().model_copy(update={"model": "geosearch-tiny", "scales_m": [128.0, 256.0]})


def test_evaluate_rejects_bad_k(bench):
    with pytest.raises(InputError):
        evaluate(bench, "coarse", k=0, settings=_settings())


def test_aid_builder_refuses_test_split(tmp_path):
    from geosearch.eval.aid_bench import build_aid_bench

    with pytest.raises(InputError, match="dev"):
        build_aid_bench(tmp_path / "x", split="test")
    assert main(["bench", "aid-mosaic", "--split", "test", str(tmp_path / "y")]) == 2


@pytest.mark.data
@pytest.mark.skipif(
    not (SHARED / "aid-rsicd" / "manifest.jsonl").is_file(), reason="../shared/data/aid-rsicd absent"
)
def test_aid_builder_small(tmp_path):
    from geosearch.eval.bench_format import load_benchmark

    assert (
        main(
            [
                "bench",
                "aid-mosaic",
                "--split",
                "dev",
                str(tmp_path / "aid"),
                "--chips",
                "24",
                "--max-queries",
                "30",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    b = load_benchmark(tmp_path / "aid")
    assert len(b) == 30 and b.meta.name == "aid-dev"
    types = set(b.query_types)
    assert types == {"scene", "absent"}
    meta = json.loads((tmp_path / "aid" / "bench.json").read_text())
    assert meta["n_chips"] == 24 and set(meta["left_out_classes"]) == {"Airport", "Port", "BaseballField"}
    import rasterio

    with rasterio.open(b.mosaic_files[0]) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.res == (1.5, 1.5) and ds.count == 4


@pytest.mark.data
@pytest.mark.skipif(
    not (SHARED / "spacenet-vegas").is_dir() or not (SHARED / "spacenet-atlanta").is_dir(),
    reason="../shared/data/spacenet-* absent",
)
def test_spacenet_relation_builder(tmp_path):
    from geosearch.eval.bench_format import load_benchmark

    assert main(["bench", "spacenet-relations", str(tmp_path / "sn")]) == 0
    atl = load_benchmark(tmp_path / "sn" / "atlanta")
    veg = load_benchmark(tmp_path / "sn" / "vegas")
    assert "attribute" in atl.query_types and "relation" in veg.query_types
    assert veg.layers_dir is not None and (veg.layers_dir / "roads.geojson").is_file()
    assert atl.layers_dir is None


def test_an_abstention_with_no_regions_is_scored_as_an_abstention(bench, results):
    """An abstained answer holds no regions: it must still count as an abstention (an Answer is
    never falsy, whatever its length)."""

    @register_method("abstain-test", "abstains on every query")
    def never(index, text, k, ctx):
        return Answer(text, "abstain-test", [], abstained=True, reason="not found: test")

    assert Answer("q", "m", [], abstained=True) and len(Answer("q", "m", [])) == 0
    r = evaluate(
        bench, "abstain-test", k=10, index_path=results["coarse"].parent / "spy.duckdb", settings=_settings()
    )
    assert all(q["abstained"] and q["reason"] == "not found: test" for q in r["per_query"])
    if r["metrics"]["n_absent"]:
        assert r["metrics"]["abstain_recall"] == 1.0
