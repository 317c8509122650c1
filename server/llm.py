"""Optional LLM access over an OpenAI-compatible endpoint (httpx): a plain completion function for
the query parser / explanations, and a tiny LangChain chat model for the LLM planner.

Configured with ``GEOSEARCH_LLM_BASE_URL`` (e.g. ``http://127.0.0.1:11434/v1``),
``GEOSEARCH_LLM_MODEL`` and optionally ``GEOSEARCH_LLM_API_KEY``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool

from geosearch.errors import GeoSearchError
from geosearch.settings import Settings


def _headers(api_key: str | None) -> dict[str, str]:
    h = {"Content-Type": "application/json"}
    if api_key:
        h["Authorization"] = f"Bearer {api_key}"
    return h


def chat_completion(base_url: str, model: str, messages: list[dict], *, api_key: str | None = None,
                    tools: list[dict] | None = None, timeout: float = 60.0) -> dict:
    """POST /chat/completions; returns the first choice's message (dict)."""
    body: dict[str, Any] = {"model": model, "messages": messages, "temperature": 0}
    if tools:
        body["tools"] = tools
    try:
        r = httpx.post(base_url.rstrip("/") + "/chat/completions", json=body, headers=_headers(api_key),
                       timeout=timeout)
        r.raise_for_status()
        return r.json()["choices"][0]["message"]
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
        raise GeoSearchError(f"LLM endpoint {base_url} failed: {exc}") from exc


def complete_fn(settings: Settings) -> Callable[[str], str]:
    """prompt -> reply text, over the configured endpoint."""
    if not settings.llm_base_url:
        raise GeoSearchError("no LLM configured: set GEOSEARCH_LLM_BASE_URL and GEOSEARCH_LLM_MODEL")
    base, model, key = settings.llm_base_url, settings.llm_model or "default", settings.llm_api_key

    def complete(prompt: str) -> str:
        return chat_completion(base, model, [{"role": "user", "content": prompt}], api_key=key).get("content") or ""

    return complete


def _to_openai(m: BaseMessage) -> dict:
    if isinstance(m, SystemMessage):
        return {"role": "system", "content": m.content}
    if isinstance(m, HumanMessage):
        return {"role": "user", "content": m.content}
    if isinstance(m, ToolMessage):
        return {"role": "tool", "content": m.content, "tool_call_id": m.tool_call_id}
    if isinstance(m, AIMessage):
        out: dict[str, Any] = {"role": "assistant", "content": m.content or ""}
        if m.tool_calls:
            out["tool_calls"] = [{"id": c.get("id") or c["name"], "type": "function",
                                  "function": {"name": c["name"], "arguments": json.dumps(c["args"])}}
                                 for c in m.tool_calls]
        return out
    return {"role": "user", "content": str(m.content)}


class OpenAICompatChat(BaseChatModel):
    """A minimal chat model for any OpenAI-compatible ``/chat/completions`` endpoint (tool calls included)."""

    base_url: str
    model: str = "default"
    api_key: str | None = None
    timeout: float = 120.0
    tools: list[dict] | None = None

    @property
    def _llm_type(self) -> str:
        return "openai-compatible-httpx"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any):  # type: ignore[override]
        return self.model_copy(update={"tools": [convert_to_openai_tool(t) for t in tools]})

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        msg = chat_completion(self.base_url, self.model, [_to_openai(m) for m in messages], api_key=self.api_key,
                              tools=self.tools, timeout=self.timeout)
        calls = []
        for c in msg.get("tool_calls") or []:
            fn = c.get("function", {})
            try:
                args = json.loads(fn.get("arguments") or "{}")
            except ValueError:
                args = {}
            calls.append({"name": fn.get("name", ""), "args": args, "id": c.get("id") or uuid.uuid4().hex})
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=msg.get("content") or "",
                                                                        tool_calls=calls))])


def chat_model_from_settings(settings: Settings) -> BaseChatModel:
    if not settings.llm_base_url:
        raise GeoSearchError("the LLM planner needs a model: set GEOSEARCH_LLM_BASE_URL and GEOSEARCH_LLM_MODEL "
                             "(an OpenAI-compatible endpoint), or pass a LangChain chat model")
    return OpenAICompatChat(base_url=settings.llm_base_url, model=settings.llm_model or "default",
                            api_key=settings.llm_api_key)
