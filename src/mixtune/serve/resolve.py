"""Which model folder and which chat template a served (or chatted-with) model uses. Light: no torch here, so
`mixtune serve` and `mixtune chat` reject a bad folder or template name before loading anything heavy.

Model folder: a run folder's `final/`, or the folder itself when it is a model (a full checkpoint with
`config.json`, or an adapter folder whose `mixtune_model.json` names its base).

Template, first match wins:
1. `--template NAME` (a name of `mixtune.data.templates.TEMPLATES`);
2. the template the run trained with: the run's `config.yaml` → `data.template` (`tokenizer` means the tokenizer's
   own chat_template, which `final/` saves with the model);
3. the checkpoint tokenizer's `chat_template` (any local Hugging Face checkpoint);
otherwise a one-line error. Once `final/` saves the trained template as the tokenizer's chat_template, rules 2 and 3
name the same template, so the order stays right.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mixtune.data.templates import TEMPLATES
from mixtune.errors import UserError
from mixtune.model.folders import MODEL_META, is_model_folder

TEMPLATE_NAMES = tuple(TEMPLATES)
"""The chat templates `--template` takes: the template registry's names (that module imports no torch)."""


class ServeError(UserError, ValueError):
    """A user error of `mixtune serve` / `mixtune chat`: the message says what, where and how to fix it."""


@dataclass(frozen=True)
class ModelSource:
    """The folder to load, the run folder it came from (None for a plain checkpoint) and the name to serve."""

    model_dir: Path
    run_config: Path | None
    name: str


def resolve_source(path: str | Path) -> ModelSource:
    """The model folder of a run folder, of its `final/`, or of a checkpoint folder; ServeError otherwise."""
    path = Path(path)
    if not path.exists():
        raise ServeError(f"{path}: no such folder; give a run folder, its final/, or a Hugging Face checkpoint folder")
    if not path.is_dir():
        raise ServeError(f"{path}: is a file; give a run folder, its final/, or a Hugging Face checkpoint folder")
    if is_model_folder(path / "final"):
        config = path / "config.yaml"
        return ModelSource(path / "final", config if config.is_file() else None, path.resolve().name)
    if is_model_folder(path):
        config = path.parent / "config.yaml"
        in_run = path.name == "final" and config.is_file()
        name = path.resolve().parent.name if path.resolve().name == "final" else path.resolve().name
        return ModelSource(path, config if in_run else None, name)
    raise ServeError(f"{path}: not a model (no config.json or {MODEL_META}) nor a run folder with a trained final/")


def check_template_name(name: str | None) -> None:
    if name is not None and name not in TEMPLATE_NAMES:
        raise ServeError(f"--template {name!r}: unknown chat template; valid: {', '.join(TEMPLATE_NAMES)}")


def run_template(config: Path) -> str:
    """`data.template` of a run's resolved `config.yaml` (the recipe default `tokenizer` when the key is absent)."""
    try:
        recipe = yaml.safe_load(config.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ServeError(f"{config}: cannot read the run's config ({type(e).__name__}); pass --template") from None
    template = (recipe.get("data") or {}).get("template", "tokenizer") if isinstance(recipe, dict) else None
    if template not in TEMPLATE_NAMES:
        raise ServeError(f"{config}: data.template {template!r} is not one of {', '.join(TEMPLATE_NAMES)}; "
                         f"pass --template")
    return template


def resolve_template(source: ModelSource, tokenizer: Any, requested: str | None = None) -> tuple[str, str]:
    """(template name, why it was chosen); ServeError when no template applies."""
    check_template_name(requested)
    own = bool(getattr(tokenizer, "chat_template", None))
    no_own = (f"{source.model_dir}: the tokenizer has no chat_template; pass --template chatml or --template vicuna "
              f"(the format the model was trained in)")
    if requested is not None:
        if requested == "tokenizer" and not own:
            raise ServeError(no_own)
        return requested, "--template"
    if source.run_config is not None:
        trained = run_template(source.run_config)
        if trained == "tokenizer" and not own:
            raise ServeError(no_own)
        own_note = " (the tokenizer's own chat_template)" if trained == "tokenizer" else ""
        return trained, f"the run's {source.run_config}: it trained with data.template={trained}{own_note}"
    if own:
        return "tokenizer", f"the checkpoint tokenizer's chat_template ({source.model_dir})"
    raise ServeError(no_own)
