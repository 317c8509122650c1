"""Optional LLM access over an OpenAI-compatible ``/chat/completions`` endpoint (httpx): a plain
completion function for the query parser. Configured with ``GEOSEARCH_LLM_BASE_URL`` (e.g.
``http://127.0.0.1:11434/v1``), ``GEOSEARCH_LLM_MODEL`` and optionally ``GEOSEARCH_LLM_API_KEY``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from geosearch.errors import GeoSearchError
from geosearch.settings import Settings


def _headers(api_key: str | None) -> dict[str, str]:
    h = {"Content-Type": "application/json"}
    if api_key:
        h["Authorization"] = f"Bearer {api_key}"
    return h


def chat_completion(
    base_url: str,
    model: str,
    messages: list[dict],
    *,
    api_key: str | None = None,
    tools: list[dict] | None = None,
    timeout: float = 60.0,
) -> dict:
    """POST /chat/completions; returns the first choice's message (dict)."""
    body: dict[str, Any] = {"model": model, "messages": messages, "temperature": 0}
    if tools:
        body["tools"] = tools
    try:
        r = httpx.post(
            base_url.rstrip("/") + "/chat/completions", json=body, headers=_headers(api_key), timeout=timeout
        )
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
        return (
            chat_completion(base, model, [{"role": "user", "content": prompt}], api_key=key).get("content")
            or ""
        )

    return complete
