"""The registry's tools as LangChain ``StructuredTool`` objects for the LLM planner: the same
pydantic input schemas and the same one description per tool as the MCP server. ``answer`` is left
out: the planner is the alternative to it. Every call is logged (arguments and the tool's output
model) so that the regions the model looked at can be collected afterwards."""

from __future__ import annotations

from typing import Any

from geosearch_tools.common import Workspace, tool_error_message
from geosearch_tools.registry import TOOLS

PLANNER_TOOLS = [t for t in TOOLS if t.name != "answer"]
MAX_TOOL_REPLY = 20_000


def langchain_tools(ws: Workspace, log: list[dict] | None = None) -> list:
    from langchain_core.tools import StructuredTool

    out = []
    for spec in PLANNER_TOOLS:

        def call(_spec=spec, **kwargs: Any) -> str:
            try:
                result = _spec.fn(_spec.input_model(**kwargs), ws)
            except Exception as exc:  # noqa: BLE001 - the model reads the error and may retry
                msg = f"error: {tool_error_message(exc)}"
                if log is not None:
                    log.append({"tool": _spec.name, "args": kwargs, "error": msg})
                return msg
            if log is not None:
                log.append({"tool": _spec.name, "args": kwargs, "result": result})
            return result.model_dump_json(exclude={"preview"})[:MAX_TOOL_REPLY]

        out.append(
            StructuredTool.from_function(
                func=call, name=spec.name, description=spec.description, args_schema=spec.input_model
            )
        )
    return out
