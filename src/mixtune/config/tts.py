"""Recipe section of the test-time scaling analysis (`mixtune analyze tts -c recipe.yaml`): how many
samples, on how many problems, and how the outcome and process reward models are trained. The policy is
`model.path`; the reward models' training questions come from the recipe's world (`world.out_dir`/sft)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mixtune.config.base import Section


class TTSConfig(Section):
    """Best-of-N with an ORM and a PRM vs self-consistency, accuracy vs N; pass@k vs best-of-N on code."""

    n_max: int = Field(16, ge=1)
    """Samples per test problem (a power of two); accuracy is reported at N = 1, 2, 4, ..., n_max."""
    math_problems: int = Field(100, ge=1)
    """Mini-lab math test problems (the first N of bench/math_test.jsonl)."""
    code_tasks: int = Field(50, ge=0)
    """Mini-lab code test tasks (the first N of bench/code_test.jsonl; 0: no code part)."""
    temperature: float = Field(0.8, gt=0)
    """Sampling temperature of the policy (test and reward-model training samples)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling of the policy."""
    max_new_tokens: int = Field(128, ge=1)
    """Longest sampled answer in tokens."""
    batch_size: int = Field(64, ge=1)
    """Prompts per generation batch."""
    train_questions: int = Field(400, ge=1)
    """Mini-lab math training questions (world sft/math.jsonl, seeded draw) sampled for the reward models."""
    train_code_tasks: int = Field(200, ge=0)
    """Mini-lab code training tasks (world sft/code.jsonl) sampled for the ORM's code pairs."""
    train_samples: int = Field(4, ge=2)
    """Policy samples per training question / task (labelled by recomputation / the hidden tests)."""
    prm: str | None = None
    """A trained PRM folder to use instead of training one."""
    prm_labels: Literal["gold", "arithmetic"] = "gold"
    """Step labels: gold (recomputed and the problem's own equation) or arithmetic (recomputation alone)."""
    prm_aggregates: list[Literal["min", "prod"]] = Field(default_factory=lambda: ["min", "prod"])
    """How a solution's step scores combine into its PRM score; each gives its own best-of-N curve."""
    prm_epochs: float = Field(2.0, gt=0)
    """PRM training passes over its solutions (the policy samples plus one gold solution per question)."""
    prm_lr: float = Field(3e-4, gt=0)
    """PRM peak learning rate (AdamW, cosine after 3% warm-up)."""
    orm: str | None = None
    """A trained outcome reward model folder (the `reward` stage's final/) to use instead of training one."""
    orm_lr: float = Field(3e-4, gt=0)
    """ORM peak learning rate (the `reward` stage on best-vs-worst outcome pairs of the same samples)."""
    orm_epochs: float = Field(1.0, gt=0)
    """ORM passes over its pairs (InstructGPT: 1)."""

    @field_validator("n_max")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"n_max must be a power of two (1, 2, 4, ...), got {value}")
        return value
