"""The LLM planner's chat model: a tiny LangChain chat model over an OpenAI-compatible endpoint
(the plain completion function for the query parser lives in :mod:`geosearch.llm`).

Configured with ``GEOSEARCH_LLM_BASE_URL`` (e.g. ``http://127.0.0.1:11434/v1``),
``GEOSEARCH_LLM_MODEL`` and optionally ``GEOSEARCH_LLM_API_KEY``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool

from geosearch.errors import GeoSearchError
from geosearch.llm import chat_completion, complete_fn  # noqa: F401  (complete_fn re-exported)
from geosearch.settings import Settings


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
            out["tool_calls"] = [
                {
                    "id": c.get("id") or c["name"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": json.dumps(c["args"])},
                }
                for c in m.tool_calls
            ]
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

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        msg = chat_completion(
            self.base_url,
            self.model,
            [_to_openai(m) for m in messages],
            api_key=self.api_key,
            tools=self.tools,
            timeout=self.timeout,
        )
        calls = []
        for c in msg.get("tool_calls") or []:
            fn = c.get("function", {})
            try:
                args = json.loads(fn.get("arguments") or "{}")
            except ValueError:
                args = {}
            calls.append({"name": fn.get("name", ""), "args": args, "id": c.get("id") or uuid.uuid4().hex})
        return ChatResult(
            generations=[
                ChatGeneration(message=AIMessage(content=msg.get("content") or "", tool_calls=calls))
            ]
        )


def chat_model_from_settings(settings: Settings) -> BaseChatModel:
    """The planner's chat model from one setting, ``GEOSEARCH_LLM_CHAT_MODEL``:

    * ``provider:model`` (``anthropic:claude-sonnet-4-5``, ``ollama:llama3.1``, ``openai:gpt-4o``):
      LangChain's ``init_chat_model`` (``pip install "geosearch[agent]"`` plus the provider's
      package), with ``GEOSEARCH_LLM_BASE_URL`` / ``GEOSEARCH_LLM_API_KEY`` passed on when set;
    * ``package.module:factory``: a callable returning any LangChain chat model;
    * unset: the built-in client for an OpenAI-compatible endpoint at ``GEOSEARCH_LLM_BASE_URL``.
    """
    spec = (settings.llm_chat_model or "").strip()
    if spec:
        return _chat_model_from_spec(spec, settings)
    if not settings.llm_base_url:
        raise GeoSearchError(
            "the LLM planner needs a model: set GEOSEARCH_LLM_CHAT_MODEL (e.g. anthropic:claude-sonnet-4-5, "
            "ollama:llama3.1) or GEOSEARCH_LLM_BASE_URL and GEOSEARCH_LLM_MODEL (an OpenAI-compatible endpoint)"
        )
    return OpenAICompatChat(
        base_url=settings.llm_base_url, model=settings.llm_model or "default", api_key=settings.llm_api_key
    )


def _chat_model_from_spec(spec: str, settings: Settings) -> BaseChatModel:
    import importlib

    left, sep, right = spec.partition(":")
    if not sep or not left or not right:
        raise GeoSearchError(
            f"GEOSEARCH_LLM_CHAT_MODEL={spec!r}: give provider:model (anthropic:claude-sonnet-4-5) "
            "or package.module:factory"
        )
    if "." in left:  # an import path to a factory
        try:
            factory = getattr(importlib.import_module(left), right)
        except (ImportError, AttributeError) as exc:
            raise GeoSearchError(f"GEOSEARCH_LLM_CHAT_MODEL={spec!r}: cannot import it ({exc})") from exc
        model = factory()
    else:
        try:
            from langchain.chat_models import init_chat_model
        except ImportError as exc:
            raise GeoSearchError(
                f'GEOSEARCH_LLM_CHAT_MODEL={spec!r} needs LangChain: pip install "geosearch[agent]" '
                f"(and the provider's package, e.g. langchain-{left.replace('_', '-')})"
            ) from exc
        kw = {}
        if settings.llm_base_url:
            kw["base_url"] = settings.llm_base_url
        if settings.llm_api_key:
            kw["api_key"] = settings.llm_api_key
        try:
            model = init_chat_model(right, model_provider=left, temperature=0, **kw)
        except ImportError as exc:
            raise GeoSearchError(
                f"GEOSEARCH_LLM_CHAT_MODEL={spec!r}: install the provider's package ({exc})"
            ) from exc
        except ValueError as exc:
            raise GeoSearchError(f"GEOSEARCH_LLM_CHAT_MODEL={spec!r}: {exc}") from exc
    if not isinstance(model, BaseChatModel):
        raise GeoSearchError(f"GEOSEARCH_LLM_CHAT_MODEL={spec!r} did not give a LangChain chat model")
    return model
