"""Every adapter type end to end through `train(recipe)`: trains only its own weights, saves, reloads to the same
logits, evaluates, loads with peft where peft's format applies, and continues across the stages of a strategy."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import chat_examples, tiny_model_section
from transformers import AutoModelForCausalLM

from mixtune.config import Recipe
from mixtune.model.adapters import unwrap_base
from mixtune.model.load import build_llama, load_checkpoint, load_tokenizer
from mixtune.train import run as run_module
from mixtune.train import sft as sft_module

pytestmark = pytest.mark.slow  # end-to-end runs: `pytest -m "not slow"` skips them; CI runs everything

ADAPTERS = ("lora", "loramoe", "prefix", "prompt", "bottleneck")
PEFT_FORMAT = ("lora", "prefix", "prompt")
ADAPTER_SECTION = {"lora": {"r": 4, "alpha": 8}, "loramoe": {"r": 2, "alpha": 4, "num_experts": 4},
                   "prefix": {"num_virtual_tokens": 4}, "prompt": {"num_virtual_tokens": 4},
                   "bottleneck": {"bottleneck_size": 8}}
WRAPPER_PARTS = {"base_layer", "inner", "base"}  # peft LoRA, bottleneck, LoRAMoE wrap the frozen module under these


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two SFT sources (messages JSONL, math examples typed as knowledge for LoRAMoE) and a GSM8K-format bench."""
    root = tmp_path_factory.mktemp("data")
    paths = {}
    for ability, seed in (("math", 2), ("general", 3)):
        paths[ability] = root / f"{ability}.jsonl"
        paths[ability].write_text("".join(json.dumps({"messages": ex["messages"], "task_type": ex["task_type"]}) + "\n"
                                          for ex in chat_examples(16, seed=seed, ability=ability)))
    (root / "world" / "bench").mkdir(parents=True)
    (root / "world" / "bench" / "math_test.jsonl").write_text("".join(
        json.dumps({"task_id": f"m/{i}", "question": f"What is {i} + 2?", "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"})
        + "\n" for i in range(3)))
    return {"math": str(paths["math"]), "general": str(paths["general"]), "world": str(root / "world")}


def recipe_for(tmp_path, base_dir, files, kind: str, **extra) -> Recipe:
    tree = {"name": f"e2e-{kind}", "out_dir": str(tmp_path / "run"), "model": {"path": str(base_dir)},
            "data": {"sources": [{"name": a, "path": files[a], "ability": a} for a in ("math", "general")]},
            "train": {"lr": 1e-2, "batch_size": 8, "bf16": False, "max_steps": 3, "warmup_ratio": 0.0,
                      "log_every": 1},
            "adapter": {"type": kind, **ADAPTER_SECTION[kind]},
            "eval": {"benchmarks": ["minilab_math"], "world_dir": files["world"], "max_new_tokens": 6,
                     "batch_size": 4}}
    tree.update(extra)
    return Recipe.model_validate(tree)


class Spy:
    """Records the model `train` adapts (trainable weights right after `apply_adapter`), the trainable weights each
    stage starts from, and the model handed to `save_final`."""

    def __init__(self, monkeypatch):
        self.initial, self.stage_starts, self.model = {}, [], None
        apply, stage, save = run_module.apply_adapter, sft_module.run_stage, run_module.save_final

        def spy_apply(model, cfg):
            model = apply(model, cfg)
            self.initial = trainable(model)
            return model

        def spy_stage(ctx):
            self.stage_starts.append(trainable(ctx.model))
            return stage(ctx)

        def spy_save(model, *args, **kwargs):
            self.model = model
            return save(model, *args, **kwargs)

        monkeypatch.setattr(run_module, "apply_adapter", spy_apply)
        monkeypatch.setattr(sft_module, "run_stage", spy_stage)  # what the stage registry's "sft" resolves to
        monkeypatch.setattr(run_module, "save_final", spy_save)


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def frozen_as_base_names(model) -> dict[str, torch.Tensor]:
    """Frozen weights of an adapted model under the base model's parameter names (wrapper levels removed)."""
    out = {}
    for name, p in unwrap_base(model).named_parameters():
        if not p.requires_grad:
            out[".".join(part for part in name.split(".") if part not in WRAPPER_PARTS)] = p.detach()
    return out


def logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -ids.shape[1]:]


@pytest.mark.parametrize("kind", ADAPTERS)
def test_adapter_trains_saves_loads_and_evaluates(kind, tmp_path, base_dir, files, monkeypatch):
    from mixtune.evaluate.runner import evaluate_model

    spy = Spy(monkeypatch)
    recipe = recipe_for(tmp_path, base_dir, files, kind)
    summary = train_and_check_scores(recipe)
    model = spy.model
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    # only adapter weights moved: every frozen tensor equals the base's, every trainable one changed
    frozen = frozen_as_base_names(model)
    assert set(frozen) == {n for n, _ in base.named_parameters()}
    assert all(torch.equal(frozen[n], p) for n, p in base.named_parameters())
    after = trainable(model)
    assert spy.initial and set(after) == set(spy.initial)
    assert all(not torch.equal(after[n], spy.initial[n]) for n in after), "an adapter tensor did not train"
    # the final folder reloads to the same logits; evaluation runs on the reloaded model
    final = recipe.run_dir / "final"
    assert json.loads((final / "mixtune_model.json").read_text())["adapter"] == kind
    assert not (final / "model.safetensors").exists()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    reloaded = load_checkpoint(final)
    assert torch.allclose(logits(reloaded, ids), logits(model, ids), atol=1e-6)
    assert not torch.allclose(logits(reloaded, ids), logits(base, ids), atol=1e-4)
    scores = evaluate_model(reloaded, load_tokenizer(final), recipe, recipe.run_dir, stage="reloaded", log=None)
    assert scores["minilab_math"]["n_examples"] == 3 and scores["minilab_math"]["strict"] is not None
    assert summary["scores"]["multi_task"]["minilab_math"]["n_examples"] == 3
    if kind in PEFT_FORMAT:
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), final / "adapter")
        assert torch.allclose(logits(peft_model, ids), logits(model, ids), atol=1e-6)


def train_and_check_scores(recipe: Recipe) -> dict:
    summary = run_module.train(recipe)
    samples = (recipe.run_dir / "eval" / "multi_task" / "minilab_math" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 3
    return summary


@pytest.mark.parametrize("kind", ["lora", "loramoe"])
def test_same_adapter_continues_across_dmt_stages(kind, tmp_path, base_dir, files, monkeypatch):
    spy = Spy(monkeypatch)
    recipe = recipe_for(tmp_path, base_dir, files, kind, strategy={"name": "dmt", "k": 0.25, "specialized": ["math"]},
                        eval={})
    summary = run_module.train(recipe)
    assert [s["name"] for s in summary["stages"]] == ["specialized", "general"]
    from safetensors.torch import load_file

    stage1 = load_file(str(recipe.run_dir / "stages" / "0-specialized" / "stage_weights.safetensors"))
    stage2 = load_file(str(recipe.run_dir / "stages" / "1-general" / "stage_weights.safetensors"))
    assert set(stage1) == set(stage2) == set(spy.initial)  # one adapter, the same tensors, no second one stacked
    start2 = spy.stage_starts[1]
    assert all(torch.equal(start2[n], stage1[n]) for n in stage1), "stage 2 did not start from stage 1's adapter"
    assert any(not torch.equal(stage2[n], stage1[n]) for n in stage1), "stage 2 did not train the adapter"
    final = trainable(spy.model)
    assert all(torch.equal(final[n], stage2[n]) for n in stage2)
    if kind == "lora":
        assert list(spy.model.peft_config) == ["default"]


def tiny_recipe(tokenizer_dir, kind: str, **adapter) -> Recipe:
    return Recipe.model_validate({"name": "u", "model": tiny_model_section(tokenizer_dir), "train": {"bf16": False},
                                  "data": {"max_seq_len": 128}, "adapter": {"type": kind, **adapter}})


@pytest.mark.parametrize("kind", ["prefix", "prompt"])
def test_prompt_learning_uses_padded_rows_and_per_example_losses(kind, tiny_tokenizer_dir):
    """Packed rows would put several examples after one set of virtual tokens; padded rows keep them apart."""
    from mixtune.data.sft_dataset import build_sft_rows
    from mixtune.model.adapters import apply_adapter
    from mixtune.train.sft import _forward_loss, _micro_batches

    tok = load_tokenizer(tiny_tokenizer_dir)
    recipe = tiny_recipe(tiny_tokenizer_dir, kind, num_virtual_tokens=3)
    rows = build_sft_rows(chat_examples(6, seed=5), tok, recipe.data)
    micros = _micro_batches(rows, list(range(6)), 2, recipe, tok.pad_token_id)
    assert [m["input_ids"].shape[0] for m in micros] == [3, 3] and all("attention_mask" in m for m in micros)
    packed = _micro_batches(rows, list(range(6)), 2, tiny_recipe(tiny_tokenizer_dir, "lora"), tok.pad_token_id)
    assert all(m["input_ids"].shape[0] < 3 for m in packed)  # LoRA packs the same examples into fewer rows
    model = apply_adapter(build_llama(recipe.model, tok), recipe.adapter)
    model.eval()
    with torch.no_grad():
        together = float(_forward_loss(model, micros[0], recipe)[0])
        alone = sum(float(_forward_loss(model, _micro_batches(rows, [i], 1, recipe, tok.pad_token_id)[0], recipe)[0])
                    for i in range(3))
    assert together == pytest.approx(alone, rel=1e-5)


def test_loramoe_balancing_loss_is_active_and_sees_task_types(tiny_tokenizer_dir):
    from mixtune.data.sft_dataset import batches_for_step, build_sft_rows
    from mixtune.model.adapters import apply_adapter
    from mixtune.train.sft import _forward_loss

    tok = load_tokenizer(tiny_tokenizer_dir)

    def router_grads(lbc_weight: float, flip: bool = False):
        recipe = tiny_recipe(tiny_tokenizer_dir, "loramoe", r=2, num_experts=4, lbc_weight=lbc_weight)
        model = apply_adapter(build_llama(recipe.model, tok, seed=0), recipe.adapter)  # seeded: the same init
        torch.manual_seed(1)
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):  # non-zero experts, so the CE loss also reaches the routers
                p.data.normal_(0, 0.1)
        examples = chat_examples(6, seed=4)
        for ex in examples:
            ex["task_type"] = 1 - ex["task_type"] if flip else ex["task_type"]
        rows = build_sft_rows(examples, tok, recipe.data)
        (micro,) = batches_for_step(rows, list(range(len(rows))), 1, 128, tok.pad_token_id)
        by_id = {ex["id"]: ex["task_type"] for ex in examples}
        assert micro["task_type"].tolist() == [by_id[i] for i in micro["ids"]]  # the data's types, in sample order
        assert set(micro["task_type"].tolist()) == {0, 1}
        model.train()
        ce, aux = _forward_loss(model, micro, recipe)
        (ce + aux).backward()
        return float(aux), {n: p.grad.clone() for n, p in model.named_parameters() if n.endswith("router.weight")}

    aux_off, grads_off = router_grads(0.0)
    aux_on, grads_on = router_grads(0.1)
    aux_flipped, _ = router_grads(0.1, flip=True)
    assert aux_off == 0.0 and aux_on > 0
    assert len(grads_on) == 6  # gate/up/down of 2 blocks
    assert all(not torch.allclose(grads_on[n], grads_off[n]) for n in grads_on)
    assert aux_flipped != pytest.approx(aux_on, rel=1e-6)  # the localized coefficients follow each sample's type
