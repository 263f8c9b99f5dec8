"""A scripted OpenAI-compatible labeller on loopback: chat completions with `logprobs`, for tests of the endpoint
labeller over real HTTP.

`POST /v1/chat/completions` calls `script(user_text)` -> a list of per-position probability dicts ({token: p}); the
reply's tokens are the argmax of each position (greedy), and each position's `top_logprobs` are the log of its dict
(at most `top_logprobs` entries, most likely first), as the OpenAI API returns them. `GET /v1/models` answers 200
(the client's reachability check). Bodies are recorded. Start with `with LabellerServer(script) as server:`; the
server thread is joined with a timeout on exit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from loopback import LoopbackServer


class LabellerServer(LoopbackServer):
    def __init__(self, script: Callable[[str], list[dict[str, float]]]):
        super().__init__()
        self.script = script

    def handle(self, method: str, path: str, body: dict, headers: dict) -> tuple[int, dict, dict]:
        if method == "GET":
            return 200, {"data": [{"id": "labeller"}]}, {}
        return 200, self.respond(body), {}

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
