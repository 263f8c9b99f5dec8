"""Pruning a Llama-architecture causal LM: unstructured (magnitude, Wanda) and structured (attention heads, MLP
channels), leaving a normal Hugging Face checkpoint.

- magnitude (Han et al. 2015): drop the weights of smallest |W|, either per matrix (`magnitude_layer`: every
  decoder linear layer at the same sparsity) or with one threshold over all decoder linear layers at once
  (`magnitude_global`: layers get different sparsities).
- Wanda (Sun et al. 2023, arXiv 2306.11695, eq. 1): score S_ij = |W_ij| · ‖X_j‖₂, where ‖X_j‖₂ is the L2 norm of
  input feature j over all calibration tokens, compared within each output row (the paper's per-output comparison
  group); no weight update. As the official code, layers are pruned one decoder layer after another and each
  layer's activations are measured on the model whose earlier layers are already pruned.
- Structured: remove whole attention heads (key-value groups under grouped-query attention) or MLP intermediate
  channels by an activation-aware importance on the calibration data: a head's importance is Σ_tokens ‖W_o,h x_h‖₂
  (the norm of its contribution to the residual stream), a channel's is ‖X_j‖₂ · ‖W_down[:, j]‖₂ (Wanda's score
  summed over the channel's column of down_proj). The smaller nn.Linear layers are rebuilt and the config updated
  (num_attention_heads, num_key_value_heads, head_dim kept, intermediate_size), so the saved checkpoint is genuinely
  smaller. A Llama config has one head count and one intermediate size for all layers, so every layer loses the
  same number of heads / channels (each layer its own least important ones).

Unstructured pruning keeps shapes and writes exact zeros; the embeddings and the output layer are never pruned.
Ours: torch's `nn.utils.prune` keeps masks as forward hooks and reparametrised weights (not a plain checkpoint) and
does neither Wanda nor a rebuild of smaller layers.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The decoder linear layers that pruning touches (attention and MLP of every block)."""


def decoder_layers(model) -> nn.ModuleList:
    """The transformer blocks of a Llama-style causal LM (`model.model.layers`)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no `model.layers`; pruning supports Llama-style causal LMs")
    return layers


def decoder_linears(model, layer_index: int | None = None) -> dict[str, nn.Linear]:
    """name -> nn.Linear of the decoder's attention and MLP projections (of one block when `layer_index` given)."""
    layers = decoder_layers(model)
    chosen = range(len(layers)) if layer_index is None else [layer_index]
    out = {}
    for i in chosen:
        for name, module in layers[i].named_modules():
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in LINEAR_NAMES:
                out[f"layers.{i}.{name}"] = module
    return out


# ------------------------------------------------------------------------------------------ scores and masks
def wanda_scores(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """Wanda's S = |W| · ‖X_j‖₂ (Sun et al. eq. 1): weight (out, in), input_norm (in,) → (out, in)."""
    return weight.abs() * input_norm.to(weight.dtype).unsqueeze(0)


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k lowest entries of a 1-D tensor (ties broken by position, so the count is exact)."""
    drop = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        drop[torch.argsort(scores, stable=True)[:k]] = True
    return drop


def keep_mask(scores: torch.Tensor, sparsity: float, group: str = "matrix") -> torch.Tensor:
    """Bool mask (same shape) keeping all but the round(sparsity · n) lowest scores of each group: the whole matrix
    (`matrix`) or each output row (`row`, Wanda's comparison group)."""
    if group == "matrix":
        return ~_lowest(scores.flatten(), round(sparsity * scores.numel())).view_as(scores)
    if group == "row":
        k = round(sparsity * scores.shape[1])
        return torch.stack([~_lowest(row, k) for row in scores])
    raise ValueError(f"unknown comparison group {group!r}; valid: matrix, row")


def global_keep_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One threshold over all matrices: the round(sparsity · Σn) lowest scores of their union are dropped."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    drop = _lowest(flat, round(sparsity * flat.numel()))
    out, at = {}, 0
    for name, s in scores.items():
        out[name] = ~drop[at:at + s.numel()].view_as(s)
        at += s.numel()
    return out


# ---------------------------------------------------------------------------------------------- calibration
@torch.no_grad()
def input_norms(model, batches: Iterable[dict], linears: dict[str, nn.Linear]) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ over all real (non-padding) calibration tokens of the input of each linear layer: name -> (in,).

    `batches`: packed micro-batches (`data/sft_dataset.batches_for_step`): input_ids, position_ids, example_index."""
    sums = {name: torch.zeros(m.in_features, dtype=torch.float64) for name, m in linears.items()}
    current: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(_module, args):
            x = args[0].detach().double()[current["real"]]  # (N_real, in)
            sums[name] += (x * x).sum(0).cpu()
        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in linears.items()]
    try:
        run_calibration(model, batches, current)
    finally:
        for h in handles:
            h.remove()
    return {name: s.sqrt().float() for name, s in sums.items()}


def run_calibration(model, batches: Iterable[dict], current: dict) -> None:
    """Forward every calibration batch (packed rows: restarting positions, no attention mask, no cache)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for batch in batches:
        current["real"] = (batch["example_index"] >= 0).to(device)  # (B, T)
        model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
              use_cache=False)
    model.train(was_training)


# --------------------------------------------------------------------------------------------- unstructured
@torch.no_grad()
def prune_unstructured(model, method: str, sparsity: float, batches: list[dict] | None = None
                       ) -> dict[str, torch.Tensor]:
    """Zero weights of the decoder linear layers in place; returns name -> keep mask (bool, the weight's shape).

    method: magnitude_layer | magnitude_global | wanda (needs calibration `batches`)."""
    if method == "magnitude_layer":
        masks = {n: keep_mask(m.weight.abs(), sparsity, "matrix") for n, m in decoder_linears(model).items()}
    elif method == "magnitude_global":
        masks = global_keep_masks({n: m.weight.abs() for n, m in decoder_linears(model).items()}, sparsity)
    elif method == "wanda":
        if not batches:
            raise ValueError("wanda needs calibration batches")
        masks = {}
        for i in range(len(decoder_layers(model))):  # sequential: later layers see the earlier pruned ones
            linears = decoder_linears(model, i)
            norms = input_norms(model, batches, linears)
            for name, m in linears.items():
                masks[name] = keep_mask(wanda_scores(m.weight, norms[name]), sparsity, "row")
                m.weight.mul_(masks[name])
        return masks
    else:
        raise ValueError(f"unknown unstructured method {method!r}; valid: magnitude_layer, magnitude_global, wanda")
    apply_masks(model, masks)
    return masks


@torch.no_grad()
def apply_masks(model, masks: dict[str, torch.Tensor]) -> None:
    """Set the masked-out weights to exact zeros (again, e.g. after a recovery SFT)."""
    linears = decoder_linears(model)
    for name, mask in masks.items():
        linears[name].weight.mul_(mask.to(linears[name].weight.device))


def linear_sparsity(model) -> float:
    """Share of exact zeros over all decoder linear weights."""
    weights = [m.weight for m in decoder_linears(model).values()]
    return float(sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights))
