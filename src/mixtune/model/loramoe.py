"""LoRAMoE (Dou et al., arXiv 2312.09979, ACL 2024): LoRA experts with a router on every FFN linear.

Ours because no maintained library implements it (METHODS.md §3; LLaMA-Factory issue 2749). Each target linear W0
(gate_proj, up_proj, down_proj of every block) becomes

    h = W0 x + (alpha / r) Σ_i g_i(x) B_i A_i x,    g = softmax(W_r x) in fp32       (LoRAMoE eq. 4–5)

with E experts (A_i: r×in Kaiming-uniform, B_i: out×r zeros) and a router W_r: in→E (no bias, Kaiming-uniform).
The backbone is frozen; only routers and experts train and are saved. Because g depends on x, the experts cannot be
merged into W0 (unlike LoRA): inference keeps the router, and needs no task type.

Training with the localized balancing constraint (LoRAMoE §3.2): the model only records its gates inside
`loramoe_batch`; training sums the pure `mixtune.train.losses.lbc_loss` over them:

    with loramoe_batch(model, task_type, sample_index=..., token_mask=...):
        out = model(input_ids, ...)
        loss = ce + cfg.lbc_weight * mixtune.train.adapter_losses.loramoe_balance_loss(model)
    loss.backward()

Outside `loramoe_batch` no gates are kept (no memory cost at inference).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from mixtune.config import AdapterConfig
from mixtune.model.adapter_io import load_adapter_tensors, save_adapter_files

LORAMOE_TARGETS = ("gate_proj", "up_proj", "down_proj")
"""Default target linears: the FFN projections of Llama-style blocks."""
WEIGHTS_NAME = "loramoe_model.safetensors"
CONFIG_NAME = "loramoe_config.json"


class LoRAMoELinear(nn.Module):
    """A frozen nn.Linear plus E LoRA experts mixed by a dense softmax router (LoRAMoE eq. 4–5).

    Experts are stacked, lora_A (E, r, in) and lora_B (E, out, r), and run as two matmuls, not a loop.
    When `record_gates` is on (inside `loramoe_batch`), the last forward's gates (N_tokens, E) fp32 stay in `gates`.
    """

    def __init__(self, base: nn.Linear, num_experts: int, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.num_experts, self.r, self.scaling = num_experts, r, alpha / r
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.router = nn.Linear(base.in_features, num_experts, bias=False, **kw)
        self.lora_A = nn.Parameter(torch.empty(num_experts, r, base.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(num_experts, base.out_features, r, **kw))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.record_gates = False
        self.gates: Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """A and W_r Kaiming-uniform (a=√5, fan_in = in, as nn.Linear and the official code); B zeros."""
        nn.init.kaiming_uniform_(self.router.weight, a=math.sqrt(5))
        # A viewed as (E·r, in) so that fan_in is `in` for every expert, as for E separate nn.Linear(in, r).
        nn.init.kaiming_uniform_(self.lora_A.data.view(-1, self.lora_A.size(-1)), a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def forward(self, x: Tensor) -> Tensor:
        result = self.base(x)  # (..., out)
        gates = torch.softmax(self.router(x).float(), dim=-1)  # (..., E) fp32 routing (LoRAMoE eq. 5)
        if self.record_gates:
            self.gates = gates.reshape(-1, self.num_experts)  # (N, E) kept for the balancing loss
        E, r = self.num_experts, self.r
        hidden = self.dropout(x) @ self.lora_A.reshape(E * r, -1).t()  # (..., E·r) = A_i x for every expert
        hidden = hidden.unflatten(-1, (E, r)) * gates.to(hidden.dtype).unsqueeze(-1)  # (..., E, r) g_i A_i x
        b_flat = self.lora_B.permute(1, 0, 2).reshape(self.lora_B.size(1), E * r)  # (out, E·r)
        delta = hidden.flatten(-2) @ b_flat.t()  # (..., out) = Σ_i g_i B_i A_i x
        return result + self.scaling * delta.to(result.dtype)

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, r={self.r}, scaling={self.scaling:g}"


# ---------------------------------------------------------------------------------------------------- apply
def apply_loramoe(model: nn.Module, cfg: AdapterConfig, target_modules: Sequence[str] = LORAMOE_TARGETS) -> nn.Module:
    """Freeze the backbone and wrap every nn.Linear whose last name is in `target_modules` (in place; returns model).

    Uses cfg.num_experts, cfg.r, cfg.alpha, cfg.dropout; the balancing settings (lbc_*) are kept on the model for
    `loramoe_balance_loss`. cfg.target_modules is LoRA's list and is not used: LoRAMoE targets the FFN by default.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in target_modules and isinstance(module, nn.Linear)
    ]
    if not targets:
        raise ValueError(f"no nn.Linear named {list(target_modules)} in the model")
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRAMoELinear(module, cfg.num_experts, cfg.r, cfg.alpha, cfg.dropout))
    model.loramoe_config = {
        "type": "loramoe",
        "num_experts": cfg.num_experts,
        "r": cfg.r,
        "alpha": cfg.alpha,
        "dropout": cfg.dropout,
        "lbc_weight": cfg.lbc_weight,
        "lbc_delta": cfg.lbc_delta,
        "lbc_form": cfg.lbc_form,
        "lbc_mask_padding": cfg.lbc_mask_padding,
        "target_modules": list(target_modules),
    }
    return model


def loramoe_layers(model: nn.Module) -> list[LoRAMoELinear]:
    """Every LoRAMoE linear of the model, in module order."""
    return [m for m in model.modules() if isinstance(m, LoRAMoELinear)]


def loramoe_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the router and expert tensors (what is trained and saved), keyed by their full parameter names."""
    return {
        name: p.detach()
        for name, p in model.named_parameters()
        if name.endswith((".router.weight", ".lora_A", ".lora_B"))
    }


# ---------------------------------------------------------------------------------------------- balancing loss
@contextmanager
def loramoe_batch(
    model: nn.Module, task_type: Tensor, sample_index: Tensor | None = None, token_mask: Tensor | None = None
) -> Iterator[None]:
    """Record router gates for one batch so `loramoe_balance_loss` can be computed; forget them on exit.

    task_type (M,): 1 world knowledge / closed-book QA, 0 other, one per sample. sample_index (B, T): for packed rows,
    the index into task_type of the sample each token belongs to (negative: padding); None means one sample per row
    (sample m = row m). token_mask (B, T): 1 real token, 0 padding (usually the attention mask).
    """
    layers = loramoe_layers(model)
    for layer in layers:
        layer.record_gates, layer.gates = True, None
    model._loramoe_batch = (task_type, sample_index, token_mask)
    try:
        yield
    finally:
        for layer in layers:
            layer.record_gates, layer.gates = False, None
        del model._loramoe_batch


def recorded_gates(model: nn.Module) -> tuple[list[Tensor], tuple[Tensor, Tensor | None, Tensor | None]]:
    """The gates (N, E) every LoRAMoE linear recorded in the enclosing `loramoe_batch`, in module order, and that
    batch's (task_type, sample_index, token_mask). The balancing loss over them is summed in training
    (`mixtune.train.adapter_losses.loramoe_balance_loss`): the model only records."""
    if not hasattr(model, "_loramoe_batch"):
        raise RuntimeError("the LoRAMoE balancing loss needs the forward pass to run inside `with loramoe_batch(...)`")
    layers = loramoe_layers(model)
    if any(layer.gates is None for layer in layers):
        raise RuntimeError("no gates recorded: run the forward pass inside `with loramoe_batch(...)`")
    return [layer.gates for layer in layers], model._loramoe_batch


# ------------------------------------------------------------------------------------------------ save / load
def save_loramoe(model: nn.Module, out_dir: str | os.PathLike) -> Path:
    """Write routers + experts (safetensors) and `loramoe_config.json` to out_dir, atomically; returns the folder."""
    return save_adapter_files(out_dir, loramoe_state_dict(model), model.loramoe_config, WEIGHTS_NAME, CONFIG_NAME)


def load_loramoe(base_model: nn.Module, adapter_dir: str | os.PathLike) -> nn.Module:
    """Apply LoRAMoE to `base_model` as saved in adapter_dir and load routers + experts; every tensor must match."""
    folder = Path(adapter_dir)
    saved = json.loads((folder / CONFIG_NAME).read_text())
    targets = saved.pop("target_modules")
    model = apply_loramoe(base_model, AdapterConfig(**saved), target_modules=targets)
    load_adapter_tensors(model, folder, WEIGHTS_NAME, loramoe_state_dict(model))
    return model
