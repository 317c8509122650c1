"""A LangGraph agent (LangChain's ``create_agent``) that drives the GeoSearch MCP server over the
real protocol (streamable HTTP), with LangChain's MCP adapter (``langchain.mcp``, mcp 2.x).

    pip install "geosearch[agent]"        # langchain with its MCP adapter and OpenAI client
    geosearch serve --root DIR --http --port 8765 &
    GEOSEARCH_LLM_CHAT_MODEL=anthropic:claude-sonnet-4-5 \\
        python examples/mcp_agent.py http://127.0.0.1:8765/mcp "where is a lake next to farmland?"

The chat model is the planner's one setting (``GEOSEARCH_LLM_CHAT_MODEL``, or an OpenAI-compatible
``GEOSEARCH_LLM_BASE_URL``); ``--token`` is the server's bearer token, if it has one. Prints each
tool call the agent made and its final reply."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import warnings

SYSTEM = (
    "You find places in Earth-observation imagery with the GeoSearch tools. Read the index names "
    "from the user or call `answer` with the index you are given; report the regions with their "
    "confidence, or say plainly that nothing was found."
)


async def run(url: str, question: str, index: str | None, token: str | None) -> int:
    from langchain.agents import create_agent
    from langchain_core._api import LangChainBetaWarning

    warnings.filterwarnings("ignore", category=LangChainBetaWarning)
    from langchain.mcp import MCPAdapter

    from geosearch.settings import get_settings
    from geosearch_server.llm import chat_model_from_settings

    model = chat_model_from_settings(get_settings())
    target = url
    if token:
        from fastmcp.client import Client

        target = Client(url, auth=token)
    async with MCPAdapter(target) as adapter:
        tools = await adapter.list_tools()
        agent = create_agent(model, tools, system_prompt=SYSTEM)
        content = question if index is None else f"{question}\n(index: {index})"
        state = await agent.ainvoke({"messages": [{"role": "user", "content": content}]})
    for m in state["messages"]:
        for call in getattr(m, "tool_calls", None) or []:
            print(f"tool call: {call['name']}({json.dumps(call['args'])})")
        if m.type == "tool":
            print(f"tool result ({m.name}): {str(m.content)[:400]}")
    print("reply:", state["messages"][-1].content)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", help="the server's streamable HTTP endpoint, e.g. http://127.0.0.1:8765/mcp")
    p.add_argument("question")
    p.add_argument("--index", default=None, help="the index to ask about (as the server names it)")
    p.add_argument("--token", default=None, help="bearer token, when the server needs one")
    args = p.parse_args(argv)
    try:
        return asyncio.run(run(args.url, args.question, args.index, args.token))
    except Exception as exc:  # noqa: BLE001 - an example should end with one readable line
        print(f"mcp_agent: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
