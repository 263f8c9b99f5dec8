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
import time

from loopback import LoopbackServer

VERDICT = re.compile(r"<<verdict:(.*?)>>", re.DOTALL)
FAIL = re.compile(r"<<fail:(\d{3})>>")
ALWAYS = re.compile(r"<<always:(\d{3})>>")


class JudgeServer(LoopbackServer):
    """Start with `with JudgeServer() as server:`; `server.base_url` ends in /v1."""

    def __init__(self, delay_s: float = 0.02, retry_after: str = "0"):
        super().__init__()
        self.delay_s = delay_s
        self.retry_after = retry_after
        self.in_flight = 0
        self.max_in_flight = 0
        self._failed_once: set[str] = set()

    def handle(self, method: str, path: str, body: dict, headers: dict) -> tuple[int, dict, dict]:
        if method != "POST" or path.rstrip("/") != "/v1/chat/completions":
            return 404, {"error": {"message": f"no route {method} {path}"}}, {}
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay_s)
            return self.respond(body)
        finally:
            with self._lock:
                self.in_flight -= 1

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
