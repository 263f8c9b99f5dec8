"""Structured pruning: remove whole attention heads or MLP intermediate channels, rebuilding smaller nn.Linear
layers and updating the model config, so the pruned model saves and loads as a normal, smaller HF checkpoint.

Importance on calibration data (see `analysis/prune.py` for the methods' sources):
- head h of a block: Σ_tokens ‖W_o[:, h] x_h‖₂, the norm of what the head adds to the residual stream (x_h is the
  head's slice of o_proj's input). Under grouped-query attention a key-value head serves `n_rep` query heads, so the
  unit removed is the group (its key/value head and its query heads) and its importance is the sum over them.
- MLP channel j of a block: ‖X_j‖₂ · ‖W_down[:, j]‖₂, with X_j the channel's activation act(gate)·up over the tokens.
Every block removes the same number of units (one config value for all layers), each its own least important.
transformers' LlamaConfig accepts only head counts that divide hidden_size, so a head sparsity whose count does not
(e.g. 3 of 4 heads at hidden 128) removes more heads, up to the next count that does: the achieved unit sparsity is
returned and plotted, not the requested one.
"""

from __future__ import annotations

import torch
from torch import nn

from mixtune.analysis.prune import decoder_layers, input_norms, run_calibration


def _rows(layer: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    """A new Linear with only the output rows `keep`."""
    new = nn.Linear(layer.in_features, len(keep), bias=layer.bias is not None,
                    device=layer.weight.device, dtype=layer.weight.dtype)
    new.weight.data.copy_(layer.weight.data[keep])
    if layer.bias is not None:
        new.bias.data.copy_(layer.bias.data[keep])
    return new


def _cols(layer: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    """A new Linear with only the input columns `keep` (bias unchanged)."""
    new = nn.Linear(len(keep), layer.out_features, bias=layer.bias is not None,
                    device=layer.weight.device, dtype=layer.weight.dtype)
    new.weight.data.copy_(layer.weight.data[:, keep])
    if layer.bias is not None:
        new.bias.data.copy_(layer.bias.data)
    return new


def _head_layout(model) -> tuple[int, int, int]:
    """(query heads, key-value heads, head_dim) of the model's config."""
    cfg = model.config
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return heads, kv, head_dim


# ---------------------------------------------------------------------------------------------- importances
@torch.no_grad()
def head_importance(model, batches: list[dict]) -> torch.Tensor:
    """(layers, key-value groups): Σ over calibration tokens of ‖W_o,h x_h‖₂, summed over each group's heads."""
    heads, kv, head_dim = _head_layout(model)
    layers = decoder_layers(model)
    scores = torch.zeros(len(layers), heads, dtype=torch.float64)
    current: dict[str, torch.Tensor] = {}

    def hook(i: int, o_proj: nn.Linear):
        def record(_module, args):
            x = args[0].detach()[current["real"]].view(-1, heads, head_dim)  # (N, H, d)
            w = o_proj.weight.view(o_proj.out_features, heads, head_dim)  # (hidden, H, d)
            contrib = torch.einsum("nhd,ohd->nho", x, w)  # (N, H, hidden): each head's residual-stream write
            scores[i] += contrib.norm(dim=-1).sum(0).double().cpu()
        return record

    handles = [layer.self_attn.o_proj.register_forward_pre_hook(hook(i, layer.self_attn.o_proj))
               for i, layer in enumerate(layers)]
    try:
        run_calibration(model, batches, current)
    finally:
        for h in handles:
            h.remove()
    return scores.view(len(layers), kv, heads // kv).sum(-1)  # query heads of one group are contiguous


@torch.no_grad()
def channel_importance(model, batches: list[dict]) -> torch.Tensor:
    """(layers, intermediate): ‖X_j‖₂ · ‖W_down[:, j]‖₂ per MLP channel."""
    layers = decoder_layers(model)
    downs = {f"layers.{i}.mlp.down_proj": layer.mlp.down_proj for i, layer in enumerate(layers)}
    norms = input_norms(model, batches, downs)
    return torch.stack([norms[name] * m.weight.norm(dim=0).float().cpu() for name, m in downs.items()])


def units_to_remove(n_units: int, sparsity: float) -> int:
    """round(sparsity · n), at least one unit kept."""
    return min(round(sparsity * n_units), n_units - 1)


def groups_to_remove(model, sparsity: float) -> int:
    """Key-value groups to remove: round(sparsity · groups), rounded up further until the query heads left divide
    hidden_size (transformers' LlamaConfig refuses any other head count, even with head_dim given)."""
    heads, kv, _ = _head_layout(model)
    n_rep, hidden = heads // kv, model.config.hidden_size
    remove = units_to_remove(kv, sparsity)
    while remove < kv - 1 and hidden % ((kv - remove) * n_rep):
        remove += 1
    return remove


def least_important(scores: torch.Tensor, n_remove: int) -> list[torch.Tensor]:
    """Per layer, the sorted indices of the units to keep (all but its n_remove lowest scores)."""
    return [torch.sort(torch.argsort(row, stable=True)[n_remove:]).values for row in scores]


# ------------------------------------------------------------------------------------------------- surgery
@torch.no_grad()
def remove_heads(model, keep_groups: list[torch.Tensor]) -> None:
    """Keep only the key-value groups `keep_groups[i]` in block i (same count in every block); config updated."""
    heads, kv, head_dim = _head_layout(model)
    n_rep = heads // kv
    counts = {len(k) for k in keep_groups}
    if len(counts) != 1:
        raise ValueError(f"every layer must keep the same number of heads, got {sorted(counts)}")
    for layer, groups in zip(decoder_layers(model), keep_groups):
        attn = layer.self_attn
        q_heads = (groups.unsqueeze(1) * n_rep + torch.arange(n_rep)).flatten()  # query heads of the kept groups
        q_rows = (q_heads.unsqueeze(1) * head_dim + torch.arange(head_dim)).flatten()
        kv_rows = (groups.unsqueeze(1) * head_dim + torch.arange(head_dim)).flatten()
        attn.q_proj, attn.o_proj = _rows(attn.q_proj, q_rows), _cols(attn.o_proj, q_rows)
        attn.k_proj, attn.v_proj = _rows(attn.k_proj, kv_rows), _rows(attn.v_proj, kv_rows)
    kept = counts.pop()
    model.config.num_attention_heads = kept * n_rep
    model.config.num_key_value_heads = kept
    model.config.head_dim = head_dim  # stated explicitly: hidden_size // heads no longer gives it


@torch.no_grad()
def remove_channels(model, keep_channels: list[torch.Tensor]) -> None:
    """Keep only the MLP channels `keep_channels[i]` of block i (same count in every block); config updated."""
    counts = {len(k) for k in keep_channels}
    if len(counts) != 1:
        raise ValueError(f"every layer must keep the same number of channels, got {sorted(counts)}")
    for layer, keep in zip(decoder_layers(model), keep_channels):
        mlp = layer.mlp
        mlp.gate_proj, mlp.up_proj = _rows(mlp.gate_proj, keep), _rows(mlp.up_proj, keep)
        mlp.down_proj = _cols(mlp.down_proj, keep)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(keep)
    model.config.intermediate_size = counts.pop()


def prune_structured(model, method: str, sparsity: float, batches: list[dict]) -> dict[str, float]:
    """Remove round(sparsity · units) heads (`heads`, key-value groups) or MLP channels (`channels`) from every block,
    in place; returns {units_before, units_after}."""
    if method == "heads":
        scores = head_importance(model, batches)
        remove_heads(model, least_important(scores, groups_to_remove(model, sparsity)))
        after = model.config.num_key_value_heads
    elif method == "channels":
        scores = channel_importance(model, batches)
        remove_channels(model, least_important(scores, units_to_remove(scores.shape[1], sparsity)))
        after = model.config.intermediate_size
    else:
        raise ValueError(f"unknown structured method {method!r}; valid: heads, channels")
    return {"units_before": float(scores.shape[1]), "units_after": float(after)}
