"""Typed recipe schema: one module per pipeline section, plus loading (YAML, overrides, validation, field docs).

A recipe is one YAML file loaded into frozen pydantic models. Unknown keys, wrong types, out-of-range or non-finite
values and unknown registry names fail at load with the file and the dotted key path
(`recipes/x.yaml: train.lr: Input should be greater than 0`). Every field's docstring is its help text.
"""

from mixtune.config.base import REGISTRIES, RecipeError, Section, check_name, registry_names
from mixtune.config.data import Ability, DataConfig, SourceConfig
from mixtune.config.evaluate import EvalConfig, JudgeConfig
from mixtune.config.loading import (
    apply_override,
    describe_fields,
    dump_recipe,
    format_validation_error,
    load_recipe,
    load_tree,
    parse_override,
    validate,
)
from mixtune.config.model import AdapterConfig, ModelConfig
from mixtune.config.preference import PreferenceConfig
from mixtune.config.recipe import Recipe
from mixtune.config.study import RatioSetup, StudyConfig, StudyRun
from mixtune.config.train import StageSpec, StrategyConfig, TrainConfig
from mixtune.config.world import TokenizerConfig, WorldConfig

__all__ = [
    "REGISTRIES", "Ability", "AdapterConfig", "DataConfig", "EvalConfig", "JudgeConfig", "ModelConfig",
    "PreferenceConfig", "RatioSetup", "Recipe", "RecipeError", "Section", "SourceConfig", "StageSpec",
    "StrategyConfig", "StudyConfig", "StudyRun", "TokenizerConfig", "TrainConfig", "WorldConfig", "apply_override",
    "check_name", "describe_fields", "dump_recipe", "format_validation_error", "load_recipe", "load_tree",
    "parse_override", "registry_names", "validate",
]
