"""`mixtune export RUN_DIR --out DIR [--merge]`: a trained model as a folder other tools load.

- `--merge` (LoRA only): W0 ← W0 + (alpha/r)·B·A in every adapted linear (peft's `merge_and_unload`), saved with the
  tokenizer as a plain Hugging Face checkpoint: `AutoModelForCausalLM.from_pretrained(DIR)` loads it, no peft needed.
- Without `--merge`: a self-contained copy. The base model is saved as a plain checkpoint in `DIR/base/`, the adapter
  in `DIR/adapter/` (peft's format for LoRA / prefix / prompt, mixtune's safetensors for LoRAMoE / bottleneck), the
  tokenizer in `DIR/`, and `DIR/mixtune_model.json` names the base by the relative path `base`, so
  `mixtune.model.load.load_checkpoint(DIR)` loads it wherever the folder is moved. For peft adapters,
  `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(DIR/base), DIR/adapter)` also loads it.
- A full fine-tuning run is already a plain checkpoint: it is copied (with or without `--merge`).

Only LoRA can merge: LoRAMoE's expert mix depends on the input through the router (g(x) in LoRAMoE eq. 4), the
bottleneck adapter adds a nonlinearity (up(act(down(h))), Houlsby §2.1), and prefix / prompt tuning add virtual
keys/values or tokens, which are not weights of the base.

RUN_DIR is a run folder (its `final/` is exported) or a final folder itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from mixtune.errors import UserError
from mixtune.model.folders import MODEL_META, read_model_meta, resolve_final
from mixtune.runs import atomic_dir

MERGEABLE = ("lora",)
WHY_NOT_MERGEABLE = {
    "loramoe": "its expert mix depends on the input through the router",
    "bottleneck": "it adds nonlinear modules after attention and the FFN",
    "prefix": "its virtual keys/values are not weights of the base",
    "prompt": "its virtual tokens are not weights of the base",
}


class ExportError(UserError, ValueError):
    """An export that cannot be done; the message says why and what to do instead."""


def export(run_dir: str | Path, out_dir: str | Path, merge: bool = False) -> Path:
    """Export the model of `run_dir` into `out_dir` (replaced if it exists); returns `out_dir`."""
    final = resolve_final(run_dir, what="RUN_DIR")
    out = Path(out_dir)
    if out.resolve() == final.resolve():
        raise ExportError(f"--out {out} is the folder being exported")
    meta = read_model_meta(final) or {}
    kind = meta.get("adapter", "none")
    if merge and kind not in MERGEABLE + ("none",):
        raise ExportError(f"adapter {kind!r} cannot be merged into the base weights: {WHY_NOT_MERGEABLE[kind]}. "
                          f"Export without --merge for a self-contained folder that mixtune loads.")
    with atomic_dir(out) as tmp:
        if kind == "none":
            shutil.copytree(final, tmp, dirs_exist_ok=True)
        elif merge:
            _export_merged(final, tmp)
        else:
            _export_with_base(final, tmp, kind, meta, final_out=out)
    return out


def _export_merged(final: Path, out: Path) -> None:
    """LoRA merged into the base (peft `merge_and_unload`), saved as a plain transformers checkpoint."""
    from mixtune.model.load import load_checkpoint, load_tokenizer

    merged = load_checkpoint(final).merge_and_unload()
    merged.save_pretrained(str(out))
    load_tokenizer(final).save_pretrained(str(out))


def _export_with_base(final: Path, out: Path, kind: str, meta: dict, final_out: Path) -> None:
    """Base as a plain checkpoint in `out/base`, the adapter copied to `out/adapter`, a relative pointer.

    `out` is the temporary folder that becomes `final_out` once complete."""
    from mixtune.model.load import load_checkpoint, load_tokenizer

    base_dir = Path(meta["base"])
    base_dir = base_dir if base_dir.is_absolute() else final / base_dir
    if read_model_meta(base_dir):
        raise ExportError(f"{final}: its base {base_dir} is itself an adapter folder; merge or export that first")
    base = load_checkpoint(base_dir)
    base.save_pretrained(str(out / "base"))
    load_tokenizer(final).save_pretrained(str(out / "base"))
    shutil.copytree(final / "adapter", out / "adapter")
    peft_config = out / "adapter" / "adapter_config.json"
    if peft_config.exists():  # so AutoPeftModelForCausalLM finds the copied base, not the training machine's
        cfg = json.loads(peft_config.read_text())
        cfg["base_model_name_or_path"] = str((final_out / "base").resolve())
        peft_config.write_text(json.dumps(cfg, indent=2))
    load_tokenizer(final).save_pretrained(str(out))
    (out / MODEL_META).write_text(json.dumps({"adapter": kind, "base": "base"}, indent=2))


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="mixtune export", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="run folder (its final/ is exported) or a model folder")
    parser.add_argument("--out", required=True, help="folder to write (replaced if it exists)")
    parser.add_argument("--merge", action="store_true", help="merge LoRA into the base: a plain HF checkpoint")
    args = parser.parse_args(list(argv))
    out = export(args.run_dir, args.out, merge=args.merge)  # a user error is one line, exit 2 (mixtune.cli)
    print(f"exported {args.run_dir} to {out}" + (" (LoRA merged)" if args.merge else ""))
    return 0
