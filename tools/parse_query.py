"""Tool ``parse_query``: a region query in words -> targets, relations, time, exclusions, prompts.

Deterministic by default (:func:`geosearch.query.parse_query`); when an LLM is available (MCP
sampling from the client, or ``settings.llm_base_url``) it is asked first with
``prompts/query_parser.md`` and its JSON is validated against the same model, falling back to the
rules on any failure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from pydantic import Field

from geosearch.query import ParsedQuery
from geosearch.query import parse_query as rules_parse
from geosearch_tools.common import ProgressFn, QueryText, StrictInput, Workspace

CompleteFn = Callable[[str], str]


class ParseQueryInput(StrictInput):
    text: QueryText = Field(min_length=1, description="the query in words")
    use_llm: bool = Field(True, description="ask an LLM when one is available (falls back to rules)")


class ParseQueryOutput(ParsedQuery):
    llm_error: str | None = Field(None, description="why the LLM parse was not used, when it was tried")


def parse_with_llm(text: str, complete: CompleteFn) -> ParsedQuery:
    """Ask the LLM, validate its JSON against :class:`ParsedQuery` (raises on any problem)."""
    from geosearch_prompts import render

    reply = complete(render("query_parser", text=text))
    m = re.search(r"\{.*\}", reply or "", re.S)
    if not m:
        raise ValueError("the LLM reply holds no JSON object")
    data = json.loads(m.group(0))
    data["text"] = text
    data["source"] = "llm"
    return ParsedQuery.model_validate(data)


def run(
    inp: ParseQueryInput,
    ws: Workspace | None = None,
    progress: ProgressFn | None = None,
    complete: CompleteFn | None = None,
) -> ParseQueryOutput:
    rules = rules_parse(inp.text)
    if inp.use_llm:
        complete = complete or (ws.llm_complete() if ws is not None else None)
    else:
        complete = None
    if complete is not None:
        try:
            parsed = parse_with_llm(inp.text, complete)
            return ParseQueryOutput(**parsed.model_dump())
        except Exception as exc:  # noqa: BLE001 - any LLM failure falls back to the rules
            return ParseQueryOutput(**rules.model_dump(), llm_error=f"{type(exc).__name__}: {exc}"[:300])
    return ParseQueryOutput(**rules.model_dump())
