"""The deterministic query parser (geosearch.query) and the parse_query tool's LLM fallback."""

from __future__ import annotations

import json

import pytest

from geosearch.errors import InputError
from geosearch.query import PREDICATES, ParsedQuery, parse_query


def test_relation_with_distance():
    p = parse_query("parking lots within 500 m of the highway")
    assert [t.text for t in p.targets] == ["parking lots"]
    (r,) = p.relations
    assert (r.predicate, r.layer, r.distance_m) == ("near", "roads", 500.0)
    assert any("parking lots" in s for s in p.positive_prompts)


@pytest.mark.parametrize(
    "text,pred,layer,dist",
    [
        ("houses within 2 km of the coast", "near", "water", 2000.0),
        ("farms more than 1.5 km from any road", "far_from", "roads", 1500.0),
        ("buildings 300 m from the lake", "near", "water", 300.0),
        ("warehouses along the river", "along", "water", None),
        ("fields far from rivers", "far_from", "water", None),
        ("trees inside the park", "within", "vegetation", None),
        ("houses on the edge of the forest", "edge_of", "vegetation", None),
        ("a path crossing the river", "intersects", "water", None),
        ("parks containing a pond", "contains", "water", None),
        ("solar panels not near roads", "far_from", "roads", None),
    ],
)
def test_relations(text, pred, layer, dist):
    p = parse_query(text)
    assert p.relations, text
    r = p.relations[0]
    assert r.predicate == pred and r.layer == layer
    assert r.predicate in PREDICATES
    if dist is not None:
        assert r.distance_m == pytest.approx(dist)


def test_between_and_density():
    p = parse_query("farmland between the river and the highway")
    r = p.relations[0]
    assert (r.predicate, r.layer, r.layer_b) == ("between", "water", "roads")
    d = parse_query("dense buildings").relations[0]
    assert d.predicate == "density" and d.layer == "buildings" and d.threshold


@pytest.mark.parametrize(
    "text,excl",
    [
        ("houses without swimming pools", ["swimming pools"]),
        ("fields with no trees", ["trees"]),
        ("beaches, not rocks", ["rocks"]),
        ("ports excluding container cranes", ["container cranes"]),
    ],
)
def test_exclusions(text, excl):
    p = parse_query(text)
    assert p.exclusions == excl
    assert p.negative_prompts and excl[0] in p.negative_prompts[0]
    assert all(excl[0] not in t.text for t in p.targets)


def test_time_phrases():
    p = parse_query("new buildings since 2015")
    assert p.time.since == "2015" and p.time.change == "new"
    p = parse_query("forest that disappeared in the past year")
    assert p.time.relative == "past year" and p.time.change == "disappeared"
    assert p.targets[0].text == "forest"
    p = parse_query("fields between 2010 and 2020")
    assert (p.time.since, p.time.until) == ("2010", "2020") and not p.relations
    p = parse_query("the airport in 2019")
    assert p.time.dates == ["2019"]
    assert parse_query("what changed recently").time.change == "changed"


def test_targets_attributes_geo():
    p = parse_query("find large white warehouses and a red barn in the north of the image")
    assert [t.text for t in p.targets] == ["large white warehouses", "a red barn"] or [
        t.text for t in p.targets
    ] == ["large white warehouses", "red barn"]
    assert {"large", "white", "red"} <= set(p.attributes)
    assert p.geo[0].kind == "part" and p.geo[0].value == "north"
    assert parse_query("an airport").targets[0].kind == "scene"


def test_invalid():
    with pytest.raises(InputError):
        parse_query("   ")
    with pytest.raises(InputError):
        parse_query("x" * 5000)


def test_llm_parse_and_fallback():
    from geosearch_tools import parse_query as tool

    good = parse_query("ships near the coast").model_dump()
    good["source"] = "llm"
    out = tool.run(
        tool.ParseQueryInput(text="ships near the coast"), complete=lambda prompt: json.dumps(good)
    )
    assert out.source == "llm" and out.relations[0].layer == "water" and out.llm_error is None
    # invalid JSON -> rules
    out = tool.run(tool.ParseQueryInput(text="ships near the coast"), complete=lambda prompt: "sorry, no")
    assert out.source == "rules" and out.llm_error
    # JSON that breaks the schema (unknown predicate) -> rules
    bad = dict(good, relations=[{"predicate": "beside", "layer": "water"}])
    out = tool.run(tool.ParseQueryInput(text="ships near the coast"), complete=lambda prompt: json.dumps(bad))
    assert out.source == "rules" and "predicate" in out.llm_error

    # the LLM raising -> rules
    def boom(prompt):
        raise TimeoutError("slow")

    assert tool.run(tool.ParseQueryInput(text="ships"), complete=boom).source == "rules"
    ParsedQuery.model_validate(out.model_dump())


def test_prompt_loader():
    from geosearch_prompts import load_prompt, render

    assert "{text}" in load_prompt("query_parser")
    assert "near" in render("query_parser", text="x")
    assert "coarse_search" in load_prompt("answer_region_query")
    with pytest.raises(InputError):
        load_prompt("../pyproject")
    with pytest.raises(InputError):
        load_prompt("nope")


def test_time_spec_matches_dates_and_ranges():
    """One date test for tile dates (chain) and layer dates (relation applier)."""
    from geosearch.relations.apply import _time_mismatch

    t = parse_query("farms in 2020").time
    assert t.constrains and t.matches("2020-08-31") and not t.matches("2018-07-01")
    r = parse_query("new houses since 2015").time
    assert r.matches("2016-01-01") and not r.matches("2014-12-31")
    assert not parse_query("a lake").time.constrains
    assert _time_mismatch({"date": "2018-07-01"}, t) and _time_mismatch({"date": "2020-05-01"}, t) is None
    assert _time_mismatch({}, t) is None


def test_image_text_keeps_what_can_be_seen():
    """Positive relations stay in what the image model looks for (they describe the look too);
    negated / far_from relations, exclusions, time and place phrases do not."""
    assert parse_query("the house is surrounded by trees").image_text == "the house is surrounded by trees"
    assert parse_query("red not within water").image_text == "red"
    assert parse_query("farms far from the road").image_text == "farms"
    assert parse_query("a park without a pond").image_text == "a park"
    assert parse_query("solar panels along a river in 2020").image_text == "solar panels along a river"


@pytest.mark.parametrize(
    "text, find_all, look",
    [
        ("all the quarries", True, "a quarry"),
        ("show me all red roofs", True, "a red roof"),
        ("find every parking lot", True, "a parking lot"),
        ("how many ships", True, "a ship"),
        ("all the churches near the river", True, "a church near the river"),
        ("all the farmland", True, "farmland"),  # a mass noun keeps no article
        ("every oil tank", True, "an oil tank"),
        ("a quarry", False, "a quarry"),
        ("the allotments", False, "the allotments"),
    ],
)
def test_find_all_queries(text, find_all, look):
    p = parse_query(text)
    assert p.find_all is find_all
    assert p.look_for() == look


def test_find_all_looks_for_one_instance():
    """The words "all the lakes", "every lake" and "a lake" embed the same text, so they rank the same regions
    (the plural moved the embedding: a new user saw the best lake of "a lake" missing from "all the
    lakes", and "every lake" return another set)."""
    looks = {parse_query(q).look_for() for q in ("all the lakes", "every lake", "a lake", "each lake")}
    assert looks == {"a lake"}


@pytest.mark.parametrize("dist", ["5 m", "200 m", "5000 m", "2 km"])
def test_a_distance_is_checked_on_layers_not_embedded(dist):
    """The number goes to the relation; the image model sees the same words at any distance."""
    p = parse_query(f"farmland within {dist} of water")
    assert p.look_for() == "farmland near water"
    assert p.relations[0].predicate == "near" and p.relations[0].layer == "water"
    assert p.relations[0].distance_m == {"5 m": 5, "200 m": 200, "5000 m": 5000, "2 km": 2000}[dist]
