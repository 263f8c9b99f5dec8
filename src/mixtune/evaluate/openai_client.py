"""A small client for OpenAI-compatible `/chat/completions` endpoints (judges and served models).

Ours rather than the `openai` package: we need exactly one endpoint, a hard concurrency limit shared by every caller
thread, retries that honour `Retry-After`, and no extra dependency; httpx does the HTTP. The client is thread-based
(a pool of `concurrency` workers and a semaphore around each request), so sync code such as the evaluation runner
can call it without an event loop.

Retried (exponential backoff with jitter, `backoff_s * 2**attempt`, capped at `max_backoff_s`): connection errors,
timeouts, HTTP 429 and 5xx. `Retry-After` (seconds) replaces the computed delay when present. Other 4xx responses
fail at once: a wrong model name or key does not get better by waiting.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx

from mixtune.errors import UserError

if TYPE_CHECKING:
    from typing_extensions import Self

Message = dict[str, str]

RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


class ChatError(UserError, RuntimeError):
    """A request that failed for good (non-retryable status, bad body, or retries exhausted): when nothing handles it
    per sample, the command stops with this one line (the endpoint and the last error), exit 2."""


class ServerUnreachableError(ChatError):
    """The endpoint does not answer, or refuses our key: found by `ChatClient.check` before any generation."""


def _retry_after_s(response: httpx.Response) -> float | None:
    """Seconds from a `Retry-After` header; HTTP-date values are ignored (rare on these servers)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class ChatClient:
    """Chat completions against `base_url` (…/v1) for one `model`.

    `api_key` wins over `api_key_env`; with neither set no Authorization header is sent (local servers).
    At most `concurrency` requests are in flight at once across all threads using this client.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        api_key: str | None = None,
        concurrency: int = 4,
        max_retries: int = 5,
        timeout_s: float = 60.0,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.completions_url = self.base_url + "/completions"  # raw prompts: no chat template
        self.model = model
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        key = api_key if api_key is not None else (os.environ.get(api_key_env) if api_key_env else None)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._http = httpx.Client(headers=headers, timeout=timeout_s, limits=limits)
        self._slots = threading.BoundedSemaphore(concurrency)
        self.n_requests = 0  # HTTP requests sent, retries included (for logs and tests)
        self._count_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------ requests
    def complete(
        self,
        messages: Sequence[Message],
        *,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> str:
        """The assistant text for one conversation; raises ChatError when it cannot be had."""
        body = self._body(temperature, max_tokens, top_p, stop, seed)
        body["messages"] = list(messages)
        return _content(self._post_with_retries(body))

    def complete_logprobs(self, messages: Sequence[Message], *, max_tokens: int = 1, top_logprobs: int = 20,
                          seed: int | None = None) -> list[tuple[str, dict[str, float]]]:
        """Greedy reply tokens with their top log-probs (`logprobs: true`): per generated position, (the token,
        {candidate token: log-prob} of the `top_logprobs` most likely). Raises ChatError when the server sends
        none (it does not support logprobs)."""
        body = self._body(0.0, max_tokens, None, None, seed)
        body.update(messages=list(messages), logprobs=True, top_logprobs=top_logprobs)
        data = self._post_with_retries(body)
        try:
            positions = data["choices"][0]["logprobs"]["content"]
            return [(p["token"], {c["token"]: float(c["logprob"]) for c in p["top_logprobs"]}) for p in positions]
        except (KeyError, IndexError, TypeError):
            raise ChatError(f"{self.url}: no logprobs in the reply (does the server support logprobs: true?): "
                            f"{str(data)[:200]}") from None

    def complete_text(self, prompt: str, *, temperature: float = 0.0, max_tokens: int = 1024,
                      top_p: float | None = None, stop: Sequence[str] | None = None, seed: int | None = None) -> str:
        """The continuation of a raw prompt through `/completions` (no chat template), as a completion-style task
        prompts an in-process model."""
        body = self._body(temperature, max_tokens, top_p, stop, seed)
        body["prompt"] = prompt
        return _text(self._post_with_retries(body, self.completions_url))

    def _body(self, temperature: float, max_tokens: int, top_p: float | None, stop: Sequence[str] | None,
              seed: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "temperature": temperature, "max_tokens": max_tokens}
        if top_p is not None and top_p < 1.0:
            body["top_p"] = top_p
        if stop:
            body["stop"] = list(stop)[:4]  # the OpenAI API accepts at most 4 stop sequences
        if seed is not None:
            body["seed"] = seed
        return body

    def complete_many(
        self, conversations: Sequence[Sequence[Message]] | Sequence[str], *, return_errors: bool = False,
        raw: bool = False, **kwargs: Any
    ) -> list[str | ChatError]:
        """`complete` for each conversation (`complete_text` for each prompt with `raw`), `concurrency` at a time,
        in input order.

        With `return_errors` a failed conversation yields its ChatError in place of the text instead of raising.
        """
        def one(conv: Any) -> str | ChatError:
            try:
                return self.complete_text(conv, **kwargs) if raw else self.complete(conv, **kwargs)
            except ChatError as e:
                if return_errors:
                    return e
                raise

        if not conversations:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations))) as pool:
            return list(pool.map(one, conversations))

    def _post_with_retries(self, body: dict[str, Any], url: str | None = None) -> dict[str, Any]:
        url = url or self.url
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            delay = None
            try:
                with self._slots:  # the slot is held for the request only, never while sleeping
                    with self._count_lock:
                        self.n_requests += 1
                    response = self._http.post(url, json=body)
            except httpx.TransportError as e:  # connect/read errors and timeouts: transient
                last = f"{type(e).__name__}: {e}"
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError:
                        raise ChatError(f"{url}: response is not JSON: {response.text[:200]!r}") from None
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code not in RETRY_STATUS:
                    raise ChatError(f"{url}: {last}")
                delay = _retry_after_s(response)
            if attempt == self.max_retries:
                break
            if delay is None:
                delay = self.backoff_s * 2**attempt * (0.5 + random.random() / 2)  # jitter spreads retry storms
            time.sleep(min(delay, self.max_backoff_s))
        raise ChatError(f"{url}: gave up after {self.max_retries + 1} attempts; last error: {last}")

    def check(self, timeout_s: float = 3.0, fix: str = "start the server or fix its base URL") -> None:
        """One GET of `<base_url>/models` with a short timeout, before any real request: a server that does not
        answer (or rejects the key) fails in seconds instead of after every retry of every request. Any other
        answer, a 404 or 501 of a server without that route included, counts as reachable."""
        url = self.base_url + "/models"
        try:
            response = self._http.get(url, timeout=timeout_s)
        except httpx.TransportError as e:
            raise ServerUnreachableError(f"{url}: no answer within {timeout_s:g} s ({type(e).__name__}: {e}); "
                                         f"{fix}") from None
        if response.status_code in (401, 403):
            raise ServerUnreachableError(f"{url}: HTTP {response.status_code}, the server refuses the API key; "
                                         f"{fix}")

    # ---------------------------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _content(data: dict[str, Any]) -> str:
    """`choices[0].message.content` of a chat completion, '' when the server sent null content."""
    try:
        return data["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        raise ChatError(f"unexpected chat completion body: {str(data)[:200]}") from None


def _text(data: dict[str, Any]) -> str:
    """`choices[0].text` of a text completion."""
    try:
        return data["choices"][0]["text"] or ""
    except (KeyError, IndexError, TypeError):
        raise ChatError(f"unexpected completion body: {str(data)[:200]}") from None
