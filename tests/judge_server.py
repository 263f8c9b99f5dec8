"""A scripted OpenAI-compatible judge server on loopback, for tests of the real client over real HTTP.

`POST /v1/chat/completions` answers from directives written into the last user message (the judged answer ends up
there, so a test steers the verdict through the fake model's answer text):

- `<<verdict:TEXT>>`  the judgment is `TEXT` (e.g. `Rating: [[7]]`, `Rating: [8]`, `no score`); the last directive in
  the message wins, so a multi-turn prompt is steered by the second answer. Without one: `Rating: [[5]]`.
- `<<fail:CODE>>`     the first request carrying this exact body fails with HTTP CODE (429 sends `Retry-After`).
- `<<always:CODE>>`   every request fails with HTTP CODE.
- `<<echo>>`          the judgment is the request's last user message itself (for generation-backend tests).

The server counts requests, records bodies and headers, and tracks the most requests in flight at once; each
request takes `delay_s` so that concurrency is observable.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self


VERDICT = re.compile(r"<<verdict:(.*?)>>", re.DOTALL)
FAIL = re.compile(r"<<fail:(\d{3})>>")
ALWAYS = re.compile(r"<<always:(\d{3})>>")


class JudgeServer:
    """Start with `with JudgeServer() as server:`; `server.base_url` ends in /v1."""

    def __init__(self, delay_s: float = 0.02, retry_after: str = "0"):
        self.delay_s = delay_s
        self.retry_after = retry_after
        self.requests: list[dict] = []  # bodies of every request, failed ones included
        self.headers: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._failed_once: set[str] = set()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def n_requests(self) -> int:
        return len(self.requests)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------------------------------------ behaviour
    def respond(self, body: dict) -> tuple[int, dict, dict]:
        """(status, JSON body, extra headers) for one request body."""
        user = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"]
        text = user[-1] if user else ""
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        fail = FAIL.search(text)
        with self._lock:
            first = key not in self._failed_once
            self._failed_once.add(key)
        always = ALWAYS.search(text)
        if always or (fail and first):
            code = int((always or fail).group(1))
            headers = {"Retry-After": self.retry_after} if code == 429 else {}
            return code, {"error": {"message": f"scripted {code}"}}, headers
        if "<<echo>>" in text:
            content = text
        else:
            verdicts = VERDICT.findall(text)
            content = verdicts[-1] if verdicts else "Rating: [[5]]"
        reply = {
            "id": "chatcmpl-test", "object": "chat.completion", "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        }
        return 200, reply, {}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}}, {})
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay_s)
                    status, reply, headers = server.respond(body)
                finally:
                    with server._lock:
                        server.in_flight -= 1
                self._send(status, reply, headers)

            def _send(self, status: int, reply: dict, headers: dict) -> None:
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler
