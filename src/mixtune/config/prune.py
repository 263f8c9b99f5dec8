"""Recipe section of the pruning analysis (`mixtune analyze prune -c recipe.yaml`): which methods at
which sparsities, the calibration data, and the optional recovery SFT. The model pruned is `model.path`; the
calibration and recovery data are the recipe's `data.sources`; abilities are the recipe's `eval` benchmarks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mixtune.config.base import Section

PRUNE_METHODS = ("magnitude_layer", "magnitude_global", "wanda", "heads", "channels")
"""Pruning methods (analysis/prune.py): unstructured magnitude per matrix or over all matrices at once, Wanda
(|W|·‖X‖₂ per output row), and structured removal of attention heads or MLP intermediate channels."""


class PruneConfig(Section):
    """The pruning analysis: each method at each sparsity, scored on the recipe's benchmarks."""

    methods: list[str] = Field(default_factory=lambda: list(PRUNE_METHODS))
    """Methods to compare: magnitude_layer, magnitude_global, wanda, heads, channels."""
    sparsities: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75])
    """Unstructured: the share of each decoder linear layer's weights set to 0; heads / channels: the share of
    attention heads (key-value groups) / MLP intermediate channels removed in every layer."""
    calibration: int = Field(64, ge=1)
    """Calibration examples (drawn from data.sources, seeded) for Wanda's and the structured methods' activations."""
    recovery_steps: int = Field(0, ge=0)
    """Steps of recovery SFT after pruning (0: none); `train.run.train` on data.sources from the pruned checkpoint."""
    recovery_sparsities: list[float] = Field(default_factory=list)
    """Sparsities that get the recovery SFT (empty: all); the dense model gets the same SFT as a control."""
    save_models: Literal["all", "none"] = "all"
    """Keep every pruned checkpoint (`<out>/<method>-s<sparsity>/model`, a normal HF folder) or delete them."""

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in PRUNE_METHODS]
        if unknown:
            raise ValueError(f"unknown pruning methods {unknown}; valid: {', '.join(PRUNE_METHODS)}")
        return value

    @field_validator("sparsities", "recovery_sparsities")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        bad = [s for s in value if not 0.0 < s < 1.0]
        if bad:
            raise ValueError(f"sparsities must lie strictly between 0 and 1, got {bad}")
        return value
