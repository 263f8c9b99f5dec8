"""Model folders without loading a model (no torch import): which folder holds the model, what its config says.

A model folder is a Hugging Face checkpoint (`config.json`, weights, tokenizer files) or a mixtune adapter folder
(`mixtune_model.json` naming its base, `adapter/`). A mixtune run folder stands for its `final/`. These checks run
before a run or study folder is made, so a wrong path fails in one line, not after a model load or a world build.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mixtune.errors import UserError

MODEL_META = "mixtune_model.json"
CONFIG = "config.json"


class ModelLoadError(UserError, ValueError):
    """A model or tokenizer folder that cannot be loaded; the message names the folder and what is missing."""


def read_model_meta(path: str | Path) -> dict | None:
    meta = Path(path) / MODEL_META
    return json.loads(meta.read_text()) if meta.exists() else None


def is_model_folder(path: Path) -> bool:
    return (path / MODEL_META).is_file() or (path / CONFIG).is_file()


def resolve_final(path: str | Path, what: str = "model.path") -> Path:
    """The model folder `path` names: `path` itself when it holds a model, else a run folder's `path/final`.

    `what` is the recipe key (or argument) the path came from, so the message says what to change."""
    path = Path(path)
    fix = f"set {what}=/path/to/checkpoint (a local Hugging Face model folder or a mixtune run folder)"
    if not path.exists():
        raise ModelLoadError(f"{what} {path}: no such folder; {fix}")
    if not path.is_dir():
        raise ModelLoadError(f"{what} {path}: is a file, not a model folder; {fix}")
    for folder in (path, path / "final"):
        if is_model_folder(folder):
            return folder
    raise ModelLoadError(f"{what} {path}: no {CONFIG} (not a checkpoint) and no final/ (not a finished run); {fix}")


def base_of(folder: Path) -> Path:
    """The full checkpoint under a model folder: the folder itself, or the base an adapter folder names."""
    meta = read_model_meta(folder)
    if meta and meta.get("adapter", "none") != "none":
        base = Path(meta["base"])  # relative: inside this folder (a self-contained `mixtune export`)
        return base_of(base if base.is_absolute() else folder / base)
    return folder


def model_config(folder: str | Path) -> dict[str, Any]:
    """The `config.json` of the full checkpoint under `folder` ({} when it has none)."""
    path = base_of(Path(folder)) / CONFIG
    return json.loads(path.read_text()) if path.is_file() else {}


def context_length(config: dict[str, Any]) -> int | None:
    """The longest sequence a checkpoint's config declares (`max_position_embeddings`; text config of multimodal)."""
    for cfg in (config, config.get("text_config") or {}):
        if isinstance(cfg.get("max_position_embeddings"), int):
            return cfg["max_position_embeddings"]
    return None


def check_context(model_cfg: Any, lengths: dict[str, int | None]) -> None:
    """Refuse sequence lengths above the model's `max_position_embeddings` (`lengths`: recipe key -> tokens).

    An error, not a warning: positions past the trained context give silently wrong attention (RoPE was never
    trained there), so a longer `data.max_seq_len` would train and evaluate a model on garbage positions."""
    from mixtune.config import RecipeError

    if model_cfg.path:
        folder = resolve_final(model_cfg.path)
        limit, where = context_length(model_config(folder)), f"{base_of(folder) / CONFIG}"
    else:
        limit, where = model_cfg.max_position_embeddings, "model.max_position_embeddings"
    if limit is None:
        return
    for key, n in lengths.items():
        if n is not None and n > limit:
            raise RecipeError(f"{key} {n} is above the model's max_position_embeddings {limit} ({where}); "
                              f"set {key}={limit} or lower")
