"""The OpenAI-compatible HTTP API of `mixtune serve` (FastAPI): `GET /v1/models`, `POST /v1/chat/completions`,
`POST /v1/completions`, plus `GET /v1/stats` (batching counters) and `GET /health`.

- Chat prompts are rendered with the served model's template and stop at the template's end-of-turn strings as
  well as the request's `stop`, as the in-process evaluation backend does, so `mixtune eval run` gives the same
  completions through the server (tested). Completion prompts are raw text with the tokenizer's BOS.
- Streaming (`stream: true`) sends server-sent events `data: {chunk}\\n\\n` ... `data: [DONE]\\n\\n`. The answer is
  generated whole (in a batch with the other requests, as without streaming) and then sent in token-sized chunks:
  batching wins over time-to-first-token on a shared model, and the streamed text equals the non-streamed one.
- Errors are OpenAI error objects `{"error": {message, type, param, code}}`: 400 for a malformed or unsupported
  request (pydantic's validation errors included; FastAPI's default would be a 422 of another shape), 404 for an
  unknown model or route, 429 with `Retry-After` above `max_concurrent` requests in flight, 504 past `timeout_s`
  (a request still queued is dropped; a `generate` call already running finishes), 500 when generation raised
  (the server goes on).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from jinja2 import TemplateError
from starlette.exceptions import HTTPException

from mixtune.serve import schema
from mixtune.serve.engine import BatchEngine, GenerationError, LoadedModel, Sampling

DEFAULT_CHAT_MAX_TOKENS = 1024  # chat without max_tokens: what is left of the context, at most this
DEFAULT_COMPLETION_MAX_TOKENS = 16  # the OpenAI API's default for /v1/completions


class ApiError(Exception):
    """An error answered as an OpenAI error object with HTTP `status`; the message starts with `param: ` when a
    request field is at fault (as pydantic's messages do)."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        message = f"{param}: {message}" if param else message
        super().__init__(message)
        self.status, self.body, self.headers = status, schema.error_body(message, type_, param, code), headers


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """(message, param) of the first pydantic error: `messages.0.role: Input should be 'system', ...`."""
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    if err.get("type") == "json_invalid":
        return f"request body is not valid JSON: {err.get('msg')}", None
    param = ".".join(loc) or None
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    return (f"{param}: {msg}" if param else msg) + more, param


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse(schema.error_body(message, param=param, code="invalid_value"), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return JSONResponse(schema.error_body(str(exc.detail), code=code), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(schema.error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"),
                            status_code=500)


class Server:
    """The request-side checks and bookkeeping around a `BatchEngine`."""

    def __init__(self, loaded: LoadedModel, engine: BatchEngine, served_name: str, max_concurrent: int,
                 timeout_s: float):
        self.loaded, self.engine, self.name = loaded, engine, served_name
        self.max_concurrent, self.timeout_s = max_concurrent, timeout_s
        self.created = int(time.time())
        self.counters = {"in_flight": 0, "max_in_flight": 0, "rejected_busy": 0, "timeouts": 0, "errors": 0}

    def check(self, body: schema.CommonFields) -> None:
        if body.model != self.name:
            raise ApiError(404, f"{body.model!r} is not served here; this server serves {self.name!r} "
                                f"(GET /v1/models)", param="model", code="model_not_found")
        if body.n > self.engine.max_batch:
            raise ApiError(400, f"{body.n} is more than this server's --max-batch {self.engine.max_batch}",
                           param="n", code="invalid_value")

    def max_tokens(self, n_prompt: int, requested: int | None, default: int) -> int:
        """`requested`, or the default that fits; 400 when the prompt plus max_tokens exceed the context."""
        context = self.loaded.context
        if context is None:
            return requested or default
        if n_prompt >= context:
            raise ApiError(400, f"the prompt is {n_prompt} tokens; the model's context is {context} tokens",
                           param="messages", code="context_length_exceeded")
        if requested is None:
            return min(default, context - n_prompt)
        if n_prompt + requested > context:
            raise ApiError(400, f"prompt ({n_prompt} tokens) + max_tokens ({requested}) = {n_prompt + requested} "
                                f"exceeds the model's context of {context} tokens; lower max_tokens",
                           param="max_tokens", code="context_length_exceeded")
        return requested

    async def run(self, prompts: list[str], sampling: Sampling) -> list[Any]:
        """Queue the rows, wait for their `Generated` results under the cap and the timeout."""
        c = self.counters
        if c["in_flight"] >= self.max_concurrent:
            c["rejected_busy"] += 1
            raise ApiError(429, f"server busy: {self.max_concurrent} requests in flight (--max-concurrent); "
                                f"retry later", "rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": "1"})
        c["in_flight"] += 1
        c["max_in_flight"] = max(c["max_in_flight"], c["in_flight"])
        try:
            future = self.engine.submit(prompts, sampling)
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except TimeoutError:
            c["timeouts"] += 1
            raise ApiError(504, f"no answer within {self.timeout_s:g} s (--timeout-s)", "timeout_error",
                           code="timeout") from None
        except GenerationError as e:
            c["errors"] += 1
            raise ApiError(500, str(e), "server_error") from None
        finally:
            c["in_flight"] -= 1

    def sampling(self, body: schema.CommonFields, max_tokens: int, chat: bool) -> Sampling:
        stop = [*self.loaded.template_stop, *body.stop] if chat else list(body.stop)
        greedy = body.temperature == 0
        return Sampling(max_new_tokens=max_tokens, temperature=body.temperature, top_p=1.0 if greedy else body.top_p,
                        stop=tuple(dict.fromkeys(stop)), seed=None if greedy else body.seed,
                        add_special_tokens=not chat)

    def pieces(self, text: str) -> list[str]:
        """`text` cut at its token boundaries (character offsets of the fast tokenizer); joined, they are `text`."""
        try:
            offsets = self.loaded.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ends = sorted({end for _, end in offsets["offset_mapping"] if 0 < end <= len(text)})
        except (NotImplementedError, KeyError, TypeError):  # slow tokenizers have no offsets: one chunk
            ends = []
        cuts = [0, *ends, len(text)]
        return [text[a:b] for a, b in itertools.pairwise(cuts) if b > a]


def _sse(events: list[dict[str, Any]]) -> StreamingResponse:
    async def stream() -> AsyncIterator[str]:
        for event in events:
            yield f"data: {json.dumps(event)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def create_app(loaded: LoadedModel, engine: BatchEngine, served_name: str, max_concurrent: int = 64,
               timeout_s: float = 300.0) -> FastAPI:
    """The FastAPI app serving `loaded` through `engine` under the model name `served_name`."""
    app = FastAPI(title="mixtune serve", docs_url=None, redoc_url=None)
    _install_error_handlers(app)
    srv = Server(loaded, engine, served_name, max_concurrent, timeout_s)
    app.state.server = srv
    model_card = {"id": served_name, "object": "model", "created": srv.created, "owned_by": "mixtune"}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != served_name:
            raise ApiError(404, f"{model_id!r} is not served here; this server serves {served_name!r}",
                           param="model", code="model_not_found")
        return model_card

    @app.get("/v1/stats")
    async def stats() -> dict[str, Any]:
        return {**engine.snapshot(), **srv.counters, "template": loaded.template, "max_batch": engine.max_batch}

    @app.post("/v1/chat/completions")
    async def chat(body: schema.ChatRequest) -> Any:
        srv.check(body)
        try:
            prompt = loaded.render([{"role": m.role, "content": m.text()} for m in body.messages])
        except TemplateError as e:
            raise ApiError(400, f"the chat template refused them: {e}", param="messages") from None
        n_prompt = loaded.count_tokens(prompt, add_special_tokens=False)
        max_tokens = srv.max_tokens(n_prompt, body.max_tokens, DEFAULT_CHAT_MAX_TOKENS)
        out = await srv.run([prompt] * body.n, srv.sampling(body, max_tokens, chat=True))
        rid, use = schema.new_id("chatcmpl"), schema.usage(n_prompt, sum(g.n_tokens for g in out))
        if not body.stream:
            return schema.chat_completion(rid, served_name, [(g.text, g.finish_reason) for g in out], use)
        events = []
        for i, g in enumerate(out):
            events.append(schema.chat_chunk(rid, served_name, i, {"role": "assistant", "content": ""}, None))
            events += [schema.chat_chunk(rid, served_name, i, {"content": p}, None) for p in srv.pieces(g.text)]
            events.append(schema.chat_chunk(rid, served_name, i, {}, g.finish_reason))
        if body.include_usage():
            events.append(schema.usage_chunk(rid, served_name, "chat.completion.chunk", use))
        return _sse(events)

    @app.post("/v1/completions")
    async def completions(body: schema.CompletionRequest) -> Any:
        srv.check(body)
        prompts = body.prompts()
        n_prompt = [loaded.count_tokens(p, add_special_tokens=True) for p in prompts]
        max_tokens = min(srv.max_tokens(n, body.max_tokens, DEFAULT_COMPLETION_MAX_TOKENS) for n in n_prompt)
        rows = [p for p in prompts for _ in range(body.n)]  # choice index = prompt index * n + k, as OpenAI
        out = await srv.run(rows, srv.sampling(body, max_tokens, chat=False))
        rid, use = schema.new_id("cmpl"), schema.usage(sum(n_prompt), sum(g.n_tokens for g in out))
        if not body.stream:
            return schema.text_completion(rid, served_name, [(g.text, g.finish_reason) for g in out], use)
        events = []
        for i, g in enumerate(out):
            events += [schema.text_chunk(rid, served_name, i, p, None) for p in srv.pieces(g.text)]
            events.append(schema.text_chunk(rid, served_name, i, "", g.finish_reason))
        if body.include_usage():
            events.append(schema.usage_chunk(rid, served_name, "text_completion", use))
        return _sse(events)

    return app
