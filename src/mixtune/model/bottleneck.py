"""Bottleneck adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP", §2.1, Fig. 2).

Ours because peft has no Houlsby adapter. In every decoder block an adapter follows the attention output projection
and the FFN, before each residual addition:

    h ← h + up(act(down(h))),   down: d→m (nn.Linear default init), up: m→d (zeros: the block starts as identity)

Implemented by wrapping the modules (`self_attn.o_proj` and `mlp` for Llama-style blocks), not with hooks, so the
structure shows in `print(model)`. The backbone is frozen; only adapters train and are saved.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn

from mixtune.config import AdapterConfig
from mixtune.model.adapter_io import load_adapter_tensors, save_adapter_files

BOTTLENECK_TARGETS = ("self_attn.o_proj", "mlp")
"""Dotted name suffixes of the wrapped modules: attention output projection and FFN of every Llama-style block."""
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}
WEIGHTS_NAME = "bottleneck_model.safetensors"
CONFIG_NAME = "bottleneck_config.json"


class BottleneckAdapter(nn.Module):
    """x + up(act(down(x))) with down d→m and up m→d; up is zero so the adapter starts as the identity."""

    def __init__(self, dim: int, size: int, act: str = "gelu", dropout: float = 0.0, **kw) -> None:
        super().__init__()
        self.down = nn.Linear(dim, size, **kw)
        self.act = ACTIVATIONS[act]()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.Linear(size, dim, **kw)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:  # (..., d) → (..., d)
        return x + self.up(self.dropout(self.act(self.down(x))))


class WithAdapter(nn.Module):
    """Runs `inner` and passes its (tensor) output through a bottleneck adapter (Houlsby Fig. 2)."""

    def __init__(self, inner: nn.Module, adapter: BottleneckAdapter) -> None:
        super().__init__()
        self.inner = inner
        self.adapter = adapter

    def forward(self, *args, **kwargs) -> Tensor:
        return self.adapter(self.inner(*args, **kwargs))


def _hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "hidden_size"):
        raise ValueError("apply_bottleneck needs model.config.hidden_size")
    return config.hidden_size


def apply_bottleneck(
    model: nn.Module, cfg: AdapterConfig, targets: Sequence[str] = BOTTLENECK_TARGETS, act: str = "gelu"
) -> nn.Module:
    """Freeze the backbone and wrap every module whose dotted name ends with one of `targets` (in place).

    Width m = cfg.bottleneck_size, dropout cfg.dropout inside the adapter. Returns the model.
    """
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; valid: {sorted(ACTIVATIONS)}")
    for p in model.parameters():
        p.requires_grad_(False)
    dim = _hidden_size(model)
    ref = next(model.parameters())
    names = [n for n, _ in model.named_modules() if any(n == t or n.endswith("." + t) for t in targets)]
    if not names:
        raise ValueError(f"no module named *.{list(targets)} in the model")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        adapter = BottleneckAdapter(dim, cfg.bottleneck_size, act, cfg.dropout, device=ref.device, dtype=ref.dtype)
        setattr(parent, child, WithAdapter(getattr(parent, child), adapter))
    model.bottleneck_config = {
        "type": "bottleneck",
        "bottleneck_size": cfg.bottleneck_size,
        "dropout": cfg.dropout,
        "targets": list(targets),
        "act": act,
    }
    return model


def bottleneck_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapter tensors, keyed by their full parameter names."""
    return {name: p.detach() for name, p in model.named_parameters() if ".adapter." in name}


def save_bottleneck(model: nn.Module, out_dir: str | os.PathLike) -> Path:
    """Write the adapter tensors (safetensors) and `bottleneck_config.json` atomically; returns the folder."""
    return save_adapter_files(out_dir, bottleneck_state_dict(model), model.bottleneck_config, WEIGHTS_NAME, CONFIG_NAME)


def load_bottleneck(base_model: nn.Module, adapter_dir: str | os.PathLike) -> nn.Module:
    """Apply the saved adapters to `base_model` and load their weights; every tensor must match."""
    folder = Path(adapter_dir)
    saved = json.loads((folder / CONFIG_NAME).read_text())
    cfg = AdapterConfig(type="bottleneck", bottleneck_size=saved["bottleneck_size"], dropout=saved["dropout"])
    model = apply_bottleneck(base_model, cfg, targets=saved["targets"], act=saved["act"])
    load_adapter_tensors(model, folder, WEIGHTS_NAME, bottleneck_state_dict(model))
    return model
