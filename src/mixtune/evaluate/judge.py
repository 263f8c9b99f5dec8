"""LLM-as-a-judge: FastChat single-answer grading prompts, rating parsing, and a disk cache of verdicts.

Follows FastChat `llm_judge` (common.py, `run_judge_single`): the judge sees `[system_prompt, user prompt_template
filled with the question/answer fields]`, is called at temperature 0 with max_tokens 2048, and the rating is the
first match of `\\[\\[(\\d+\\.?\\d*)\\]\\]`, else the first match of `\\[(\\d+\\.?\\d*)\\]`, else -1 (invalid). Invalid
verdicts are kept and counted, never dropped. Requests that fail after every retry are recorded as invalid with
their error and are not cached, so the next run asks again.

The cache is one JSON file per verdict, keyed by sha256 over (judge model, messages, temperature, max_tokens), so a
rerun with the same answers makes no request and a changed answer or judge makes a new one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixtune.evaluate.openai_client import ChatClient, ChatError, Message
from mixtune.jsonl import iter_jsonl
from mixtune.runs import atomic_write_json

ONE_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
ONE_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
INVALID = -1.0
JUDGE_MAX_TOKENS = 2048  # FastChat's value for single-answer grading


def parse_rating(judgment: str) -> float:
    """FastChat's rule: `[[x]]` first, then `[x]`; -1 when neither is present."""
    match = ONE_SCORE.search(judgment) or ONE_SCORE_BACKUP.search(judgment)
    return float(match.group(1)) if match else INVALID


@dataclass(frozen=True)
class JudgePrompt:
    """One entry of FastChat's judge_prompts.jsonl."""

    name: str
    system_prompt: str
    prompt_template: str
    output_format: str
    category: str = "general"

    def messages(self, **fields: str) -> list[Message]:
        """System + user messages with the template filled (`str.format`, as FastChat does)."""
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": self.prompt_template.format(**fields)},
        ]


def load_judge_prompts(path: str | Path) -> dict[str, JudgePrompt]:
    """name -> JudgePrompt from a FastChat judge_prompts.jsonl."""
    prompts = {}
    for _, row in iter_jsonl(path, what="judge prompts file"):
        prompts[row["name"]] = JudgePrompt(
            name=row["name"], system_prompt=row["system_prompt"], prompt_template=row["prompt_template"],
            output_format=row["output_format"], category=row.get("category", "general"),
        )
    return prompts


class VerdictCache:
    """One JSON file per key under `root/<key[:2]>/<key>.json`, written atomically (safe across threads)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError):  # a torn file cannot happen, but never trust a cache
            return None

    def put(self, key: str, record: dict[str, Any]) -> None:
        atomic_write_json(self._path(key), record)


def verdict_key(model: str, messages: Sequence[Message], temperature: float, max_tokens: int) -> str:
    blob = json.dumps({"model": model, "messages": list(messages), "temperature": temperature,
                       "max_tokens": max_tokens}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class Judge:
    """Rates conversations with an OpenAI-compatible judge model; results are dicts
    `{"rating": float (-1 invalid), "judgment": str, "cached": bool, "error": str | None}`.
    """

    def __init__(
        self,
        client: ChatClient,
        cache_dir: str | Path | None,
        *,
        temperature: float = 0.0,
        max_tokens: int = JUDGE_MAX_TOKENS,
    ):
        self.client = client
        self.model = client.model
        self.cache = VerdictCache(cache_dir) if cache_dir is not None else None
        self.temperature = temperature
        self.max_tokens = max_tokens

    @classmethod
    def from_config(cls, cfg: Any, *, backoff_s: float = 1.0) -> Judge:
        """Build from a `mixtune.config.JudgeConfig` (base URL, model, key env var, concurrency, retries, cache)."""
        client = ChatClient(
            cfg.base_url, cfg.model, api_key_env=cfg.api_key_env, concurrency=cfg.concurrency,
            max_retries=cfg.max_retries, timeout_s=cfg.timeout_s, backoff_s=backoff_s,
        )
        return cls(client, cfg.cache_dir)

    def rate_many(self, conversations: Sequence[Sequence[Message]]) -> list[dict[str, Any]]:
        """A verdict per conversation, in order; cached ones make no request, the rest go out concurrently."""
        keys = [verdict_key(self.model, c, self.temperature, self.max_tokens) for c in conversations]
        verdicts: list[dict[str, Any] | None] = [self.cache.get(k) if self.cache else None for k in keys]
        for v in verdicts:
            if v is not None:
                v["cached"] = True
        todo = [i for i, v in enumerate(verdicts) if v is None]
        answers = self.client.complete_many(
            [conversations[i] for i in todo], return_errors=True,
            temperature=self.temperature, max_tokens=self.max_tokens,
        )
        for i, answer in zip(todo, answers):
            if isinstance(answer, ChatError):
                verdicts[i] = {"rating": INVALID, "judgment": "", "cached": False, "error": str(answer)}
                continue
            record = {"rating": parse_rating(answer), "judgment": answer, "judge_model": self.model, "error": None}
            if self.cache:
                self.cache.put(keys[i], record)
            verdicts[i] = {**record, "cached": False}
        return verdicts  # type: ignore[return-value]

    def close(self) -> None:
        self.client.close()
