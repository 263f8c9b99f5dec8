"""Recipe sections of the training floor: optimisation of one stage, and the stage plan (strategy) of a run."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mixtune.config.base import Section, check_name


class TrainConfig(Section):
    """Optimisation of one stage (pre-training, SFT, or a preference / RL stage)."""

    lr: float = Field(1e-3, gt=0)
    """Peak learning rate."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Final learning rate as a fraction of the peak (cosine floor / WSD end)."""
    schedule: Literal["cosine", "wsd", "constant", "linear"] = "cosine"
    """Learning-rate schedule after warm-up."""
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    """Warm-up as a fraction of all optimizer steps."""
    decay_ratio: float = Field(0.2, ge=0, le=1)
    """WSD: the cooldown's share of all steps."""
    epochs: float = Field(3.0, gt=0)
    """Passes over the stage's data (ignored when max_steps is set)."""
    max_steps: int | None = Field(None, ge=1)
    """Optimizer steps of each stage; overrides epochs."""
    step_budget: int | None = Field(None, ge=1)
    """Optimizer steps of the whole run, split over its stages in proportion to each stage's distinct (not
    replayed) examples, rounded so the stages sum to exactly this; overrides epochs and max_steps. The study's
    matched_steps protocol sets it, so every run of a study trains the same number of steps."""
    batch_size: int = Field(16, ge=1)
    """Examples (SFT, pairs for preference stages, prompts for RL) or rows (pre-training) per optimizer step."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step (the step's examples are split across them)."""
    seq_len: int = Field(256, ge=8)
    """Pre-training row length in tokens."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    max_grad_norm: float = Field(1.0, ge=0)
    """Gradient clipping norm (0 disables)."""
    bf16: bool = True
    """bf16 autocast (CPU and GPU)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory for long sequences or large models, ~30% slower;
    the same loss and gradients)."""
    threads: int = Field(1, ge=1)
    """torch CPU threads for this run (one per run is fastest on small machines)."""
    seed: int = 0
    """Seed of initialisation, dropout and data order."""
    log_every: int = Field(10, ge=1)
    """Steps between metric lines."""
    eval_every: int = Field(0, ge=0)
    """Steps between eval-loss passes (0: only at the end)."""
    save_every: int = Field(0, ge=0)
    """Steps between checkpoints (0: only at the end)."""
    keep_checkpoints: int = Field(2, ge=0)
    """Pre-training: newest checkpoints kept (0 keeps every one, e.g. to branch decays from them later)."""
    eval_batches: int = Field(20, ge=1)
    """Pre-training: held-out rows, in optimizer steps (batch_size x processes rows each), for the eval loss."""
    fresh_optimizer: bool = True
    """Multi-stage: each stage starts with a new optimizer and schedule (DMT §3.5)."""
    tensorboard: bool = False
    """Also log metrics and ability scores to TensorBoard (`<run>/tensorboard`, a study's `<study>/tensorboard`)."""
    distributed: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    """Under torchrun / accelerate launch: ddp replicates the model, fsdp shards parameters, gradients and optimizer
    state (torch FSDP2), deepspeed runs DeepSpeed ZeRO (`zero_stage`; pip install 'mixtune[deepspeed]'). batch_size
    is per process in every mode. An accelerate config's distributed_type (FSDP, DEEPSPEED) overrides this."""
    zero_stage: Literal[1, 2, 3] = 2
    """DeepSpeed: ZeRO stage 1 (optimizer state sharded), 2 (+ gradients) or 3 (+ parameters); an accelerate
    DeepSpeed config's zero_stage overrides it."""
    dist_timeout_s: int = Field(7200, ge=60)
    """Under torchrun / accelerate launch: seconds a rank waits for the others (rank 0 evaluates and saves alone)."""
    compile: bool = False
    """Speed: torch.compile (inductor) the decoder layers (SFT stages and pre-training); a one-off compile, then faster
    steps; changes rounding."""
    fused_ce: bool = False
    """Speed: output layer + cross-entropy in row chunks, gradients in the forward pass; changes rounding."""
    packed_attention: bool = False
    """Speed: attention per example, not through a block mask; one unpadded row per micro-batch; changes rounding."""
    fused_adamw: bool = False
    """Speed: AdamW as one fused kernel per tensor (else the bit-identical foreach form); changes rounding."""


class StageSpec(Section):
    """One stage of an explicit stage plan: a kind (sft, dpo, grpo, ...), the sources it trains, and what it
    changes in the recipe for itself."""

    name: str
    """Stage name (used for folders, logs and the per-stage scores)."""
    kind: str = Field("sft", json_schema_extra={"registry": "stage kind"})
    """Stage kind, a name of the stage registry (`train/stages.py`): sft, dpo, reward, grpo, ..."""
    sources: list[str] = Field(default_factory=list)
    """Names of data sources this stage trains on in full (SFT examples, preference pairs or RL prompts)."""
    replay: dict[str, float] = Field(default_factory=dict)
    """source name -> k: also train a random k·|D| subset of that source (DMT's replay)."""
    overrides: list[str] = Field(default_factory=list)
    """key.sub=value overrides of the recipe for this stage only (e.g. train.lr=5e-7, train.epochs=1)."""

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        return check_name("stage kind", value)

    @field_validator("overrides")
    @classmethod
    def _no_adapter_change(cls, value: list[str]) -> list[str]:
        fixed = [o for o in value if o.split("=", 1)[0].strip().split(".")[0] in ("adapter", "model", "name",
                                                                                   "out_dir", "tokenizer")]
        if fixed:
            raise ValueError(f"a stage cannot change the model, adapter or run folder of its run: {fixed}")
        return value


class StrategyConfig(Section):
    """How the sources are split into stages (DMT paper §3.5, METHODS.md §1), and what follows the SFT stages."""

    name: str = Field("multi_task", json_schema_extra={"registry": "strategy"})
    """A name of the strategy registry. multi_task: one stage on all; sequential: one stage per ability in `order`;
    mixed_sequential: specialised then general; dmt: specialised, then general + k of each specialised source;
    stages: the explicit list."""
    k: float = Field(1 / 256, ge=0, le=1)
    """DMT: replayed fraction of each specialised source in stage 2 (0 is mixed sequential)."""
    order: list[str] = Field(default_factory=lambda: ["code", "math", "general"])
    """sequential: ability order of the stages (general last forgets the specialised abilities)."""
    specialized: list[str] = Field(default_factory=lambda: ["code", "math"])
    """mixed_sequential / dmt: abilities of stage 1."""
    general: list[str] = Field(default_factory=lambda: ["general"])
    """mixed_sequential / dmt: abilities of stage 2."""
    stages: list[StageSpec] = Field(default_factory=list)
    """The explicit plan for name=stages."""
    then: list[StageSpec] = Field(default_factory=list)
    """Stages after the strategy's own (e.g. a DPO or GRPO stage after SFT); their sources are left out of the
    strategy's SFT stages."""

    @field_validator("name")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        return check_name("strategy", value)
