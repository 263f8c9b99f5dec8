"""Final checkpoints: a folder `AutoModelForCausalLM.from_pretrained` loads (full fine-tuning;
`AutoModelForSequenceClassification` for a reward model) or an adapter folder `PeftModel.from_pretrained(base,
<final>/adapter)` loads (LoRA, prefix, prompt), written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from mixtune.model.adapters import save_adapter, unwrap_base
from mixtune.model.load import MODEL_META, SEQUENCE_CLASSIFICATION
from mixtune.model.reward_head import is_reward_model
from mixtune.runs import atomic_dir


def save_final(model, tokenizer, out_dir: str | Path, adapter: str, base: str | None) -> Path:
    """Save model (or adapter + pointer to its base) and tokenizer into `out_dir`, replacing it atomically."""
    out_dir = Path(out_dir)
    if adapter != "none" and base is None:
        raise ValueError("an adapter run needs model.path (the base checkpoint the adapter belongs to)")
    with atomic_dir(out_dir) as tmp:
        if adapter == "none":
            model.save_pretrained(str(tmp))
        else:
            save_adapter(model, tmp / "adapter", adapter)
            meta = {"adapter": adapter, "base": str(Path(base).resolve())}
            if is_reward_model(model):  # the adapter sits on a sequence-classification model of the base
                meta.update(head=SEQUENCE_CLASSIFICATION, pad_token_id=unwrap_base(model).config.pad_token_id)
            (tmp / MODEL_META).write_text(json.dumps(meta, indent=2))
        tokenizer.save_pretrained(str(tmp))
    return out_dir
