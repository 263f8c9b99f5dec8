"""`mixtune export`: LoRA merged into a plain transformers checkpoint with the adapter's logits; every other adapter
exported as a self-contained folder that still loads after it is moved; merging what cannot merge is refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mixtune.cli import main as mixtune_main
from mixtune.config import Recipe
from mixtune.model.adapters import apply_adapter
from mixtune.model.export import main as export_main
from mixtune.model.load import load_checkpoint, load_tokenizer
from mixtune.train.save import save_final

ADAPTER_SECTION = {"lora": {"r": 4, "alpha": 8}, "loramoe": {"r": 2, "alpha": 4, "num_experts": 4},
                   "prefix": {"num_virtual_tokens": 4}, "prompt": {"num_virtual_tokens": 4},
                   "bottleneck": {"bottleneck_size": 8}}


def adapted_run(tmp_path, base_dir, kind: str):
    """A run folder whose final/ holds a `kind` adapter with random (non-initial) weights, and that model."""
    recipe = Recipe.model_validate({"name": "x", "adapter": {"type": kind, **ADAPTER_SECTION[kind]}})
    model = apply_adapter(load_checkpoint(base_dir), recipe.adapter)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # LoRA B and the bottleneck's up start at zero: make the adapter change the logits
                p.add_(0.2 * torch.randn_like(p))
    run_dir = tmp_path / f"run-{kind}"
    save_final(model, load_tokenizer(base_dir), run_dir / "final", adapter=kind, base=str(base_dir))
    return run_dir, model.eval()


def logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits[:, -ids.shape[1]:]


IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])


def test_lora_merge_gives_a_plain_checkpoint_with_the_adapter_logits(tmp_path, base_dir, capsys):
    run_dir, model = adapted_run(tmp_path, base_dir, "lora")
    out = tmp_path / "merged"
    assert export_main([str(run_dir), "--merge", "--out", str(out)]) == 0
    assert not (out / "adapter_config.json").exists() and not (out / "mixtune_model.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in plain.named_parameters())
    assert torch.allclose(logits(plain, IDS), logits(model, IDS), atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    assert not torch.allclose(logits(plain, IDS), logits(base, IDS), atol=1e-3)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.get_vocab() == load_tokenizer(base_dir).get_vocab() and tok.chat_template


@pytest.mark.parametrize("kind", ["lora", "loramoe", "prefix", "prompt", "bottleneck"])
def test_export_without_merge_is_self_contained(kind, tmp_path, base_dir):
    run_dir, model = adapted_run(tmp_path, base_dir, kind)
    out = tmp_path / "export"
    assert export_main([str(run_dir / "final"), "--out", str(out)]) == 0
    assert json.loads((out / "mixtune_model.json").read_text()) == {"adapter": kind, "base": "base"}
    moved = tmp_path / "elsewhere" / "model"
    moved.parent.mkdir()
    shutil.move(out, moved)
    shutil.rmtree(run_dir)  # nothing outside the exported folder is needed
    assert torch.allclose(logits(load_checkpoint(moved), IDS), logits(model, IDS), atol=1e-6)
    if kind in ("lora", "prefix", "prompt"):
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(moved / "base"), moved / "adapter")
        assert torch.allclose(logits(peft_model, IDS), logits(model, IDS), atol=1e-6)


@pytest.mark.parametrize("kind", ["loramoe", "prefix", "prompt", "bottleneck"])
def test_merge_refused_for_adapters_that_cannot_merge(kind, tmp_path, base_dir, capsys):
    run_dir, _ = adapted_run(tmp_path, base_dir, kind)
    capsys.readouterr()  # the model-loading progress of the set-up
    assert mixtune_main(["export", str(run_dir), "--merge", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert f"adapter '{kind}' cannot be merged" in err and err.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "m").exists()


def test_full_finetune_export_is_a_copy(tmp_path, base_dir):
    out = tmp_path / "copy"
    assert export_main([str(base_dir), "--merge", "--out", str(out)]) == 0
    ref = AutoModelForCausalLM.from_pretrained(base_dir)
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(out), IDS), logits(ref, IDS))
