"""Build a Llama-architecture model from a size config, or load a local Hugging Face checkpoint with its tokenizer.

Nothing is fetched from a hub: every `from_pretrained` call gets `local_files_only=True`. A mixtune run's `final/`
folder is itself a loadable checkpoint: full fine-tuning saves the model there; an adapter run saves the adapter in
`final/adapter/` and names its base model in `final/mixtune_model.json`, and loading the folder restores both.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from mixtune.config import ModelConfig

MODEL_META = "mixtune_model.json"
SEQUENCE_CLASSIFICATION = "sequence_classification"
"""`head` of an adapter folder's meta whose model is a reward model (a scalar head on the base checkpoint)."""


class ModelLoadError(ValueError):
    """A model or tokenizer folder that cannot be loaded; the message names the folder and what is missing."""


def build_llama(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised Llama sized by `cfg`, with the tokenizer's vocabulary and special-token ids."""
    llama_cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    llama_cfg._attn_implementation = cfg.attn_implementation
    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_cfg)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    path = Path(path)
    if not (path / "tokenizer_config.json").exists() and not (path / "tokenizer.json").exists():
        raise ModelLoadError(f"{path}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token_id is None:  # many base checkpoints ship without one; padding is masked out anyway
        tok.pad_token = tok.eos_token
    return tok


def read_model_meta(path: str | Path) -> dict | None:
    meta = Path(path) / MODEL_META
    return json.loads(meta.read_text()) if meta.exists() else None


def load_checkpoint(path: str | Path, attn_implementation: str = "sdpa", head: str | None = None,
                    pad_token_id: int | None = None) -> torch.nn.Module:
    """Load a full checkpoint folder, or a mixtune adapter folder (base + `adapter/`).

    A folder whose config names a `...ForSequenceClassification` architecture (a reward model), or an adapter folder
    whose meta says `head: sequence_classification`, loads as `AutoModelForSequenceClassification` (`head` forces
    it for a base checkpoint; `pad_token_id` is the reward model's)."""
    path = Path(path)
    meta = read_model_meta(path)
    if meta and meta.get("adapter", "none") != "none":
        from mixtune.model.adapters import load_adapter

        base_path = Path(meta["base"])  # relative: inside this folder (a self-contained `mixtune export`)
        base = load_checkpoint(base_path if base_path.is_absolute() else path / base_path, attn_implementation,
                               head=meta.get("head"), pad_token_id=meta.get("pad_token_id"))
        return load_adapter(base, path / "adapter", meta["adapter"])
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path}: not a checkpoint folder (no config.json)")
    architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    if head == SEQUENCE_CLASSIFICATION or any(a.endswith("ForSequenceClassification") for a in architectures):
        extra = {"num_labels": 1} if head == SEQUENCE_CLASSIFICATION else {}
        if pad_token_id is not None:
            extra["pad_token_id"] = pad_token_id
        return AutoModelForSequenceClassification.from_pretrained(
            str(path), local_files_only=True, dtype=torch.float32, attn_implementation=attn_implementation, **extra)
    return AutoModelForCausalLM.from_pretrained(
        str(path), local_files_only=True, dtype=torch.float32, attn_implementation=attn_implementation
    )


def load_model_and_tokenizer(cfg: ModelConfig, tokenizer_path: str | None = None, seed: int = 0):
    """(model, tokenizer): from `cfg.path` when set, else a new Llama built from the size fields.

    A built model needs a tokenizer folder: `cfg.tokenizer` or `tokenizer_path` (the mini-lab tokenizer).
    """
    tok_path = cfg.tokenizer or (cfg.path if cfg.path else tokenizer_path)
    if tok_path is None:
        raise ModelLoadError("model: give model.path (a local checkpoint) or model.tokenizer to build a new model")
    tokenizer = load_tokenizer(tok_path)
    if cfg.path:
        model = load_checkpoint(cfg.path, cfg.attn_implementation)
    else:
        model = build_llama(cfg, tokenizer, seed)
    return model, tokenizer


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
