"""Loading a recipe: YAML, `key.sub=value` overrides, validation with `file: key.path: problem` messages, the
resolved YAML dump, and the field documentation the CLI prints as help."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from mixtune.config.base import RecipeError
from mixtune.config.recipe import Recipe


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=3e-4` → (["train", "lr"], 0.0003); the value is parsed as YAML."""
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise RecipeError(f"override {text!r}: empty key")
    return path, yaml.safe_load(raw) if raw.strip() else ""


def apply_override(tree: dict, path: list[str], value: Any) -> None:
    """Set `value` at the dotted `path` of a recipe tree; a numeric part indexes a list (`data.sources.0.count`)."""
    node: Any = tree
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        where = ".".join(path[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"override {'.'.join(path)}: {where} is not an index of a {len(node)}-item list")
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise RecipeError(f"override {'.'.join(path)}: {'.'.join(path[:depth])} is not a section")
        if last:
            node[part] = value
            return
        if node.get(part) is None:
            node[part] = {}
        node = node[part]


def format_validation_error(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"{source}: {loc}: {e['msg']}")
    return "\n".join(lines)


def load_tree(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"{path}: is a folder; -c takes a recipe YAML file (e.g. recipes/quickstart.yaml)")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe; -c takes a recipe YAML file (see recipes/)") from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not a text file ({e.reason} at byte {e.start}); -c takes a recipe YAML file") \
            from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(tree).__name__}")
    return tree


def validate(model: type[BaseModel], tree: dict, source: str) -> BaseModel:
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        raise RecipeError(format_validation_error(source, e)) from None


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (), model: type[BaseModel] = Recipe):
    """Load a YAML recipe into `model` (default `Recipe`), applying `key.sub=value` overrides first."""
    tree = load_tree(path)
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(tree, keys, value)
    return validate(model, tree, str(path))


def dump_recipe(recipe: BaseModel) -> str:
    """The resolved recipe as YAML (every default spelled out)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def describe_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, docstring) for every field, nested sections expanded, list entries as `key[].field`;
    the docstring of a field naming a registry entry (or a Literal) ends with its valid names: the recipe help."""
    rows = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        key = f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_fields(ann, key + "."))
            continue
        doc = " ".join((field.description or "").split())
        entry = _list_entry(ann)
        if entry is not None:
            how = f"A list: one entry's field is {key}.0.<field>=value (from 0); a whole list is YAML, {key}='[...]'."
            rows.append((key, "[]", f"{doc} {how}"))
            rows.extend(describe_fields(entry, key + "[]."))
            continue
        default = "" if field.is_required() else repr(field.get_default(call_default_factory=True))
        rows.append((key, default, doc + _valid_names(field)))
    return rows


def _list_entry(ann: Any) -> type[BaseModel] | None:
    """The section type of a `list[Section]` annotation, else None."""
    args = get_args(ann)
    if get_origin(ann) is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0]
    return None


def _valid_names(field: Any) -> str:
    """' Valid: a, b, c.' for a registry field (names read from the registry) or a Literal; else ''."""
    kind = (field.json_schema_extra or {}).get("registry") if isinstance(field.json_schema_extra, dict) else None
    if kind:
        from mixtune.config.base import registry_names

        return f" Valid: {', '.join(registry_names(kind))}."
    choices = [a for arg in (field.annotation, *get_args(field.annotation)) if get_origin(arg) is Literal
               for a in get_args(arg)]
    return f" One of: {', '.join(map(str, choices))}." if choices else ""
