"""Recipe sections of the model floor: which model (a local checkpoint or a built tiny Llama) and its adapter."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mixtune.config.base import Section, check_name


class ModelConfig(Section):
    """Either a local Hugging Face checkpoint (`path`) or a Llama-architecture model built from the size fields."""

    path: str | None = None
    """Local checkpoint folder (config.json + safetensors + tokenizer), or a mixtune run folder (its final/ is used).
    Nothing is fetched from a hub."""
    tokenizer: str | None = None
    """Tokenizer folder; defaults to `path`."""
    hidden_size: int = Field(128, ge=8)
    """Width of a built model."""
    intermediate_size: int = Field(512, ge=8)
    """FFN width of a built model."""
    num_layers: int = Field(4, ge=1)
    """Transformer blocks of a built model."""
    num_heads: int = Field(4, ge=1)
    """Attention heads of a built model."""
    num_kv_heads: int | None = None
    """Key/value heads (grouped-query attention); defaults to num_heads."""
    max_position_embeddings: int = Field(1024, ge=16)
    """Longest sequence a built model supports."""
    rope_theta: float = Field(10000.0, gt=0)
    """RoPE base of a built model."""
    tie_word_embeddings: bool = True
    """Share input and output embeddings in a built model."""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    """Attention kernel. auto: sdpa for a built model, transformers' own choice for a checkpoint; flash_attention_2
    needs a CUDA GPU, the flash-attn package (`make install-gpu`) and dtype bfloat16/float16 (packed rows then go
    through its varlen kernel, one flattened row per micro-batch, so examples never attend to each other)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight dtype. auto: float32 on CPU, bfloat16 on CUDA (a 7B model in 14 GB instead of 28; full fine-tuning
    then updates bf16 weights, with no fp32 master copy, while LoRA adapters stay fp32)."""


class AdapterConfig(Section):
    """Parameter-efficient fine-tuning; `none` trains every weight."""

    type: str = Field("none", json_schema_extra={"registry": "adapter"})
    """Adapter kind: none or a name of the adapter registry (lora, loramoe, prefix, prompt, bottleneck)."""
    r: int = Field(8, ge=1)
    """LoRA / LoRAMoE rank."""
    alpha: float = Field(16.0, gt=0)
    """LoRA / LoRAMoE scaling numerator (scale = alpha / r)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapter input."""
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """LoRA: module names to adapt."""
    num_experts: int = Field(6, ge=2)
    """LoRAMoE: experts per linear (the first half form the world-knowledge group)."""
    lbc_weight: float = Field(0.1, ge=0)
    """LoRAMoE: beta, weight of the localized balancing loss (0 disables it)."""
    lbc_delta: float = Field(0.1, ge=0, lt=1)
    """LoRAMoE: delta, the importance coefficient margin."""
    lbc_form: Literal["cv2", "var_mean"] = "cv2"
    """LoRAMoE: CV² = Var/Mean² (official code) or Var/Mean (paper)."""
    lbc_mask_padding: bool = True
    """LoRAMoE: sum importance over real tokens only (the official code also sums padding)."""
    num_virtual_tokens: int = Field(16, ge=1)
    """Prefix / prompt tuning: virtual tokens."""
    bottleneck_size: int = Field(32, ge=1)
    """Bottleneck adapter width m."""

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        return check_name("adapter", value)
