"""Recipe section of the preference stages (`reward`, `dpo`; METHODS.md §5–§6): losses, β, the reference, lengths.

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

    @model_validator(mode="after")
    def _smoothing_needs_sigmoid(self) -> PreferenceConfig:
        if self.label_smoothing and self.loss != "sigmoid":
            raise ValueError(f"label_smoothing applies to the sigmoid loss only, not {self.loss}")
        return self
