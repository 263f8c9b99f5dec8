"""Recipe section of the RL stages (`ppo`, `grpo`): rollouts, rewards, the PPO / GRPO / RLOO losses, StepCoder's
CCCS and FGO (METHODS.md §5, §7). `train.batch_size` is the number of prompts per RL step."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from mixtune.config.base import Section, check_name


class RewardSpec(Section):
    """One reward term; the stage's reward is the weighted sum of its terms."""

    kind: str = "task"
    """A name of the reward registry (`train/rewards.py`): task (the example's own scorer: GSM8K answer, sandboxed
    tests with StepCoder's +1/−0.3/−0.6/−1, IFEval checkers), reward_model (a trained reward model), http (a
    reward endpoint), contains (share of answer words equal to `target`; a toy a tiny model can learn)."""
    weight: float = 1.0
    """Weight of this term in the sum."""
    path: str | None = None
    """reward_model: the reward model folder (a reward stage's run `final/`, or any sequence-classification model)."""
    template: str | None = None
    """reward_model: chat template its answers are rendered with (default: the recipe's data.template)."""
    url: str | None = None
    """http: endpoint taking POST {ids, prompts, completions} and answering {rewards: [float | null]}."""
    timeout_s: float = Field(30.0, gt=0)
    """http: seconds per request."""
    max_retries: int = Field(2, ge=0)
    """http: retries after a failed request (connection error, 5xx), with exponential backoff."""
    target: str | None = None
    """contains: the word whose share of the answer is the reward."""

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        return check_name("reward", value)

    @model_validator(mode="after")
    def _needs(self) -> RewardSpec:
        need = {"reward_model": "path", "http": "url", "contains": "target"}.get(self.kind)
        if need and getattr(self, need) is None:
            raise ValueError(f"a {self.kind} reward needs `{need}`")
        return self


class RLConfig(Section):
    """Online RL: how rollouts are sampled and rewarded, and the PPO / GRPO / RLOO updates made from them."""

    n_samples: int = Field(4, ge=1)
    """Samples per prompt (GRPO's group size; ≥ 2 for grpo)."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of rollouts; the policy's log-probs are those of logits / temperature."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling of rollouts (log-probs stay those of the untruncated tempered distribution)."""
    max_new_tokens: int = Field(128, ge=1)
    """Generation budget per answer."""
    stop: list[str] = Field(default_factory=list)
    """Extra stop strings (the chat template's end of turn always stops)."""
    rollout_batch_size: int = Field(64, ge=1)
    """Sequences generated together (KV-cache batch)."""
    backend: str = "hf"
    """Rollout generator, a name of the rollout-backend registry (`train/rollout.py`; docs/rl.md shows vLLM)."""
    old_logprobs: Literal["rollout", "recompute"] = "rollout"
    """π_old: the sampled tokens' log-probs kept from the generation pass, or recomputed by a teacher-forced
    forward (needed when generation numerics differ from training: bf16 autocast, vLLM)."""
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec()])
    """Reward terms, summed with their weights."""
    failed_reward: Literal["zero", "drop"] = "zero"
    """A reward that errors (sandbox failure, endpoint down): zero = reward 0, counted; drop = the sample is left
    out of the update (and of its group's statistics), counted."""
    instruction_reward: Literal["fraction", "all"] = "fraction"
    """task reward on instructions: share of the example's instructions followed (strict), or 1 only if all are."""
    ppo_epochs: int = Field(1, ge=1)
    """Passes over each rollout batch (PPO's K epochs; GRPO's μ iterations)."""
    minibatches: int = Field(1, ge=1)
    """Optimizer steps per pass: the rollout batch is split into this many shuffled minibatches."""
    clip_eps: float = Field(0.2, gt=0)
    """ε of the clipped ratio."""
    kl_coef: float = Field(0.04, ge=0)
    """β: the KL penalty (ppo: per-token reward −β·k1; grpo: loss term β·estimator; 0 skips the reference)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """grpo: estimator of KL(π‖π_ref) in the loss (Schulman 2020; GRPO uses k3). ppo always uses k1 in the reward."""
    adaptive_kl: bool = False
    """ppo: adapt β towards kl_target (Ziegler et al. 2019)."""
    kl_target: float = Field(6.0, gt=0)
    """ppo adaptive β: target KL per sequence (nats)."""
    kl_horizon: int = Field(10000, ge=1)
    """ppo adaptive β: horizon in samples."""
    gamma: float = Field(1.0, ge=0, le=1)
    """ppo: GAE discount γ."""
    lam: float = Field(0.95, ge=0, le=1)
    """ppo: GAE λ."""
    vf_coef: float = Field(0.1, ge=0)
    """ppo: c_v, weight of the value loss."""
    value_clip: float = Field(0.2, gt=0)
    """ppo: ε_v of the clipped value loss."""
    whiten_advantages: bool = True
    """ppo: whiten advantages over the batch's valid tokens."""
    critic_init: Literal["auto", "policy"] = "auto"
    """ppo: auto = the critic starts from the reward model of the first reward_model term (InstructGPT), else from
    the policy's backbone with a new scalar head; policy = always the latter."""
    ptx_coef: float = Field(0.0, ge=0)
    """ppo: γ of PPO-ptx, the weight of the LM loss on `ptx_source` (0: off)."""
    ptx_source: str | None = None
    """ppo: data source (of this stage) whose texts or chats give the PPO-ptx LM loss; not used as prompts."""
    ptx_batch_size: int = Field(4, ge=1)
    """ppo: PPO-ptx examples per optimizer step."""
    scale_rewards: Literal["group", "none"] = "group"
    """grpo: divide advantages by the group's reward std (GRPO), or not (Dr. GRPO)."""
    baseline: Literal["group_mean", "rloo"] = "group_mean"
    """grpo: the group mean (GRPO) or the mean of the other samples (RLOO, leave-one-out)."""
    loss_agg: Literal["sequence_mean", "token_mean", "constant"] = "sequence_mean"
    """grpo: per-sequence token mean then batch mean (GRPO), one token mean (DAPO), or token sum / (B ·
    max_new_tokens) (Dr. GRPO)."""
    cccs: bool = False
    """StepCoder CCCS: give code prompts a prefix of the canonical solution that shrinks over training."""
    cccs_split: Literal["conditional", "statement"] = "conditional"
    """CCCS split points: before each conditional statement (if / for / while / try / match / with, and a statement
    holding a one-line conditional: StepCoder's), or before every statement (bodies without branches)."""
    cccs_schedule: Literal["iterations", "pass_rate"] = "iterations"
    """CCCS: move to a shorter prefix every `cccs_every` steps, or when the pass rate of the last `cccs_every`
    steps reaches `cccs_threshold`."""
    cccs_every: int = Field(10, ge=1)
    """CCCS: steps per curriculum stage (iterations) / window and minimum stay (pass_rate)."""
    cccs_threshold: float = Field(0.5, ge=0, le=1)
    """CCCS pass_rate schedule: pass rate that moves the curriculum on."""
    fgo: bool = False
    """StepCoder FGO: the policy loss of code answers counts only tokens of lines the tests executed (signature
    lines kept; every token kept when the program does not compile)."""

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        return check_name("rollout backend", value)
