"""Build a Llama-architecture model from a size config, or load a local Hugging Face checkpoint with its tokenizer.

Nothing is fetched from a hub: every `from_pretrained` call gets `local_files_only=True`. A mixtune run's `final/`
folder is itself a loadable checkpoint: full fine-tuning saves the model there; an adapter run saves the adapter in
`final/adapter/` and names its base model in `final/mixtune_model.json`, and loading the folder restores both.

Dtype and attention (`model.dtype`, `model.attn_implementation`): `auto` loads float32 on CPU and bfloat16 on CUDA;
a checkpoint keeps transformers' own attention choice unless the recipe names one; flash-attention-2 is checked
here (CUDA, the flash-attn package, a half dtype) so a wrong setting fails in one line before anything is written.
"""

from __future__ import annotations

import importlib.util
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
from mixtune.model.folders import MODEL_META, ModelLoadError, model_config, read_model_meta, resolve_final

SEQUENCE_CLASSIFICATION = "sequence_classification"
"""`head` of an adapter folder's meta whose model is a reward model (a scalar head on the base checkpoint)."""

__all__ = ["MODEL_META", "SEQUENCE_CLASSIFICATION", "ModelLoadError", "build_llama", "count_parameters",
           "load_checkpoint", "load_model_and_tokenizer", "load_tokenizer", "prepare_tokenizer", "read_model_meta",
           "recipe_tokenizer", "resolve_dtype"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device | str | None = None) -> torch.dtype:
    """`model.dtype` as a torch dtype: `auto` is bfloat16 on CUDA and float32 elsewhere."""
    if name != "auto":
        return DTYPES[name]
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available()
                                                                          else "cpu")
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def check_attention(attn: str, dtype: torch.dtype) -> None:
    """flash_attention_2 needs a CUDA GPU, the flash-attn package and a half dtype; say which is missing."""
    if attn != "flash_attention_2":
        return
    if not torch.cuda.is_available():
        raise ModelLoadError("model.attn_implementation=flash_attention_2 needs a CUDA GPU; use sdpa on this machine")
    if importlib.util.find_spec("flash_attn") is None:
        raise ModelLoadError("model.attn_implementation=flash_attention_2 needs the flash-attn package "
                             "(`make install-gpu`), or use model.attn_implementation=sdpa")
    if dtype not in (torch.bfloat16, torch.float16):
        raise ModelLoadError(f"model.attn_implementation=flash_attention_2 runs in bfloat16/float16, not {dtype}; "
                             "set model.dtype=bfloat16 (or auto)")


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
    dtype = resolve_dtype(cfg.dtype)
    attn = "sdpa" if cfg.attn_implementation == "auto" else cfg.attn_implementation
    check_attention(attn, dtype)
    llama_cfg._attn_implementation = attn
    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_cfg).to(dtype)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"tokenizer folder {path}: no such folder; set model.tokenizer=/path/to/tokenizer "
                             "(or model.path to a checkpoint that holds its tokenizer)")
    if not (path / "tokenizer_config.json").exists() and not (path / "tokenizer.json").exists():
        raise ModelLoadError(f"{path}: no tokenizer files (tokenizer.json / tokenizer_config.json); "
                             "set model.tokenizer to the folder that holds them")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token_id is None:  # many base checkpoints ship without one; padding is masked out anyway
        tok.pad_token = tok.eos_token
    return tok


def load_checkpoint(path: str | Path, attn_implementation: str = "auto", dtype: str = "auto", head: str | None = None,
                    pad_token_id: int | None = None) -> torch.nn.Module:
    """Load a full checkpoint folder, or a mixtune adapter folder (base + `adapter/`); a run folder loads its
    final/. `attn_implementation` "auto" keeps transformers' choice for the checkpoint.

    A folder whose config names a `...ForSequenceClassification` architecture (a reward model), or an adapter folder
    whose meta says `head: sequence_classification`, loads as `AutoModelForSequenceClassification` (`head` forces
    it for a base checkpoint; `pad_token_id` is the reward model's)."""
    path = resolve_final(path)
    meta = read_model_meta(path)
    if meta and meta.get("adapter", "none") != "none":
        from mixtune.model.adapters import load_adapter

        base_path = Path(meta["base"])  # relative: inside this folder (a self-contained `mixtune export`)
        base = load_checkpoint(base_path if base_path.is_absolute() else path / base_path, attn_implementation,
                               dtype, head=meta.get("head"), pad_token_id=meta.get("pad_token_id"))
        return load_adapter(base, path / "adapter", meta["adapter"])
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path}: not a checkpoint folder (no config.json); point model.path at a Hugging Face "
                             "checkpoint folder or a mixtune run folder")
    torch_dtype = resolve_dtype(dtype)
    check_attention(attn_implementation, torch_dtype)
    attn = {} if attn_implementation == "auto" else {"attn_implementation": attn_implementation}
    architectures = model_config(path).get("architectures") or []
    if head == SEQUENCE_CLASSIFICATION or any(a.endswith("ForSequenceClassification") for a in architectures):
        extra = {"num_labels": 1} if head == SEQUENCE_CLASSIFICATION else {}
        if pad_token_id is not None:
            extra["pad_token_id"] = pad_token_id
        return AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True, dtype=torch_dtype,
                                                                  **attn, **extra)
    return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch_dtype, **attn)


def recipe_tokenizer(cfg: ModelConfig, tokenizer_path: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a model section: `model.tokenizer`, else the checkpoint's, else `tokenizer_path` (the
    mini-lab tokenizer a built model uses)."""
    path = resolve_final(cfg.path) if cfg.path else None
    tok_path = cfg.tokenizer or path or tokenizer_path
    if tok_path is None:
        raise ModelLoadError("model: give model.path (a local checkpoint) or model.tokenizer to build a new model")
    return load_tokenizer(tok_path)


def prepare_tokenizer(cfg: ModelConfig, template: str, tokenizer_path: str | None = None, log=print,
                      required: bool = True) -> PreTrainedTokenizerBase:
    """The recipe's tokenizer with `data.template` resolved (`auto`: the checkpoint's own, else its family's by
    config.json `model_type`) and installed as its chat_template, so the model is saved with the template it was
    trained with; each warning is logged as one line. With `required=False` (evaluation, which can fall back to
    completion prompts) a tokenizer without a chat template is returned as it is for `data.template: tokenizer`."""
    from mixtune.data.templates import install_template

    tokenizer = recipe_tokenizer(cfg, tokenizer_path)
    if not required and template == "tokenizer" and not getattr(tokenizer, "chat_template", None):
        return tokenizer
    model_type = model_config(resolve_final(cfg.path)).get("model_type") if cfg.path else "llama"
    _, warnings = install_template(tokenizer, template, model_type)
    for line in warnings:
        log(f"warning: {line}")
    return tokenizer


def load_model_and_tokenizer(cfg: ModelConfig, tokenizer_path: str | None = None, seed: int = 0,
                             tokenizer: PreTrainedTokenizerBase | None = None):
    """(model, tokenizer): from `cfg.path` when set (a checkpoint, or a run folder's final/), else a new Llama built
    from the size fields. A built model needs a tokenizer folder: `cfg.tokenizer` or `tokenizer_path`. A tokenizer
    already loaded (`prepare_tokenizer`) is used as it is."""
    path = resolve_final(cfg.path) if cfg.path else None
    tokenizer = tokenizer if tokenizer is not None else recipe_tokenizer(cfg, tokenizer_path)
    if path is not None:
        model = load_checkpoint(path, cfg.attn_implementation, cfg.dtype)
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
