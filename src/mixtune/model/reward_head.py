"""A reward model from a causal LM: the same backbone with a scalar head on the last real token (InstructGPT §3.5).

The layout is transformers' sequence classification (`AutoModelForSequenceClassification`, `num_labels=1`, the
head named `score`), so a saved full model loads with `AutoModelForSequenceClassification.from_pretrained(folder)`.
With LoRA the reward model continues the causal model's adapter (same rank, targets and weights) as a peft
`SEQ_CLS` adapter whose `modules_to_save=["score"]` trains and saves the head with it, so
`PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base, num_labels=1), adapter)` loads
it. The head starts from the seeded default initialisation (normal, std = initializer_range).

Ours only in wiring: transformers builds the model and pools the last non-pad token; peft holds the adapter.
"""

from __future__ import annotations

import copy

import torch
from transformers import AutoModelForSequenceClassification

from mixtune.model.adapters import unwrap_base

REWARD_ADAPTERS = ("none", "lora")
"""Adapters a reward model can be trained with."""


def is_reward_model(model) -> bool:
    """A sequence-classification model (the reward stage's output), not a generator."""
    return type(unwrap_base(model)).__name__.endswith("ForSequenceClassification")


def _whole(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with FSDP-sharded tensors (DTensors) made whole on every rank (collective: every rank calls it, with
    the same keys in the same order); plain tensors as they are."""
    from torch.distributed.tensor import DTensor

    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state.items()}


def _backbone_state(causal) -> dict[str, torch.Tensor]:
    """The causal LM's backbone weights without adapter weights (peft's `base_layer` names undone), whole."""
    backbone = getattr(causal, causal.base_model_prefix)
    return _whole({k.replace(".base_layer.", "."): v for k, v in backbone.state_dict().items() if "lora_" not in k})


def reward_model_from_causal(model, pad_token_id: int, seed: int = 0):
    """A new reward model holding `model`'s backbone (and, for a peft LoRA model, a copy of its adapter).

    `model`: a transformers causal LM, or a peft LoRA model around one. Raises ValueError for other adapters."""
    causal = unwrap_base(model)
    peft_config = getattr(model, "peft_config", None)
    if getattr(model, "mixtune_adapter", None) or (peft_config and peft_config["default"].peft_type.value != "LORA"):
        raise ValueError(f"a reward model is trained with adapter {' or '.join(REWARD_ADAPTERS)} only")
    config = copy.deepcopy(causal.config)
    config.num_labels, config.pad_token_id, config.architectures = 1, pad_token_id, None
    torch.manual_seed(seed)
    reward = AutoModelForSequenceClassification.from_config(config, dtype=causal.dtype)
    getattr(reward, reward.base_model_prefix).load_state_dict(_backbone_state(causal), strict=True)
    reward.to(next(causal.parameters()).device)
    if not peft_config:
        return reward
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    lora = peft_config["default"]
    reward = get_peft_model(reward, LoraConfig(
        r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout, target_modules=lora.target_modules,
        task_type="SEQ_CLS", modules_to_save=["score"]))
    state = get_peft_model_state_dict(reward)  # the new head (modules_to_save) ...
    state.update(_whole(get_peft_model_state_dict(model)))  # ... and the causal model's LoRA weights
    set_peft_model_state_dict(reward, state)
    return reward
