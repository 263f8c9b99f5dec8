"""Recipe sections of the evaluation floor: which benchmarks, how to generate, the judge."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mixtune.config.base import Section, check_name


class JudgeConfig(Section):
    """An OpenAI-compatible chat endpoint used as the MT-Bench judge."""

    base_url: str = "http://127.0.0.1:8000/v1"
    """Endpoint base URL (…/v1)."""
    model: str = "gpt-4"
    """Judge model name."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (may be unset for local servers)."""
    concurrency: int = Field(4, ge=1)
    """Requests in flight at once."""
    max_retries: int = Field(5, ge=0)
    """Retries with exponential backoff on errors and 429/5xx."""
    timeout_s: float = Field(60.0, gt=0)
    """Per-request timeout."""
    cache_dir: str = "runs/judge-cache"
    """Verdict cache on disk (keyed by judge model and prompt)."""
    on_unreachable: Literal["fail", "skip"] = "fail"
    """When the judge does not answer the connection check: fail (one-line error naming the URL) or skip the
    judged benchmarks (a loud warning; recorded as skipped, never as a score)."""
    check_timeout_s: float = Field(3.0, gt=0)
    """Timeout of the one connection check (GET <base_url>/models) made before any generation."""


class EvalConfig(Section):
    """Ability benchmarks: which to run, how to generate, where the data lies."""

    benchmarks: list[str] = Field(default_factory=list, json_schema_extra={"registry": "benchmark"})
    """Benchmark names from the task registry (`mixtune eval list`)."""
    limit: int | None = Field(None, ge=1)
    """Examples per benchmark (None: all)."""
    data_dir: str = "../shared/data"
    """Folder of the real benchmark files."""
    world_dir: str | None = None
    """Mini-lab world folder for the minilab_* benchmarks (default: the recipe's world.out_dir)."""
    backend: Literal["hf", "openai"] = "hf"
    """Generate with the trained model (transformers, KV cache) or an OpenAI-compatible server."""
    base_url: str | None = None
    """OpenAI backend: server base URL."""
    served_model: str | None = None
    """OpenAI backend: model name."""
    batch_size: int = Field(32, ge=1)
    """Prompts per generation batch."""
    max_new_tokens: int = Field(256, ge=1)
    """Generation budget per answer."""
    temperature: float = Field(0.0, ge=0)
    """0 is greedy."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling."""
    n_samples: int = Field(1, ge=1)
    """Samples per prompt (code pass@k)."""
    pass_k: list[int] = Field(default_factory=lambda: [1])
    """k values for pass@k."""
    every_n_steps: int = Field(0, ge=0)
    """During training: also evaluate every N steps on `subset` examples (0: only after each stage)."""
    subset: int = Field(50, ge=1)
    """Examples per benchmark for the every-N-steps evaluation."""
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    """MT-Bench judge."""

    @field_validator("benchmarks")
    @classmethod
    def _known_benchmarks(cls, value: list[str]) -> list[str]:
        return [check_name("benchmark", v) for v in value]
