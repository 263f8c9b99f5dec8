"""Adapters by name: LoRA, prefix and prompt tuning through peft; LoRAMoE and the bottleneck adapter are ours.

`ADAPTERS` is the registry: name -> (apply, save, load). Saved adapters live in `<folder>/` in the adapter's own
format: peft's (so `PeftModel.from_pretrained(base, folder)` loads LoRA/prefix/prompt) or mixtune's safetensors.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from mixtune.config import AdapterConfig


def _apply_lora(model, cfg: AdapterConfig):
    from peft import LoraConfig, get_peft_model

    peft_cfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, peft_cfg)


def _apply_prefix(model, cfg: AdapterConfig):
    from peft import PrefixTuningConfig, get_peft_model

    return get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, task_type="CAUSAL_LM"))


def _apply_prompt(model, cfg: AdapterConfig):
    from peft import PromptTuningConfig, get_peft_model

    return get_peft_model(model, PromptTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, task_type="CAUSAL_LM"))


def _save_peft(model, folder: Path) -> None:
    model.save_pretrained(str(folder))


def _load_peft(base, folder: Path):
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(folder), is_trainable=False)


def _ours(module: str, kind: str) -> tuple[Callable, Callable, Callable]:
    """(apply, save, load) of one of our own adapters, imported only when used."""
    def entry(verb: str) -> Callable:
        def call(*args):
            return getattr(importlib.import_module(module), f"{verb}_{kind}")(*args)
        return call
    return entry("apply"), entry("save"), entry("load")


Apply = Callable[[Any, Any], Any]
"""(model, AdapterConfig) -> the adapted model. The registry module imports no torch: recipes validate adapter
names against it without loading the training stack."""
ADAPTERS: dict[str, tuple[Apply, Callable, Callable]] = {
    "lora": (_apply_lora, _save_peft, _load_peft),
    "prefix": (_apply_prefix, _save_peft, _load_peft),
    "prompt": (_apply_prompt, _save_peft, _load_peft),
    "loramoe": _ours("mixtune.model.loramoe", "loramoe"),
    "bottleneck": _ours("mixtune.model.bottleneck", "bottleneck"),
}


def _entry(kind: str):
    if kind not in ADAPTERS:
        raise ValueError(f"unknown adapter {kind!r}; valid: none, {', '.join(ADAPTERS)}")
    return ADAPTERS[kind]


def is_adapted(model) -> bool:
    """True when `model` already carries an adapter (a later stage continues the same adapter)."""
    return bool(getattr(model, "mixtune_adapter", None)) or hasattr(model, "peft_config")


def apply_adapter(model, cfg: AdapterConfig):
    """Wrap `model` with the adapter of `cfg` (no-op for `none` and for a model already adapted)."""
    if cfg.type == "none" or is_adapted(model):
        return model
    model = _entry(cfg.type)[0](model, cfg)
    if not hasattr(model, "peft_config"):
        model.mixtune_adapter = cfg.type
    return model


def save_adapter(model, folder: str | Path, kind: str) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _entry(kind)[1](model, folder)


def load_adapter(base, folder: str | Path, kind: str):
    return _entry(kind)[2](base, Path(folder))


def unwrap_base(model) -> torch.nn.Module:
    """The underlying transformers model (peft wraps it; our adapters modify it in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
