"""A scripted OpenAI-compatible chat server on 127.0.0.1 (``POST /v1/chat/completions``), for tests
that drive the LLM planner or an agent through real HTTP and real tool calls without any model.

``script`` is a list of steps; each step is a function of the request's messages that returns the
assistant message (``{"content": ..., "tool_calls": [...]}``), so a step can read the previous tool
results. Every request is recorded in ``requests``. After the script ends, a plain reply is sent."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Step = Callable[[list[dict]], dict]


def tool_call(name: str, args: dict) -> dict:
    return {
        "id": "call_" + uuid.uuid4().hex[:12],
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(args)},
    }


def last_tool_result(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m.get("role") == "tool":
            c = m.get("content")
            return c if isinstance(c, str) else json.dumps(c)
    raise AssertionError("no tool result in the conversation")


class FakeOpenAI:
    def __init__(self, script: list[Step]):
        self.script = list(script)
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self.send_error(404)
                    return
                msg = fake._reply(body)
                out = {
                    "id": "chatcmpl-" + uuid.uuid4().hex[:12],
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "fake"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", **msg},
                            "finish_reason": "tool_calls" if msg.get("tool_calls") else "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
                data = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _reply(self, body: dict) -> dict:
        with self._lock:
            self.requests.append(body)
            step = self.script.pop(0) if self.script else None
        if step is None:
            return {"content": "done", "tool_calls": None}
        msg = step(body.get("messages") or [])
        msg.setdefault("content", "")
        return msg

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
