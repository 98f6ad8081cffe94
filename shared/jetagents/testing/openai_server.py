"""A real HTTP server speaking the OpenAI chat-completions protocol, with scripted answers.

For tests and benchmarks of model clients (pydantic-ai's ``OpenAIChatModel`` over the
``openai`` SDK and its HTTP stack): nothing of the client is replaced. Answers come from a
script; the answer to a request is chosen by how many assistant messages its conversation
already holds, so a request sent again (a retry, a re-run after a crash) gets the same answer.

It counts what happened where the host cannot tamper with it: ``received[i]``/``answered[i]``
per answer index, and ``effects`` that tools report (``POST /effects/<name>``). A test can hold
an answer (``hold(i)``): the request waits in the server until ``release(i)``, or is dropped
unanswered by ``abandon()`` (its client was killed meanwhile). ``fail_next(n)`` answers the next
``n`` chat requests with HTTP 500.

>>> with ScriptedChatServer([[("lookup", {"q": "x"})], "done"]) as server:  # doctest: +SKIP
...     server.base_url  # http://127.0.0.1:<port>/v1
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# one scripted answer: text, or tool calls (name, arguments)
Answer = str | list[tuple[str, dict[str, Any]]]


class ScriptedChatServer:
    def __init__(self, script: list[Answer], *, model: str = "scripted", tokens: tuple[int, int] = (10, 5)) -> None:
        self.script = script
        self.model = model
        self.tokens = tokens
        self.received: Counter[int] = Counter()
        self.answered: Counter[int] = Counter()
        self.effects: Counter[str] = Counter()
        self.effect_keys: dict[str, list[str]] = {}
        self.requests: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._held: set[str] = set()  # "chat:<i>" or "effect:<name>"
        self._waiting: dict[int, str] = {}  # serial -> what it waits for
        self._abandoned: set[int] = set()
        self._serial = 0
        self._fail = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> ScriptedChatServer:
        handler = _handler(self)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="scripted-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.abandon()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ScriptedChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # -- control ---------------------------------------------------------------------------
    def hold(self, what: str) -> None:
        """Hold ``chat:<i>`` (the i-th answer) or ``effect:<name>`` (a tool's report) until released."""
        with self._cond:
            self._held.add(what)

    def release(self, what: str) -> None:
        with self._cond:
            self._held.discard(what)
            self._cond.notify_all()

    def waiting(self, what: str) -> int:
        """How many requests wait on ``what`` now."""
        with self._cond:
            return sum(1 for w in self._waiting.values() if w == what)

    def abandon(self) -> None:
        """Drop every waiting request without an answer (its client is gone)."""
        with self._cond:
            self._abandoned.update(self._waiting)
            self._cond.notify_all()

    def fail_next(self, n: int) -> None:
        with self._cond:
            self._fail = n

    # -- what the handler calls ------------------------------------------------------------
    def _wait(self, what: str) -> bool:
        """False: abandoned, answer nothing."""
        with self._cond:
            self._serial += 1
            serial = self._serial
            self._waiting[serial] = what
            try:
                while what in self._held and serial not in self._abandoned:
                    self._cond.wait(0.5)
                return serial not in self._abandoned
            finally:
                del self._waiting[serial]
                self._abandoned.discard(serial)

    def _chat(self, body: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        messages = body.get("messages", [])
        index = sum(1 for m in messages if m.get("role") == "assistant")
        with self._cond:
            self.received[index] += 1
            self.requests.append(body)
            if self._fail > 0:
                self._fail -= 1
                return 500, {"error": {"message": "scripted failure", "type": "server_error"}}
        if not self._wait(f"chat:{index}"):
            return 0, None
        answer = self.script[min(index, len(self.script) - 1)]
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if isinstance(answer, str):
            message["content"] = answer
            finish = "stop"
        else:
            message["tool_calls"] = [
                {"id": f"call_{index}_{k}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
                for k, (n, a) in enumerate(answer)
            ]
            finish = "tool_calls"
        pin, pout = self.tokens
        with self._cond:
            self.answered[index] += 1
        return 200, {
            "id": f"chatcmpl-{index}",
            "object": "chat.completion",
            "created": 1764480000,
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": pin, "completion_tokens": pout, "total_tokens": pin + pout},
        }

    def _effect(self, name: str, key: str) -> bool:
        if not self._wait(f"effect:{name}"):
            return False
        with self._cond:
            self.effects[name] += 1
            self.effect_keys.setdefault(name, []).append(key)
        return True


def _handler(server: ScriptedChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.path.endswith("/chat/completions"):
                status, payload = server._chat(json.loads(raw or b"{}"))
            elif self.path.startswith("/effects/"):
                ok = server._effect(self.path.removeprefix("/effects/"), raw.decode())
                status, payload = (200, {"ok": True}) if ok else (0, None)
            else:
                status, payload = 404, {"error": {"message": "not found"}}
            if payload is None:  # abandoned: close without an answer
                self.close_connection = True
                return
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def report_effect(base_url: str, name: str, key: str, timeout_s: float = 60.0) -> None:
    """What a tool calls (in a thread) to report its effect to the server: blocking."""
    import urllib.request

    root = base_url.removesuffix("/v1")
    req = urllib.request.Request(f"{root}/effects/{name}", data=key.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        resp.read()
