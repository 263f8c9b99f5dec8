"""Saving and loading our own adapters (LoRAMoE, bottleneck): their tensors as safetensors plus a JSON config,
each file written atomically, and a strict load that refuses a file not matching the model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from mixtune.runs import atomic_write_bytes, atomic_write_text


def save_adapter_files(out_dir: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict,
                       weights_name: str, config_name: str) -> Path:
    """Write `tensors` and `config` into `out_dir` (each atomically); returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata={"format": "pt"})
    atomic_write_bytes(out / weights_name, blob)
    atomic_write_text(out / config_name, json.dumps(config, indent=2))
    return out


def read_adapter_config(folder: str | os.PathLike, config_name: str) -> dict:
    return json.loads((Path(folder) / config_name).read_text())


def load_adapter_tensors(model: torch.nn.Module, folder: str | os.PathLike, weights_name: str,
                         expected: dict[str, torch.Tensor]) -> None:
    """Copy the saved tensors into `model`'s parameters; every name must match `expected` exactly."""
    folder = Path(folder)
    tensors = load_file(str(folder / weights_name))
    if set(tensors) != set(expected):
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise ValueError(f"{folder}: adapter does not match the model: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)
