"""Recipe section of the preference stages (`reward`, `dpo`, `spin`, `self_reward`, `rlaif`; METHODS.md §5–§6):
losses, β, the reference, lengths, the iterated methods' sampling and the AI labeller.

A stage changes any of these for itself through its overrides (`preference.beta=0.05`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mixtune.config.base import Section


class PreferenceConfig(Section):
    """Preference learning: the DPO-family loss and its reference, the reward model's loss, pair lengths."""

    beta: float = Field(0.1, gt=0)
    """DPO β (Rafailov et al. 2023): the weight of the implicit KL to the reference; IPO's τ."""
    loss: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    """sigmoid: DPO (with label_smoothing > 0, conservative DPO); ipo: (h − 1/(2β))² on per-token mean log-ratios
    (IPO, Azar et al. 2023, as TRL); hinge: max(0, 1 − βh) (SLiC, SPIN's hinge form)."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """cDPO ε: the assumed rate of flipped labels, −(1−ε) log σ(βh) − ε log σ(−βh) (sigmoid loss only)."""
    reference: Literal["start", "base"] = "start"
    """DPO reference: `start`, the policy as the stage starts (any model); `base`, the model with its adapter
    disabled (LoRA only). Either way its log-probs are computed once before training and cached: no second copy."""
    margin: float = 0.0
    """Reward model: margin m of −log σ(r_w − r_l − m) (Llama 2); 0 is InstructGPT's loss."""
    reward_epochs: float = Field(1.0, gt=0)
    """Reward model: passes over the pairs (InstructGPT: 1, more overfits); train.max_steps still wins."""
    max_prompt_len: int | None = Field(None, ge=1)
    """Keep at most the last N prompt tokens of a pair (None: the whole prompt); prompt + answer is then cut to
    data.max_seq_len (counted as truncated)."""
    eval_fraction: float = Field(0.0, ge=0, lt=1)
    """Hold out this fraction of the stage's pairs (seeded) for held-out pair accuracy, besides the sources'
    eval_count pairs."""
    soft_label: bool = False
    """Reward model: train on each pair's `label` (P(chosen preferred), in [0, 1]; 1 when absent) with the
    soft-label cross-entropy −[p log σ(r_w − r_l) + (1−p) log σ(r_l − r_w)] (RLAIF, Lee et al. 2023)."""
    max_new_tokens: int = Field(256, ge=1)
    """spin / self_reward: longest sampled answer (and judgement) in tokens."""
    spin_iterations: int = Field(2, ge=1)
    """SPIN (Chen et al. 2024): iterations t = 0..T−1; iteration t trains on the synthetic pairs of t and t−1."""
    spin_temperature: float = Field(1.0, gt=0)
    """SPIN: sampling temperature of y_gen (the paper: 1)."""
    self_reward_iterations: int = Field(2, ge=1)
    """Self-rewarding (Yuan et al. 2024): iterations M_t → M_{t+1}, each a DPO stage on self-judged pairs."""
    self_reward_samples: int = Field(4, ge=2)
    """Self-rewarding: answers sampled per prompt (N; the paper: 4)."""
    self_reward_temperature: float = Field(0.7, gt=0)
    """Self-rewarding: temperature of the answers and of the judgements (the paper: 0.7)."""
    self_reward_top_p: float = Field(0.9, gt=0, le=1)
    """Self-rewarding: nucleus top-p of the answers and of the judgements (the paper: 0.9)."""
    judge_max_new_tokens: int = Field(256, ge=1)
    """Self-rewarding: longest judgement in tokens (the prompt asks for up to 100 words, then "Score: <points>")."""
    judge_samples: int = Field(3, ge=1)
    """Self-rewarding: judgements per answer, averaged over the parsable ones (the paper: 3)."""
    judge_eval_prompts: int = Field(50, ge=0)
    """Self-rewarding: held-out prompts (the sources' eval_count examples, at most this many) on which the judge's
    agreement with the ability scorers is measured each iteration (0: not measured)."""
    labeller: str | None = None
    """RLAIF: the AI labeller as a local model (a checkpoint or a mixtune run folder); or set labeller_url."""
    labeller_url: str | None = None
    """RLAIF: an OpenAI-compatible endpoint (…/v1) whose chat completions return logprobs (top_logprobs 20)."""
    labeller_model: str | None = None
    """RLAIF: the model name sent to `labeller_url`."""
    labeller_api_key_env: str | None = "OPENAI_API_KEY"
    """RLAIF: environment variable holding the endpoint's API key (unset: no Authorization header)."""
    labeller_batch_size: int = Field(8, ge=1)
    """RLAIF: prompts per forward pass of a local labeller (concurrent requests of an endpoint)."""

    @model_validator(mode="after")
    def _smoothing_needs_sigmoid(self) -> PreferenceConfig:
        if self.label_smoothing and self.loss != "sigmoid":
            raise ValueError(f"label_smoothing applies to the sigmoid loss only, not {self.loss}")
        if self.soft_label and self.margin:
            raise ValueError("margin applies to the hard-label reward loss; with soft_label leave it 0")
        if self.labeller and self.labeller_url:
            raise ValueError("give preference.labeller (a local model) or labeller_url (an endpoint), not both")
        if self.labeller_url and not self.labeller_model:
            raise ValueError("preference.labeller_url needs labeller_model (the model name the endpoint serves)")
        return self
