"""A scripted OpenAI-compatible labeller on loopback: chat completions with `logprobs`, for tests of the endpoint
labeller over real HTTP.

`POST /v1/chat/completions` calls `script(user_text)` -> a list of per-position probability dicts ({token: p}); the
reply's tokens are the argmax of each position (greedy), and each position's `top_logprobs` are the log of its dict
(at most `top_logprobs` entries, most likely first), as the OpenAI API returns them. `GET /v1/models` answers 200
(the client's reachability check). Bodies are recorded. Start with `with LabellerServer(script) as server:`; the
server thread is joined with a timeout on exit.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self


class LabellerServer:
    def __init__(self, script: Callable[[str], list[dict[str, float]]]):
        self.script = script
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def respond(self, body: dict) -> dict:
        text = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        positions = self.script(text)[: body.get("max_tokens", 1)]
        content = []
        for probs in positions:
            top = sorted(probs.items(), key=lambda kv: -kv[1])[: body.get("top_logprobs", 0)]
            best = max(probs, key=probs.get)
            content.append({"token": best, "logprob": math.log(probs[best]),
                            "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in top]})
        message = "".join(c["token"] for c in content)
        choice = {"index": 0, "message": {"role": "assistant", "content": message}, "finish_reason": "length"}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": content}
        return {"id": "chatcmpl-labeller", "object": "chat.completion", "choices": [choice]}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._send(200, {"data": [{"id": "labeller"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.requests.append(body)
                self._send(200, server.respond(body))

            def _send(self, status: int, reply: dict) -> None:
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
