"""Auxiliary losses adapters add to a stage's objective: LoRAMoE's localized balancing constraint (LoRAMoE §3.2).

The model records its router gates (`mixtune.model.loramoe.loramoe_batch`); the loss over them is the pure
`mixtune.train.losses.lbc_loss`, summed here over every LoRAMoE linear of the model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mixtune.model.loramoe import recorded_gates
from mixtune.train.losses import lbc_loss


def loramoe_balance_loss(model: nn.Module, delta: float | None = None, form: str | None = None,
                         mask_padding: bool | None = None) -> Tensor:
    """Σ over all LoRAMoE linears of L_lbc for the batch of the enclosing `loramoe_batch` (not yet times β).

    delta, form and mask_padding default to the AdapterConfig given to `apply_loramoe`. With mask_padding False the
    token mask is ignored (the official code sums over padding too); negative sample indices are always dropped.
    """
    gates, (task_type, sample_index, token_mask) = recorded_gates(model)
    cfg = model.loramoe_config
    delta = cfg["lbc_delta"] if delta is None else delta
    form = cfg["lbc_form"] if form is None else form
    mask_padding = cfg["lbc_mask_padding"] if mask_padding is None else mask_padding
    n_tokens = gates[0].size(0)
    if sample_index is None:  # one sample per row: token j of the flattened (M, T) batch belongs to row j // T
        sample_index = torch.arange(n_tokens, device=task_type.device) // (n_tokens // task_type.numel())
    sample_index = sample_index.reshape(-1)  # (N,)
    mask = token_mask.reshape(-1) if (mask_padding and token_mask is not None) else None  # (N,)
    return sum(lbc_loss(g, sample_index, task_type, delta, form, mask) for g in gates)
