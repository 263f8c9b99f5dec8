"""A scripted reward endpoint on loopback, for tests of `HTTPReward` (and the RL stages) over real HTTP.

`POST /` with {ids, prompts, completions} answers {rewards: [...]}, one per completion, from `score(completion)`
(default: the share of words equal to `target`). Scripted failures: the first `fail_first` requests get HTTP 500;
a completion containing `<<null>>` gets a null reward; with `broken` every reply is `{"oops": 1}`. Requests are
recorded; each takes `delay_s`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from loopback import LoopbackServer


def share_of(target: str) -> Callable[[str], float]:
    def score(text: str) -> float:
        words = text.split()
        return sum(w == target for w in words) / len(words) if words else 0.0
    return score


class RewardServer(LoopbackServer):
    """`with RewardServer(target="apples") as server:` ... `server.url`."""

    def __init__(self, target: str = "apples", fail_first: int = 0, delay_s: float = 0.0, broken: bool = False,
                 score: Callable[[str], float] | None = None):
        super().__init__()
        self.score = score or share_of(target)
        self.fail_first, self.delay_s, self.broken = fail_first, delay_s, broken

    def handle(self, method: str, path: str, body: dict, headers: dict) -> tuple[int, dict, dict]:
        if method != "POST":
            return 405, {"error": "POST a batch"}, {}
        time.sleep(self.delay_s)
        with self._lock:
            n = len(self.requests)
        if n <= self.fail_first:
            return 500, {"error": "scripted failure"}, {}
        if self.broken:
            return 200, {"oops": 1}, {}
        return 200, {"rewards": [None if "<<null>>" in c else self.score(c) for c in body["completions"]]}, {}
