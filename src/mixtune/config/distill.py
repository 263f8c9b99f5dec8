"""Recipe section of the `distill` stage kind: knowledge distillation from a teacher checkpoint into the model the
run trains (logit distillation, Hinton et al. 2015 / GKD, Agarwal et al. 2024; sequence-level KD, Kim & Rush 2016)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mixtune.config.base import Section


class DistillConfig(Section):
    """Knowledge distillation from a frozen teacher (stages of kind `distill`; other kinds ignore it)."""

    teacher: str | None = None
    """Teacher checkpoint folder (a run's final/ or any local HF causal LM); must use the student's tokenizer."""
    mode: Literal["logit", "sequence"] = "logit"
    """logit: match the teacher's next-token distributions on the stage's response tokens; sequence: the teacher
    answers the stage's prompts and the student is SFT'd on those answers (sequence-level KD)."""
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    """logit: forward_kl KL(teacher‖student), reverse_kl KL(student‖teacher), jsd the generalised JSD(β)."""
    temperature: float = Field(1.0, gt=0)
    """logit: softmax temperature τ of both distributions; the loss is scaled by τ² (Hinton et al. §2)."""
    beta: float = Field(0.5, gt=0, lt=1)
    """logit, jsd: the mixture weight β of m = β p_teacher + (1 − β) p_student (→0: forward KL, →1: reverse KL)."""
    alpha: float = Field(0.0, ge=0, le=1)
    """logit: weight of the hard-label cross-entropy: loss = (1 − α)·KD + α·CE (0: distillation only)."""
    samples: int = Field(1, ge=1)
    """sequence: teacher answers per prompt (more than 1 needs sample_temperature > 0)."""
    sample_temperature: float = Field(0.0, ge=0)
    """sequence: the teacher's sampling temperature (0: greedy, the beam-free form of Kim & Rush's beam search)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """sequence: nucleus sampling of the teacher's answers."""
    max_new_tokens: int = Field(256, ge=1)
    """sequence: longest teacher answer in tokens."""
    batch_size: int = Field(32, ge=1)
    """sequence: prompts per teacher generation batch."""

    @model_validator(mode="after")
    def _samples_need_sampling(self) -> DistillConfig:
        if self.samples > 1 and self.sample_temperature == 0:
            raise ValueError(f"distill.samples {self.samples} with greedy decoding gives {self.samples} identical "
                             f"answers; set distill.sample_temperature > 0 (e.g. 0.7) or distill.samples=1")
        return self
