"""A scripted reward endpoint on loopback, for tests of `HTTPReward` (and the RL stages) over real HTTP.

`POST /` with {ids, prompts, completions} answers {rewards: [...]}, one per completion, from `score(completion)`
(default: the share of words equal to `target`). Scripted failures: the first `fail_first` requests get HTTP 500;
a completion containing `<<null>>` gets a null reward; with `broken` every reply is `{"oops": 1}`. Requests are
recorded; each takes `delay_s`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self


def share_of(target: str) -> Callable[[str], float]:
    def score(text: str) -> float:
        words = text.split()
        return sum(w == target for w in words) / len(words) if words else 0.0
    return score


class RewardServer:
    """`with RewardServer(target="apples") as server:` ... `server.url`."""

    def __init__(self, target: str = "apples", fail_first: int = 0, delay_s: float = 0.0, broken: bool = False,
                 score: Callable[[str], float] | None = None):
        self.score = score or share_of(target)
        self.fail_first, self.delay_s, self.broken = fail_first, delay_s, broken
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def respond(self, body: dict) -> tuple[int, dict]:
        with self._lock:
            self.requests.append(body)
            n = len(self.requests)
        if n <= self.fail_first:
            return 500, {"error": "scripted failure"}
        if self.broken:
            return 200, {"oops": 1}
        return 200, {"rewards": [None if "<<null>>" in c else self.score(c) for c in body["completions"]]}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                time.sleep(server.delay_s)
                status, reply = server.respond(body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler
