"""The whole recipe: one section per pipeline floor. Each verb reads the sections it needs."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from mixtune.config.base import Section
from mixtune.config.data import DataConfig
from mixtune.config.evaluate import EvalConfig
from mixtune.config.model import AdapterConfig, ModelConfig
from mixtune.config.preference import PreferenceConfig
from mixtune.config.study import StudyConfig
from mixtune.config.train import StrategyConfig, TrainConfig
from mixtune.config.world import TokenizerConfig, WorldConfig


class Recipe(Section):
    """A whole recipe. Each verb reads the sections it needs."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Run name; the run folder is `runs/<name>/` unless `out_dir` is given."""
    out_dir: str | None = None
    """Run folder."""
    seed: int = 0
    """Global seed."""
    world: WorldConfig = Field(default_factory=WorldConfig)
    """Mini-lab world."""
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    """Tokenizer training."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Model to train."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Training data."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """Optimisation."""
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    """Adapter (PEFT)."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Ability evaluation."""
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    """Training strategy: the stage plan."""
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    """Preference stages (reward, dpo): losses, β, the reference, pair lengths."""
    study: StudyConfig = Field(default_factory=StudyConfig)
    """Study grid (`mixtune study`)."""
    pretrain_corpus: list[str] = Field(default_factory=list)
    """Pre-training text files (JSONL with `text`, or plain text); empty means the world's corpus."""

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.name
