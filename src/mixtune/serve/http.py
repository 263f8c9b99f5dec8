"""uvicorn on a socket we bind ourselves: a taken port fails before the model loads, `--port 0` picks a free port
whose number is known before serving starts, and tests and notebooks can run the server in a thread."""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from mixtune.serve.resolve import ServeError

if TYPE_CHECKING:
    from typing_extensions import Self


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port); ServeError with the reason when it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServeError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); "
                         f"choose another port (0 picks a free one)") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def uvicorn_server(app: Any, log_level: str = "info") -> Any:
    import uvicorn

    # timeout_graceful_shutdown: a stop does not wait forever on a client that keeps its connection open
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))


class ThreadedServer:
    """`app` served by uvicorn from a daemon thread: `with ThreadedServer(app) as s: ... s.base_url`."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.sock = bind(host, port)
        self.base_url = url_of(self.sock) + "/v1"
        self.server = uvicorn_server(app, log_level)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, timeout_s: float = 20.0) -> Self:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {self.base_url} did not start within {timeout_s:g} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=timeout_s)
        self.sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
