"""The model behind `mixtune serve` and `mixtune chat`: loading, prompt rendering, and batched generation.

Generation is `mixtune.evaluate.generate.generate_details` (transformers `generate` with the KV cache, left padding,
stop strings), the code the in-process evaluation backend runs; nothing here decodes on its own.

Batching (`BatchEngine`): requests go into a queue; one worker thread takes the oldest pending request, waits
`window_s` (10 ms) for more to arrive, and runs one `generate` call over every pending request that shares its
sampling settings (`Sampling.batch_key`), up to `max_batch` rows (a request with `n` choices or a list of prompts
is several rows; a single request larger than `max_batch` still runs, `generate` splits it). Compatible means the
same prompt kind (chat or raw completion), `max_tokens` and stop strings, plus for sampling the same temperature
and top_p. Greedy requests batch together whatever top_p and seed they carry (greedy ignores both); a sampled
request with a `seed` runs alone, so it gives the same texts whenever it is sent (`generate` seeds each call with
`seed`; batch companions would change the random draws). `generate` takes one `max_new_tokens` and one stop list
per call, hence those are part of the key. Left padding keeps greedy texts the same alone or batched (tested). An
exception inside a `generate` call fails that call's requests and the worker goes on with the next.
"""

from __future__ import annotations

import itertools
import logging
import queue
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mixtune.data.templates import render_prompt, stop_strings
from mixtune.evaluate.generate import Generated, generate_details
from mixtune.model.load import ModelLoadError, load_checkpoint, load_tokenizer
from mixtune.serve.resolve import ModelSource, ServeError, resolve_source, resolve_template

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------- loading
@dataclass
class LoadedModel:
    """A loaded model with its tokenizer and chat template (a name of `mixtune.data.templates.TEMPLATES`)."""

    model: Any
    tokenizer: Any
    source: ModelSource
    template: str
    template_why: str
    template_stop: list[str]
    """Strings that end an assistant turn in this template (added to every chat request's stop strings)."""
    context: int | None
    """max_position_embeddings: prompt + max_tokens must fit in it."""

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """The generation prompt of a conversation, exactly as the in-process evaluation backend renders it."""
        return render_prompt(list(messages), self.tokenizer, self.template)

    def count_tokens(self, text: str, add_special_tokens: bool) -> int:
        return len(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def load_served(path: str | Path, template: str | None = None, device: str | None = None) -> LoadedModel:
    """Load the model of a run folder / model folder with the template `resolve_template` picks."""
    source = resolve_source(path)
    try:
        tokenizer = load_tokenizer(source.model_dir)
        chosen, why = resolve_template(source, tokenizer, template)
        model = load_checkpoint(source.model_dir)
    except ModelLoadError as e:
        raise ServeError(str(e)) from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return LoadedModel(model, tokenizer, source, chosen, why, list(stop_strings(chosen, tokenizer)), context)


# ------------------------------------------------------------------------------------------------------ batching
@dataclass(frozen=True)
class Sampling:
    """The decoding settings of one request (shared by all its rows)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    add_special_tokens: bool = False
    """False for chat prompts (the template holds the special tokens), True for raw completions (BOS added, as
    the evaluation backend's `complete`)."""

    def batch_key(self, job_id: int) -> tuple:
        """Requests with equal keys run in one `generate` call."""
        shared = (self.add_special_tokens, self.max_new_tokens, self.stop)
        if self.temperature == 0:
            return (*shared, "greedy")
        if self.seed is not None:
            return (*shared, "seeded", job_id)
        return (*shared, self.temperature, self.top_p)


@dataclass
class Job:
    prompts: list[str]
    sampling: Sampling
    future: Future = field(default_factory=Future)
    id: int = 0


class BatchEngine:
    """A request queue and one worker thread that batches compatible requests into single `generate` calls."""

    def __init__(self, loaded: LoadedModel, max_batch: int = 16, window_s: float = 0.01):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.loaded, self.max_batch, self.window_s = loaded, max_batch, window_s
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._pending: list[Job] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "rows": 0, "generate_calls": 0, "failed_calls": 0, "cancelled": 0,
                      "max_requests_per_call": 0, "max_rows_per_call": 0, "generate_seconds": 0.0}
        self._worker = threading.Thread(target=self._run, name="mixtune-serve-worker", daemon=True)
        self._worker.start()

    def submit(self, prompts: Sequence[str], sampling: Sampling) -> Future:
        """A future of `list[Generated]`, one per prompt, in order."""
        job = Job(list(prompts), sampling, id=next(self._ids))
        self._queue.put(job)
        return job.future

    def close(self, timeout_s: float = 10.0) -> None:
        self._queue.put(None)
        self._worker.join(timeout=timeout_s)

    # ------------------------------------------------------------------------------------------------ worker
    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            self._execute(batch)

    def _take_batch(self) -> list[Job] | None:
        """The oldest pending job and every compatible one that arrived within the window, up to max_batch rows."""
        if not self._pending:
            job = self._queue.get()
            if job is None:
                return None
            self._pending.append(job)
        deadline = time.monotonic() + self.window_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                job = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # seen again once the pending jobs are done
                break
            self._pending.append(job)
        key = self._pending[0].sampling.batch_key(self._pending[0].id)
        batch, rest, rows = [], [], 0
        for job in self._pending:
            fits = not batch or rows + len(job.prompts) <= self.max_batch
            if fits and job.sampling.batch_key(job.id) == key:
                batch.append(job)
                rows += len(job.prompts)
            else:
                rest.append(job)
        self._pending = rest
        return batch

    def _execute(self, batch: list[Job]) -> None:
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]  # timed-out waiters cancel
        with self._lock:
            self.stats["cancelled"] += len(batch) - len(live)
        if not live:
            return
        s = live[0].sampling
        prompts = [p for job in live for p in job.prompts]
        # An unseeded sampled batch still needs a seed for generate: a fresh one per call.
        seed = s.seed if s.seed is not None else random.randrange(2**31)
        t0 = time.perf_counter()
        try:
            out = generate_details(self.loaded.model, self.loaded.tokenizer, prompts, max_new_tokens=s.max_new_tokens,
                                   temperature=s.temperature, top_p=s.top_p, stop=list(s.stop),
                                   batch_size=self.max_batch, seed=seed, add_special_tokens=s.add_special_tokens,
                                   progress=False)
        except Exception as e:  # one failed call must not stop the server: its requests get a 500
            log.exception("generate failed for %d request(s)", len(live))
            with self._lock:
                self.stats["failed_calls"] += 1
            for job in live:
                job.future.set_exception(GenerationError(f"generation failed: {type(e).__name__}: {e}"))
            return
        seconds = time.perf_counter() - t0
        self._record(len(live), len(prompts), seconds)
        log.info("generate: %d request(s), %d row(s), %.2f s", len(live), len(prompts), seconds)
        start = 0
        for job in live:
            job.future.set_result(out[start:start + len(job.prompts)])
            start += len(job.prompts)

    def _record(self, n_requests: int, n_rows: int, seconds: float) -> None:
        with self._lock:
            st = self.stats
            st["requests"] += n_requests
            st["rows"] += n_rows
            st["generate_calls"] += 1
            st["max_requests_per_call"] = max(st["max_requests_per_call"], n_requests)
            st["max_rows_per_call"] = max(st["max_rows_per_call"], n_rows)
            st["generate_seconds"] = round(st["generate_seconds"] + seconds, 3)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.stats)


class GenerationError(RuntimeError):
    """A `generate` call that raised; every request of that call fails with it."""


__all__ = ["BatchEngine", "Generated", "GenerationError", "LoadedModel", "Sampling", "load_served"]
