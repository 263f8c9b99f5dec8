"""Final checkpoints: a folder `AutoModelForCausalLM.from_pretrained` loads (full fine-tuning) or an adapter folder
`PeftModel.from_pretrained(base, <final>/adapter)` loads (LoRA, prefix, prompt), written atomically."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from mixtune.model.adapters import save_adapter
from mixtune.model.load import MODEL_META


def save_final(model, tokenizer, out_dir: str | Path, adapter: str, base: str | None) -> Path:
    """Save model (or adapter + pointer to its base) and tokenizer into `out_dir`, replacing it atomically."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".tmp-{out_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if adapter == "none":
        model.save_pretrained(str(tmp))
    else:
        if base is None:
            raise ValueError("an adapter run needs model.path (the base checkpoint the adapter belongs to)")
        save_adapter(model, tmp / "adapter", adapter)
        (tmp / MODEL_META).write_text(json.dumps({"adapter": adapter, "base": str(Path(base).resolve())}, indent=2))
    tokenizer.save_pretrained(str(tmp))
    for f in tmp.rglob("*"):
        if f.is_file():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
    old = out_dir.with_name(f".old-{out_dir.name}")
    if out_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir
