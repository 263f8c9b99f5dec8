"""Recipe sections of the data floor: the sources of a mixture, how much of each to draw, the chat template,
sequence length and packing."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from mixtune.config.base import Section, check_name

Ability = Literal["math", "code", "general", "knowledge", "text", "preference"]
"""The abilities of the data contract (DESIGN.md); `preference` marks chosen/rejected pairs."""


class SourceConfig(Section):
    """One data source and how much of it to draw."""

    name: str
    """Name used in logs, manifests and the per-source eval loss."""
    path: str | None = None
    """File or folder to read: JSONL / JSON list (.gz allowed), parquet, csv, arrow; a folder of such files; a
    `save_to_disk` folder; a LLaMA-Factory `dataset_info.json` (or its folder; `file#entry` names the entry)."""
    minilab: str | None = Field(None, json_schema_extra={"registry": "mini-lab source"})
    """Instead of `path`: the mini-lab world's source for this ability (math, code, general, knowledge, ...)."""
    format: str = Field("auto", json_schema_extra={"registry": "data format"})
    """Record format (a name of the data-format registry); `auto` detects it from the first record."""
    ability: Ability | None = None
    """Ability the examples train; defaults to the mini-lab ability or the format's natural one."""
    task_type: int | None = Field(None, ge=0, le=1)
    """LoRAMoE type for every example (1 world knowledge, 0 other); defaults to 1 for knowledge, else 0."""
    fraction: float | None = Field(None, gt=0.0)
    """Draw this fraction of the source (≤ 1 without replacement)."""
    count: int | None = Field(None, ge=1)
    """Draw this many examples."""
    ratio: float | None = Field(None, gt=0.0)
    """Draw ratio × (examples drawn from `relative_to`)."""
    relative_to: str | None = None
    """Source name the ratio refers to."""
    replace: bool = False
    """Sample with replacement (needed to draw more than the source holds)."""
    eval_count: int = Field(0, ge=0)
    """Examples held out of training for the per-source eval loss."""
    skip_invalid: bool = False
    """Skip records that fail validation instead of failing the run (each skip is counted, logged and recorded
    in the manifest)."""
    dataset_info: str | None = None
    """Entry name in a LLaMA-Factory dataset_info.json given by `path` (its columns / tags mapping is used)."""
    split: str | None = None
    """Split of a DatasetDict save_to_disk folder (default train, or the dataset_info entry's split)."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Rename before conversion: {field the format reads: column of the file}, e.g. {instruction: prompt}."""
    streaming: bool = False
    """Read the source as a stream, keeping only the drawn records in memory (large files). count, fraction and
    ratio then need the number of records up front: parquet, arrow and save_to_disk folders declare it, csv and
    JSON/JSONL do not (refused with a message)."""

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        return check_name("data format", value)

    @field_validator("minilab")
    @classmethod
    def _known_minilab(cls, value: str | None) -> str | None:
        return None if value is None else check_name("mini-lab source", value)

    @model_validator(mode="after")
    def _one_origin_one_amount(self) -> SourceConfig:
        if (self.path is None) == (self.minilab is None):
            raise ValueError("give exactly one of `path` or `minilab`")
        amounts = [k for k in ("fraction", "count", "ratio") if getattr(self, k) is not None]
        if len(amounts) > 1:
            raise ValueError(f"give at most one of fraction/count/ratio, got {amounts}")
        if (self.ratio is None) != (self.relative_to is None):
            raise ValueError("`ratio` and `relative_to` go together")
        if self.fraction is not None and self.fraction > 1 and not self.replace:
            raise ValueError("fraction > 1 needs replace: true")
        if self.minilab is not None and (self.dataset_info or self.streaming or self.split or self.columns):
            raise ValueError("dataset_info, split, columns and streaming apply to a `path` source")
        return self


class DataConfig(Section):
    """Training data: sources, chat template, sequence length and packing."""

    sources: list[SourceConfig] = Field(default_factory=list)
    """The sources of the mixture."""
    template: str = Field("tokenizer", json_schema_extra={"registry": "chat template"})
    """Chat template: `tokenizer` (the tokenizer's own), `auto` (the checkpoint's own, else its family's from
    config.json model_type) or a family template of the registry; it is saved with the trained model."""
    system_prompt: str | None = None
    """System message prepended to every conversation that has none."""
    max_seq_len: int = Field(512, ge=16)
    """Longest tokenised example; longer ones are truncated (counted and reported)."""
    packing: bool = True
    """Best-fit-decreasing packing into rows ≤ max_seq_len with no attention across examples; else padding."""
    pack_len: int | None = Field(None, ge=16)
    """Packed row length (default max_seq_len; never below a micro-batch's longest example). Shorter rows cut the
    quadratic attention cost of tiny models on CPU."""
    shuffle_seed: int = 0
    """Seed of the mixture draw and per-epoch reshuffles."""

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        return check_name("chat template", value)

    @model_validator(mode="after")
    def _unique_names(self) -> DataConfig:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique, repeated: {dupes}")
        return self
