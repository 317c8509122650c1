"""Query understanding: turn a region query in words into targets, relations, time and prompts.

The deterministic parser here is the default everywhere (CLI, planner, MCP ``parse_query``); an LLM
may produce the same :class:`ParsedQuery` (validated against this model) and falls back to it.
Engine code: no MCP imports.

Relation predicates use the relation engine's names: near, far_from, within, intersects, contains,
along, between, density, edge_of. Layer words are mapped to layer *roles* (roads, water,
buildings, vegetation) that the planner resolves to the index's registered layers.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from geosearch.errors import InputError

PREDICATES = (
    "near",
    "far_from",
    "within",
    "intersects",
    "contains",
    "along",
    "between",
    "density",
    "edge_of",
)
DEFAULT_NEAR_M = 250.0
DEFAULT_ALONG_M = 50.0
DEFAULT_EDGE_M = 30.0
DEFAULT_DENSITY_PER_KM2 = 200.0
MAX_QUERY_CHARS = 2000


class Target(BaseModel):
    text: str = Field(description="the phrase to look for, e.g. 'white roofed buildings'")
    kind: Literal["object", "scene"] = "object"
    attributes: list[str] = Field(default_factory=list)


class RelationSpec(BaseModel):
    predicate: Literal[
        "near", "far_from", "within", "intersects", "contains", "along", "between", "density", "edge_of"
    ]
    layer: str = Field(description="layer role or name: roads, water, buildings, vegetation or a layer name")
    layer_b: str | None = Field(None, description="second layer (between only)")
    distance_m: float | None = Field(
        None, ge=0, description="distance in metres where the predicate needs one"
    )
    threshold: float | None = Field(None, description="density (features/km²) or along share")
    negated: bool = False
    phrase: str = ""


class GeoConstraint(BaseModel):
    kind: Literal["part", "point", "bbox", "place"]
    value: str | list[float]
    phrase: str = ""


class TimeSpec(BaseModel):
    dates: list[str] = Field(default_factory=list, description="years or dates mentioned")
    since: str | None = None
    until: str | None = None
    relative: str | None = Field(None, description="e.g. 'past year', 'recent'")
    change: Literal["new", "disappeared", "changed"] | None = None
    phrase: str = ""

    @property
    def constrains(self) -> bool:
        """The query names dates or a range (a relative phrase alone does not pick dates)."""
        return bool(self.dates or self.since or self.until)

    def matches(self, date: str) -> bool:
        """Does an ISO date (or year) fit: inside ``since`` / ``until``, else one of ``dates`` at
        its precision ("2020" fits "2020-08-31" both ways)."""
        if self.since and date < self.since:
            return False
        if self.until and date[: len(self.until)] > self.until:
            return False
        if self.dates and not (self.since or self.until):
            return any(date.startswith(d) or d.startswith(date) for d in self.dates)
        return True


class ParsedQuery(BaseModel):
    text: str
    targets: list[Target] = Field(default_factory=list)
    attributes: list[str] = Field(default_factory=list)
    relations: list[RelationSpec] = Field(default_factory=list)
    geo: list[GeoConstraint] = Field(default_factory=list)
    time: TimeSpec = Field(default_factory=TimeSpec)
    exclusions: list[str] = Field(default_factory=list)
    positive_prompts: list[str] = Field(default_factory=list)
    negative_prompts: list[str] = Field(default_factory=list)
    image_text: str = Field(
        "",
        description="what the image model looks for: the query without its time and place "
        "phrases, exclusions and negated or far_from relations (those are checked on layers only)",
    )
    source: Literal["rules", "llm"] = "rules"
    find_all: bool = Field(
        False,
        description="the query asks for every instance ('all the quarries', 'every parking lot'): "
        "every region above the abstention threshold is returned, ranked",
    )

    def look_for(self) -> str:
        """The text to embed for the image model (``image_text``, else the targets, else the query)."""
        return (self.image_text or " and ".join(t.text for t in self.targets) or self.text).strip()

    @field_validator("positive_prompts")
    @classmethod
    def _need_prompt(cls, v: list[str]) -> list[str]:
        v = [p.strip() for p in v if p and p.strip()]
        if not v:
            raise ValueError("at least one positive prompt is needed")
        return v


# --- vocabularies --------------------------------------------------------------------------
LAYER_WORDS: dict[str, str] = {
    "road": "roads",
    "roads": "roads",
    "highway": "roads",
    "highways": "roads",
    "street": "roads",
    "streets": "roads",
    "motorway": "roads",
    "freeway": "roads",
    "interstate": "roads",
    "avenue": "roads",
    "railway": "railways",
    "railways": "railways",
    "rail": "railways",
    "railroad": "railways",
    "train tracks": "railways",
    "river": "water",
    "rivers": "water",
    "lake": "water",
    "lakes": "water",
    "water": "water",
    "sea": "water",
    "coast": "water",
    "coastline": "water",
    "shore": "water",
    "canal": "water",
    "pond": "water",
    "reservoir": "water",
    "ocean": "water",
    "stream": "water",
    "building": "buildings",
    "buildings": "buildings",
    "houses": "buildings",
    "house": "buildings",
    "forest": "vegetation",
    "forests": "vegetation",
    "trees": "vegetation",
    "woods": "vegetation",
    "vegetation": "vegetation",
    "park": "vegetation",
    "parks": "vegetation",
    "fields": "vegetation",
    "built-up area": "built_up",
    "built up area": "built_up",
    "city": "built_up",
    "town": "built_up",
}
SCENE_WORDS = {
    "airport",
    "port",
    "harbor",
    "harbour",
    "farmland",
    "residential",
    "industrial",
    "commercial",
    "desert",
    "beach",
    "forest",
    "meadow",
    "mountain",
    "park",
    "stadium",
    "railway station",
    "church",
    "school",
    "center",
    "centre",
    "square",
    "playground",
    "bare land",
    "river",
    "pond",
    "viaduct",
    "bridge",
    "parking",
    "storage tanks",
    "resort",
    "dense residential",
    "sparse residential",
    "medium residential",
    "baseball field",
    "golf course",
    "neighborhood",
    "neighbourhood",
    "suburb",
    "area",
    "district",
    "village",
    "town",
    "city",
    "farm",
    "fields",
    "wetland",
    "lake",
    "coast",
}
ATTRIBUTE_WORDS = {
    "red",
    "blue",
    "green",
    "white",
    "black",
    "grey",
    "gray",
    "brown",
    "yellow",
    "orange",
    "dark",
    "bright",
    "large",
    "small",
    "big",
    "tiny",
    "huge",
    "long",
    "wide",
    "narrow",
    "circular",
    "round",
    "square",
    "rectangular",
    "dense",
    "sparse",
    "empty",
    "crowded",
    "busy",
    "paved",
    "unpaved",
    "dirt",
    "bare",
    "flat",
    "tall",
    "old",
    "new",
    "modern",
    "curved",
    "straight",
    "parallel",
    "many",
    "few",
    "irrigated",
    "dry",
    "wet",
    "sandy",
    "rocky",
    "flooded",
}
FILLER = re.compile(
    r"^(?:please\s+)?(?:find|show me|show|search for|search|look for|locate|where are|where is|where|"
    r"are there|is there|give me|get|list|i want|i need|i'm looking for|i am looking for|which|what|"
    r"identify|detect|highlight|map)\b\s*",
    re.I,
)
LEAD_DETERMINERS = re.compile(
    r"^(?:all|any|some|the|a|an|every|each|areas? with|places? with|regions? with|"
    r"areas? of|places? where|regions? of|spots? with)\s+",
    re.I,
)
FIND_ALL = re.compile(r"^(?:(?:all|every|each)(?:\s+(?:of\s+)?the)?|how many)\b\s*", re.I)
UNIT_M = {
    "m": 1.0,
    "meter": 1.0,
    "meters": 1.0,
    "metre": 1.0,
    "metres": 1.0,
    "km": 1000.0,
    "kilometer": 1000.0,
    "kilometers": 1000.0,
    "kilometre": 1000.0,
    "kilometres": 1000.0,
    "mi": 1609.344,
    "mile": 1609.344,
    "miles": 1609.344,
    "ft": 0.3048,
    "feet": 0.3048,
    "foot": 0.3048,
    "yd": 0.9144,
    "yards": 0.9144,
}
_NUM = r"(\d+(?:[.,]\d+)?)"
_UNIT = r"(km|kilomet(?:er|re)s?|m|met(?:er|re)s?|mi|miles?|ft|feet|foot|yd|yards)"
_DIST = rf"{_NUM}\s*{_UNIT}\b"
_ART = r"(?:the\s+|a\s+|an\s+|any\s+|some\s+)?"
_LAYER = r"([a-z][a-z\- ]*?)"
_END = (
    r"(?=\s*(?:,|;|\.|$|\band\b|\bor\b|\bbut\b|\bwith\b|\bwithout\b|\bnot\b|\bno\b|\bnear\b|\bfar\b|"
    r"\bwithin\b|\bsince\b|\bin\b|\bfrom\b|\bbetween\b|\balong\b|\bthat\b|\bwhich\b|\bexcept\b))"
)
YEAR = r"((?:19|20)\d{2}(?:-\d{2}(?:-\d{2})?)?)"


def _dist(num: str, unit: str) -> float:
    return float(num.replace(",", ".")) * UNIT_M[unit.lower()]


def layer_role(phrase: str) -> str:
    """Map a layer phrase ('the highway', 'rivers') to a role or a layer-like name."""
    p = phrase.lower().strip()
    p = re.sub(r"^(?:the|a|an|any|some)\s+", "", p)
    if p in LAYER_WORDS:
        return LAYER_WORDS[p]
    for word in reversed(p.split()):
        if word in LAYER_WORDS:
            return LAYER_WORDS[word]
    return re.sub(r"[^a-z0-9_]+", "_", p).strip("_")[:63] or "layer"


# --- the parser ----------------------------------------------------------------------------
_RELATION_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "between",
        re.compile(
            rf"\bbetween\s+{_ART}(?P<a>[a-z][a-z\- ]*?)\s+and\s+{_ART}(?P<b>[a-z][a-z\- ]*?)"
            rf"(?:\s+within\s+{_DIST})?{_END}",
            re.I,
        ),
    ),
    (
        "near",
        re.compile(
            rf"\b(?:within|less than|under|at most|no more than|closer than)\s+{_DIST}\s+"
            rf"(?:of|from|to|away from)\s+{_ART}{_LAYER}{_END}",
            re.I,
        ),
    ),
    (
        "far_from",
        re.compile(
            rf"\b(?:more than|over|at least|further than|farther than|beyond)\s+{_DIST}\s+"
            rf"(?:from|away from|of)\s+{_ART}{_LAYER}{_END}",
            re.I,
        ),
    ),
    ("near", re.compile(rf"\b{_DIST}\s+(?:or less\s+)?(?:from|of)\s+{_ART}{_LAYER}{_END}", re.I)),
    ("far_from", re.compile(rf"\b(?:far|away)\s+from\s+{_ART}{_LAYER}{_END}", re.I)),
    ("along", re.compile(rf"\b(?:along|lining|beside|following)\s+{_ART}{_LAYER}{_END}", re.I)),
    (
        "edge_of",
        re.compile(
            rf"\b(?:(?:on|at)\s+the\s+edges?\s+of|bordering|on the border of|at the margin of)"
            rf"\s+{_ART}{_LAYER}{_END}",
            re.I,
        ),
    ),
    (
        "intersects",
        re.compile(rf"\b(?:crossing|crossed by|intersecting|over|across)\s+{_ART}{_LAYER}{_END}", re.I),
    ),
    (
        "contains",
        re.compile(
            rf"\b(?:containing|that contains?|which contains?|enclosing)\s+{_ART}{_LAYER}{_END}", re.I
        ),
    ),
    (
        "within",
        re.compile(rf"\b(?:inside|within|in the middle of|surrounded by)\s+{_ART}{_LAYER}{_END}", re.I),
    ),
    (
        "near",
        re.compile(
            rf"\b(?:near|close to|next to|adjacent to|nearby|by|around|beside)\s+{_ART}{_LAYER}{_END}", re.I
        ),
    ),
    (
        "density",
        re.compile(
            r"\b(?:dense|densely packed|many|lots of|a lot of|high density of|clusters? of)\s+"
            r"(?P<l>buildings|houses|trees|roads)\b",
            re.I,
        ),
    ),
]
_EXCLUSION = re.compile(
    r"\b(?:without|with no|excluding|except(?: for)?|but not|not|no|free of|lacking|avoiding|away from any)\s+"
    r"(?:any\s+|the\s+|a\s+)?([a-z][a-z\- ]*?)(?=\s*(?:,|;|\.|$|\band\b|\bor\b|\bbut\b|\bwith\b|\bnear\b|"
    r"\bwithin\b|\bsince\b|\bin\b|\bfrom\b))",
    re.I,
)
_TIME_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("range", re.compile(rf"\b(?:between|from)\s+{YEAR}\s+(?:and|to|until|-)\s+{YEAR}\b", re.I)),
    ("since", re.compile(rf"\b(?:since|after|from)\s+{YEAR}\b", re.I)),
    ("until", re.compile(rf"\b(?:before|until|till|up to)\s+{YEAR}\b", re.I)),
    ("in", re.compile(rf"\b(?:in|during|of|as of)\s+{YEAR}\b", re.I)),
    (
        "relative",
        re.compile(
            r"\b(?:in\s+)?(?:the\s+)?(?:past|last|previous)\s+(?:(\d+|few|two|three|five|ten)\s+)?"
            r"(year|years|month|months|decade|week|weeks)\b",
            re.I,
        ),
    ),
    ("relative", re.compile(r"\b(recently|recent)\b", re.I)),
]
_CHANGE = [
    (
        "new",
        re.compile(
            r"\b(?:new|newly\s+\w+|recently built|appeared|appearing|emerged|constructed|"
            r"built since|new construction|construction of)\b",
            re.I,
        ),
    ),
    (
        "disappeared",
        re.compile(
            r"\b(?:disappeared|vanished|removed|demolished|lost|cleared|no longer there|gone|"
            r"cut down|destroyed)\b",
            re.I,
        ),
    ),
    ("changed", re.compile(r"\b(?:changed|change|changes|changing|transformed|converted)\b", re.I)),
]
_GEO_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "bbox",
        re.compile(
            r"\bbbox\s*[:=]?\s*\[?\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)"
            r"\s*,\s*(-?\d+(?:\.\d+)?)\s*\]?",
            re.I,
        ),
    ),
    (
        "point",
        re.compile(r"\b(?:at|around|near)\s+\(?\s*(-?\d{1,3}\.\d+)\s*,\s*(-?\d{1,3}\.\d+)\s*\)?", re.I),
    ),
    (
        "part",
        re.compile(
            r"\bin\s+the\s+(north|south|east|west|north-?east|north-?west|south-?east|south-?west|"
            r"northern|southern|eastern|western|central|center|centre|middle)(?:ern)?"
            r"(?:\s+(?:part|half|side|corner|area|portion))?(?:\s+of\s+(?:the\s+)?"
            r"(?:image|mosaic|map|area|scene|city))?\b",
            re.I,
        ),
    ),
    ("place", re.compile(r"\bin\s+([A-Z][a-zA-Z]+(?:\s+[A-Z][a-zA-Z]+)*)")),
]


def _cut(text: str, span: tuple[int, int]) -> str:
    return text[: span[0]] + " " * (span[1] - span[0]) + text[span[1] :]


def _clean_phrase(p: str) -> str:
    p = re.sub(r"\s+", " ", p).strip(" ,;.:-")
    p = re.sub(
        r"\b(?:and|or|but|that are|which are|that is|which is|that|which|are|is|located|situated|"
        r"there|with)\s*$",
        "",
        p,
        flags=re.I,
    ).strip(" ,;.:-")
    p = re.sub(r"^(?:and|or|but|with|of)\s+", "", p, flags=re.I)
    return p.strip()


def parse_query(text: str) -> ParsedQuery:
    """Deterministic rule-based parse of a region query."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("empty query: give some words to search for")
    if len(text) > MAX_QUERY_CHARS:
        raise InputError(f"query too long ({len(text)} characters, at most {MAX_QUERY_CHARS})")
    original = re.sub(r"\s+", " ", text.strip())
    work = original
    relations: list[RelationSpec] = []
    geo: list[GeoConstraint] = []
    exclusions: list[str] = []
    time = TimeSpec()

    # Geo constraints first (bbox / coordinates hold numbers the other rules would misread).
    for kind, pat in _GEO_PATTERNS:
        for m in list(pat.finditer(work)):
            if kind == "bbox":
                geo.append(
                    GeoConstraint(kind="bbox", value=[float(g) for g in m.groups()], phrase=m.group(0))
                )
            elif kind == "point":
                lat_or_lon = [float(m.group(1)), float(m.group(2))]
                geo.append(GeoConstraint(kind="point", value=lat_or_lon, phrase=m.group(0)))
            elif kind == "part":
                part = m.group(1).lower().replace("-", "").replace("ern", "")
                part = {"centr": "center", "centre": "center", "central": "center", "middle": "center"}.get(
                    part, part
                )
                geo.append(GeoConstraint(kind="part", value=part, phrase=m.group(0)))
            else:
                name = m.group(1)
                if re.fullmatch(r"(?:19|20)\d{2}", name):
                    continue
                geo.append(GeoConstraint(kind="place", value=name, phrase=m.group(0)))
            work = _cut(work, m.span())

    # Time.
    for kind, pat in _TIME_PATTERNS:
        for m in list(pat.finditer(work)):
            if kind == "range":
                time.since, time.until = m.group(1), m.group(2)
                time.dates += [m.group(1), m.group(2)]
            elif kind == "since":
                time.since = m.group(1)
                time.dates.append(m.group(1))
            elif kind == "until":
                time.until = m.group(1)
                time.dates.append(m.group(1))
            elif kind == "in":
                time.dates.append(m.group(1))
            else:
                time.relative = re.sub(r"^(?:in\s+)?(?:the\s+)?", "", m.group(0).lower())
            time.phrase = (time.phrase + " " + m.group(0)).strip()
            work = _cut(work, m.span())
    for kind, pat in _CHANGE:
        m = pat.search(work)
        if m and time.change is None:
            time.change = kind  # type: ignore[assignment]
            time.phrase = (time.phrase + " " + m.group(0)).strip()
            if kind != "new":  # "new" stays in the target text ("new buildings" is still buildings)
                work = _cut(work, m.span())

    # Relations (longest / most specific patterns first). ``image`` is what the image model will
    # look for: positive relations stay in it ("the house is surrounded by trees" is also a look),
    # negated and far_from ones and exclusions do not (their words would attract what is excluded).
    lowered = work.lower()
    image = work
    for pred, pat in _RELATION_PATTERNS:
        for m in list(pat.finditer(lowered)):
            if not m.group(0).strip():
                continue
            neg = re.search(r"\b(?:not|never|isn't|aren't)\s*$", lowered[: m.start()])
            negated = bool(neg)
            span = (neg.start() if neg else m.start(), m.end())
            if pred == "between":
                dist = _dist(m.group(3), m.group(4)) if m.group(3) else DEFAULT_NEAR_M
                spec = RelationSpec(
                    predicate="between",
                    layer=layer_role(m.group("a")),
                    layer_b=layer_role(m.group("b")),
                    distance_m=dist,
                    phrase=m.group(0),
                )
            elif pred == "density":
                spec = RelationSpec(
                    predicate="density",
                    layer=layer_role(m.group("l")),
                    distance_m=0.0,
                    threshold=DEFAULT_DENSITY_PER_KM2,
                    phrase=m.group(0),
                )
                relations.append(spec)
                continue  # keep the words: "dense buildings" is also what to look for
            elif m.lastindex and m.lastindex >= 3 and pred in ("near", "far_from") and _has_dist(m):
                spec = RelationSpec(
                    predicate=pred,
                    layer=layer_role(m.group(3)),
                    distance_m=_dist(m.group(1), m.group(2)),
                    negated=negated,
                    phrase=m.group(0),
                )
            else:
                layer_phrase = m.group(m.lastindex or 1)
                if layer_role(layer_phrase) not in set(LAYER_WORDS.values()) and pred in ("within", "near"):
                    # "in the middle of nowhere", "by night": not a layer we know; leave the words alone
                    continue
                dist = {
                    "near": DEFAULT_NEAR_M,
                    "far_from": DEFAULT_NEAR_M * 4,
                    "along": DEFAULT_ALONG_M,
                    "edge_of": DEFAULT_EDGE_M,
                }.get(pred)
                spec = RelationSpec(
                    predicate=pred,
                    layer=layer_role(layer_phrase),
                    distance_m=dist,
                    negated=negated,
                    phrase=m.group(0),
                )
            if negated and spec.predicate == "near":
                spec = spec.model_copy(update={"predicate": "far_from", "negated": False})
            relations.append(spec)
            lowered = _cut(lowered, span)
            work = _cut(work, span)
            if negated or spec.predicate == "far_from":
                image = _cut(image, span)
            elif spec.predicate == "near" and _has_dist(m) and m.lastindex and m.lastindex >= 3:
                # the layers check the distance; the image model sees "near water" whatever the number
                plain = f"near {m.group(3)}"
                if len(plain) <= span[1] - span[0]:
                    image = image[: span[0]] + plain.ljust(span[1] - span[0]) + image[span[1] :]

    # Exclusions.
    for m in list(_EXCLUSION.finditer(work.lower())):
        phrase = _clean_phrase(m.group(1))
        if phrase and phrase not in exclusions:
            exclusions.append(phrase)
        work = _cut(work, m.span())
        image = _cut(image, m.span())

    # What is left: the targets.
    rest = _clean_phrase(work)
    rest = FILLER.sub("", rest)
    image_text = re.sub(r"\s+", " ", FILLER.sub("", _clean_phrase(image))).strip(" ,;.:-")
    find_all = bool(FIND_ALL.match(rest))
    if find_all:  # "all the", "every", "how many" say how many, not what to look for
        counting = not re.match(r"all\b", rest, re.I)  # "every", "each", "how many": count nouns
        rest = FIND_ALL.sub("", rest)
        image_text = one_instance(FIND_ALL.sub("", image_text), counting)
    rest = LEAD_DETERMINERS.sub("", rest)
    rest = re.sub(r"\b(?:that|which|who)\s+(?:are|is)\s*$", "", rest, flags=re.I)
    pieces = [
        _clean_phrase(LEAD_DETERMINERS.sub("", p)) for p in re.split(r",|;|\band\b|\bor\b|\bplus\b", rest)
    ]
    pieces = [p for p in pieces if p and not re.fullmatch(r"(?:the|a|an|of|in|on|at|to)", p, re.I)]
    if not pieces:
        if relations:
            pieces = [relations[0].layer.replace("_", " ")]
        elif exclusions:
            pieces = ["land"]
        else:
            pieces = [original]
    targets: list[Target] = []
    all_attrs: list[str] = []
    for p in pieces:
        words = p.lower().split()
        attrs = [w for w in words if w in ATTRIBUTE_WORDS]
        kind = "scene" if any(w in SCENE_WORDS for w in words) or p.lower() in SCENE_WORDS else "object"
        targets.append(Target(text=p.lower(), kind=kind, attributes=attrs))  # type: ignore[arg-type]
        all_attrs += [a for a in attrs if a not in all_attrs]

    positive = prompts_for([t.text for t in targets])
    negative = prompts_for(exclusions) if exclusions else []
    return ParsedQuery(
        text=original,
        targets=targets,
        attributes=all_attrs,
        relations=relations,
        geo=geo,
        time=time,
        exclusions=exclusions,
        positive_prompts=positive,
        negative_prompts=negative,
        image_text=image_text or " and ".join(t.text for t in targets),
        find_all=find_all,
    )


_HEAD_END = re.compile(
    r"\s(?:in|on|near|with|without|of|along|by|at|next|beside|around|inside|within)\s", re.I
)
_NOT_PLURAL = set("grass glass gas bus campus cactus bias lens oasis sports species".split())


def singular(word: str) -> str:
    """English plural to singular for the head nouns of place queries (lakes, quarries, churches)."""
    w = word.lower()
    if len(w) < 4 or w in _NOT_PLURAL or w.endswith(("ss", "us", "is")) or not w.endswith("s"):
        return word
    if w.endswith("ies"):
        return word[:-3] + "y"
    if w.endswith(("ches", "shes", "xes", "sses", "zes")):
        return word[:-2]
    return word[:-1]


def one_instance(phrase: str, count_noun: bool = False) -> str:
    """What one instance of a "find all" phrase looks like: "lakes" -> "a lake", "parking lots near
    the river" -> "a parking lot near the river", so "all the lakes", "every lake" and "a lake" embed
    alike and rank the same regions (a plural or a bare noun moves the text embedding). A mass noun
    ("all the farmland") keeps no article unless ``count_noun`` ("every ...") says it counts."""
    phrase = phrase.strip()
    m = _HEAD_END.search(f" {phrase} ")
    cut = m.start() - 1 if m and m.start() > 0 else len(phrase)  # -1: the search ran on " phrase "
    head, tail = phrase[:cut], phrase[cut:]
    words = head.split()
    if not words or words[0].lower() in {"a", "an", "the"}:
        return phrase
    one = singular(words[-1])
    if one == words[-1] and not count_noun:
        return phrase
    words[-1] = one
    article = "an" if words[0][0].lower() in "aeiou" else "a"
    return f"{article} {' '.join(words)}{tail}"


def _has_dist(m: re.Match[str]) -> bool:
    try:
        return m.group(1) is not None and m.group(2) is not None and m.group(2).lower() in UNIT_M
    except IndexError:
        return False


def prompts_for(phrases: list[str]) -> list[str]:
    """The prompt ensemble embedded for a list of phrases (the phrase itself plus two templates)."""
    out: list[str] = []
    for p in phrases:
        p = p.strip()
        if not p:
            continue
        for s in (p, f"an aerial image of {p}", f"a satellite photo of {p}"):
            if s not in out:
                out.append(s)
    return out


def query_from_prompts(
    prompts: list[str], negative: list[str] | None = None, text: str | None = None
) -> ParsedQuery:
    """A ParsedQuery made from explicit prompts (when a client gives prompts instead of words)."""
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise InputError("no prompts given: pass a query text or at least one prompt")
    return ParsedQuery(
        text=text or "; ".join(prompts),
        targets=[Target(text=p) for p in prompts],
        positive_prompts=prompts,
        negative_prompts=[n for n in (negative or []) if n.strip()],
        exclusions=[n for n in (negative or []) if n.strip()],
    )
