"""Recipe sections of the analyses (`mixtune analyze <what>`): knowledge capacity, scaling laws, continued
pre-training. Optimisation comes from the recipe's `train` section, the model family from `model`, the corpus from
`world`/`tokenizer`; these sections hold only what each analysis adds (its grid and its measurement)."""

from __future__ import annotations

from pydantic import Field, model_validator

from mixtune.config.base import Section


class ModelSize(Section):
    """The size fields of a built Llama (the rest comes from the recipe's `model` section)."""

    hidden_size: int = Field(ge=8)
    """Width."""
    intermediate_size: int = Field(ge=8)
    """FFN width."""
    num_layers: int = Field(ge=1)
    """Transformer blocks."""
    num_heads: int = Field(ge=1)
    """Attention heads (must divide hidden_size)."""

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelSize:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} does not divide hidden_size {self.hidden_size}")
        return self


class CapacityRun(Section):
    """One cell of the capacity grid."""

    size: str
    """A key of `capacity.sizes`."""
    n_people: int = Field(ge=2)
    """N of bioS(N)."""
    exposures: int = Field(ge=1)
    """Times each biography is seen (re-drawn every time)."""
    junk_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of training tokens that are junk (plain-text paragraphs, no biographies); 7/8 = 0.875."""


class CapacityConfig(Section):
    """Knowledge capacity (Physics of LMs 3.3, METHODS §8): bits stored per parameter over a grid of runs."""

    sizes: dict[str, ModelSize] = Field(default_factory=dict)
    """Model sizes by name."""
    runs: list[CapacityRun] = Field(default_factory=list)
    """The grid: each cell trains one model from scratch and measures its bits."""
    vocab_size: int = Field(1024, ge=300)
    """Vocabulary of the BPE tokenizer trained on the bioS text and the junk."""
    eval_bios: int = Field(1, ge=1)
    """Biographies (fresh templates and order) scored per person; the role sums are averaged over them."""
    seed: int = 0
    """Seed of the people, the biographies, the junk and the models."""
    workers: int = Field(2, ge=1)
    """Cells trained at once (one torch thread each)."""

    @model_validator(mode="after")
    def _sizes_known(self) -> CapacityConfig:
        unknown = sorted({r.size for r in self.runs} - set(self.sizes))
        if unknown:
            raise ValueError(f"runs name sizes {unknown} that are not in capacity.sizes ({sorted(self.sizes)})")
        return self


class ScalingConfig(Section):
    """Scaling law L(N, D) = E + A/N^α + B/D^β (Chinchilla approach 3) from WSD runs with branched decays."""

    sizes: dict[str, ModelSize] = Field(default_factory=dict)
    """Model sizes of the grid (N = non-embedding parameters)."""
    budgets: list[int] = Field(default_factory=list)
    """Optimizer steps of each token budget (D = steps × batch_size × seq_len). One WSD run per size reaches the
    largest; each smaller budget is a decay branched from that run's stable phase."""
    decay_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    """Each budget T: stable until (1 − f)·T, then the 1-sqrt decay over f·T steps."""
    holdout: ModelSize | None = None
    """A larger size trained after the fit, whose loss is predicted (and written down) first."""
    holdout_steps: int | None = Field(None, ge=1)
    """Steps of the held-out run (default: the largest budget)."""
    bootstrap: int = Field(200, ge=0)
    """Bootstrap resamples of the runs for the intervals (0: none)."""
    huber_delta: float = Field(1e-3, gt=0)
    """Huber δ of the fit on log L (Chinchilla: 1e-3)."""
    workers: int = Field(2, ge=1)
    """Runs trained at once (one torch thread each)."""

    @model_validator(mode="after")
    def _enough_points(self) -> ScalingConfig:
        if self.sizes and len(self.sizes) * len(self.budgets) < 6:
            raise ValueError("the fit has 5 parameters: give at least 6 (size, budget) points")
        if sorted(set(self.budgets)) != list(self.budgets):
            raise ValueError(f"budgets must be increasing and distinct, got {self.budgets}")
        return self


class CPTConfig(Section):
    """Continued pre-training on a new domain (MiniCPM, METHODS §9) from three starts of one WSD base."""

    new_people: int = Field(100, ge=2)
    """New people (not in the base world) whose biographies are the new domain."""
    new_exposures: int = Field(30, ge=1)
    """Biographies per new person in the new-domain corpus."""
    heldout_exposures: int = Field(2, ge=1)
    """Further biographies per new person (fresh templates and order), never trained: the new-domain eval."""
    replay_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of the continued pre-training's documents drawn from the old corpus (0: the new domain only)."""
    steps: int = Field(300, ge=1)
    """Optimizer steps of each continued pre-training."""
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    """Re-warm-up of start (b), as a share of `steps`."""
    decay_ratio: float = Field(0.2, gt=0.0, le=1.0)
    """Every start ends with the 1-sqrt decay over this share of `steps`."""
    carry_optimizer: bool = True
    """Start from the checkpoints' AdamW moments (all three starts); false: a fresh optimizer."""
    eval_every: int = Field(20, ge=1)
    """Steps between new-domain and old-domain eval losses."""
    eval_batches: int = Field(8, ge=1)
    """Held-out batches per eval-loss pass (each domain); at most the base's `train.eval_batches`, so the old-domain
    rows are rows the base held out."""
    sft_recipe: str | None = None
    """The SFT recipe run after each start (and on the base); its `model.path` and `out_dir` are set per start."""
    sft_base: bool = True
    """Also run the SFT on the decayed base without continued pre-training (the reference row)."""
    workers: int = Field(2, ge=1)
    """Continued pre-trainings (and SFTs) run at once (one torch thread each)."""


class AnalysisConfig(Section):
    """The analyses of `mixtune analyze`; each reads its own subsection."""

    capacity: CapacityConfig = Field(default_factory=CapacityConfig)
    """Knowledge capacity (bits per parameter)."""
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    """Scaling-law fit and held-out prediction."""
    cpt: CPTConfig = Field(default_factory=CPTConfig)
    """Continued pre-training from a stable vs a decayed checkpoint."""
