"""The scaffolding every scripted JSON server of the tests shares: one `ThreadingHTTPServer` on 127.0.0.1 (a free
port), started by `with` and stopped on exit with its thread joined in bounded time, each request's JSON body
recorded, and one JSON reply per request from the subclass's `handle`.

    class Echo(LoopbackServer):
        def handle(self, method, path, body, headers):
            return 200, {"you said": body}, {}
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self


class LoopbackServer:
    """`with Sub() as server:` ... `server.url` (root) or `server.base_url` (root + /v1, the OpenAI clients' base)."""

    JOIN_TIMEOUT_S = 5.0

    def __init__(self) -> None:
        self.requests: list[dict] = []  # POST bodies, in arrival order (failed ones included)
        self.headers: list[dict] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    # ------------------------------------------------------------------------------------------------ what to say
    def handle(self, method: str, path: str, body: dict, headers: dict) -> tuple[int, dict, dict]:
        """(status, JSON reply, extra headers) for one request; `body` is {} for a GET."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------------- the plumbing
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/"

    @property
    def base_url(self) -> str:
        return self.url + "v1"

    @property
    def n_requests(self) -> int:
        return len(self.requests)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=self.JOIN_TIMEOUT_S)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                self._send(*server.handle("GET", self.path, {}, dict(self.headers)))

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                self._send(*server.handle("POST", self.path, body, dict(self.headers)))

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
