"""The `distill` stage: logit KD on the SFT stage's packed rows (teacher and student see the same rows), the hard-label
mix, sequence-level KD through the SFT stage on the teacher's answers, the tokenizer check, and study caching."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import chat_examples, tiny_model_section
from safetensors.torch import load_file

from mixtune.config import Recipe, RecipeError
from mixtune.model.load import build_llama, load_checkpoint, load_tokenizer
from mixtune.train import distill
from mixtune.train.run import plan_run, prefix_key, train
from mixtune.train.save import save_final
from mixtune.train.sft import _micro_batches, sft_stage
from mixtune.train.strategies import plan_stages


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A wider tiny Llama (hidden 48 vs the student's 32) with the student's tokenizer, SFT'd for a few steps so
    that it answers with words (a fresh one answers with newlines only)."""
    section = {**tiny_model_section(tiny_tokenizer_dir), "hidden_size": 48, "intermediate_size": 96}
    recipe = Recipe.model_validate({"name": "t", "model": section, "train": {
        "lr": 1e-2, "batch_size": 8, "bf16": False, "max_steps": 12, "warmup_ratio": 0.0}})
    tok = load_tokenizer(tiny_tokenizer_dir)
    root = tmp_path_factory.mktemp("teacher")
    model = build_llama(recipe.model, tok, seed=7)
    sft_stage(model, tok, recipe, chat_examples(32, seed=9, source="math"), root / "sft", log=lambda _: None)
    save_final(model, tok, root / "final", adapter="none", base=None)
    return root / "final"


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    path = tmp_path_factory.mktemp("chats") / "math.jsonl"
    path.write_text("".join(json.dumps({"messages": ex["messages"]}) + "\n"
                            for ex in chat_examples(24, seed=5, source="math")))
    return str(path)


def recipe_for(tmp_path, base_dir, chats, teacher, name="run", **distill_fields) -> Recipe:
    return Recipe.model_validate({
        "name": "r", "out_dir": str(tmp_path / name), "model": {"path": str(base_dir)},
        "data": {"sources": [{"name": "math", "path": chats, "ability": "math", "eval_count": 4}], "pack_len": 96},
        "train": {"lr": 3e-3, "batch_size": 8, "bf16": False, "epochs": 1, "warmup_ratio": 0.0, "log_every": 1},
        "strategy": {"name": "stages", "stages": [{"name": "kd", "kind": "distill", "sources": ["math"]}]},
        "distill": {"teacher": str(teacher), **distill_fields}})


def test_logit_kd_trains_the_student_and_leaves_the_teacher(tmp_path, base_dir, chats, teacher_dir):
    before = load_file(teacher_dir / "model.safetensors")
    summary = train(recipe_for(tmp_path, base_dir, chats, teacher_dir, loss="jsd", temperature=2.0))
    (stage,) = summary["stages"]
    assert stage["kind"] == "distill" and stage["finished"] and stage["steps"] == 3  # ceil(20 / 8)
    metrics = json.loads((tmp_path / "run" / "stages" / "0-kd" / "stage.json").read_text())["metrics"]
    assert {"distill/kd_loss", "distill/ce_loss", "distill/eval_divergence/math",
            "distill/teacher_eval_loss/math"} <= set(metrics)
    assert metrics["distill/kd_loss"] > 0
    student = load_file(tmp_path / "run" / "stages" / "0-kd" / "stage_weights.safetensors")
    assert any(not torch.equal(student[k], v) for k, v in load_file(base_dir / "model.safetensors").items())
    after = load_file(teacher_dir / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)  # frozen, never written


def test_a_copy_of_the_student_as_teacher_gives_zero_divergence_on_packed_rows(tmp_path, base_dir, chats):
    # Any shift between the teacher's and the student's rows or positions would make this non-zero.
    recipe = recipe_for(tmp_path, base_dir, chats, base_dir)
    plan = plan_run(recipe)
    teacher = distill.load_teacher(recipe, plan.tokenizer, torch.device("cpu"), "kd")
    rows = distill.build_sft_rows(plan.mixture.train, plan.tokenizer, recipe.data)
    (micro,) = _micro_batches(rows, list(range(8)), 1, recipe, 0)
    assert micro["input_ids"].shape[0] < 8  # several examples share a packed row
    for loss in ("forward_kl", "reverse_kl"):
        r = recipe.model_copy(update={"distill": recipe.distill.model_copy(update={"loss": loss})})
        kd, ce = distill.distill_sums(plan.model, teacher, micro, r)
        assert abs(kd.item()) < 1e-5 and ce.item() > 0
    # the logits at the first example's targets equal the logits of that example run alone (no cross-attention)
    logits = distill.target_logits(plan.model, micro, recipe)  # (N, V), row-major: the first example first
    assert logits.shape[0] == micro["n_target_tokens"]
    first = next(r for r in rows.rows if r["id"] == micro["ids"][0])
    ids, labels = torch.tensor([first["input_ids"]]), torch.tensor(first["labels"])
    with torch.no_grad():
        alone = plan.model(input_ids=ids, use_cache=False).logits[0, :-1][labels[1:] != -100]
    assert torch.allclose(logits[:len(alone)], alone, atol=1e-5)


def test_alpha_one_is_the_sft_stage(tmp_path, base_dir, chats, teacher_dir):
    # (1 − α)·KD + α·CE with α = 1 is plain SFT: same rows, same order, same weights after the stage.
    kd = train(recipe_for(tmp_path, base_dir, chats, teacher_dir, name="a1", alpha=1.0))
    sft_recipe = recipe_for(tmp_path, base_dir, chats, teacher_dir, name="sft").model_copy(
        update={"strategy": Recipe.model_validate({"name": "x", "strategy": {
            "name": "stages", "stages": [{"name": "kd", "sources": ["math"]}]}}).strategy})
    sft = train(sft_recipe)
    assert kd["stages"][0]["train_loss"] == pytest.approx(sft["stages"][0]["train_loss"], rel=1e-5)
    a = load_file(tmp_path / "a1" / "stages" / "0-kd" / "stage_weights.safetensors")
    b = load_file(tmp_path / "sft" / "stages" / "0-kd" / "stage_weights.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_sequence_kd_sfts_on_the_teachers_greedy_answers(tmp_path, base_dir, chats, teacher_dir):
    recipe = recipe_for(tmp_path, base_dir, chats, teacher_dir, mode="sequence", max_new_tokens=12)
    summary = train(recipe)
    (stage,) = summary["stages"]
    assert stage["kind"] == "distill" and stage["finished"]
    folder = tmp_path / "run" / "stages" / "0-kd"
    answers = [json.loads(line) for line in (folder / distill.TEACHER_ANSWERS).read_text().splitlines()]
    dropped = json.loads((folder / "teacher_answers_dropped.json").read_text())
    assert len(answers) + sum(len(v) for v in dropped.values()) == 20  # 24 drawn − 4 held out, none lost silently
    assert all(a["id"].endswith("/teacher0") for a in answers)
    # the answer trained on is the teacher's own greedy continuation of the prompt
    from mixtune.data.templates import render_prompt, stop_strings
    from mixtune.evaluate.generate import generate

    tok, teacher = load_tokenizer(teacher_dir), load_checkpoint(teacher_dir)
    first = answers[0]["messages"]
    (text,) = generate(teacher, tok, [render_prompt(first[:-1], tok, "tokenizer")], max_new_tokens=12,
                       stop=stop_strings("tokenizer", tok), progress=False)
    assert first[-1] == {"role": "assistant", "content": text}
    assert json.loads((folder / "stage.json").read_text())["metrics"]["distill/teacher_answers"] == len(answers)


def test_sampled_sequence_kd_draws_several_answers_per_prompt(tmp_path, base_dir, chats, teacher_dir):
    recipe = recipe_for(tmp_path, base_dir, chats, teacher_dir, mode="sequence", samples=2, sample_temperature=1.0,
                        max_new_tokens=8)
    train(recipe)
    folder = tmp_path / "run" / "stages" / "0-kd"
    answers = [json.loads(line) for line in (folder / distill.TEACHER_ANSWERS).read_text().splitlines()]
    dropped = json.loads((folder / "teacher_answers_dropped.json").read_text())
    assert len(answers) + sum(len(v) for v in dropped.values()) == 40
    with pytest.raises(ValueError, match="identical"):
        recipe_for(tmp_path, base_dir, chats, teacher_dir, mode="sequence", samples=2)


def test_a_teacher_with_another_tokenizer_stops_with_one_line(tmp_path, base_dir, chats, teacher_dir, capsys):
    other = tmp_path / "other-teacher"
    shutil.copytree(teacher_dir, other)
    tok_file = json.loads((other / "tokenizer.json").read_text())
    vocab = tok_file["model"]["vocab"]
    a, b = sorted(vocab)[:2]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two token ids swapped: same size, different ids
    (other / "tokenizer.json").write_text(json.dumps(tok_file))
    recipe = recipe_for(tmp_path, base_dir, chats, other)
    with pytest.raises(RecipeError, match="another tokenizer than the student .*2 ids differ"):
        train(recipe)
    from mixtune.cli import main

    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(recipe.model_dump(mode="json")))
    assert main(["train", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("mixtune train:")]  # (progress bars aside)
    assert "uses another tokenizer than the student" in line and "Traceback" not in err
    missing = recipe_for(tmp_path, base_dir, chats, teacher_dir).model_copy(
        update={"distill": recipe.distill.model_copy(update={"teacher": None})})
    with pytest.raises(RecipeError, match="distill.teacher is not set"):
        distill.load_teacher(missing, None, torch.device("cpu"), "kd")


def test_study_cache_keys_tell_distill_losses_apart(tmp_path, base_dir, chats, teacher_dir):
    fwd = recipe_for(tmp_path, base_dir, chats, teacher_dir)
    rev = recipe_for(tmp_path, base_dir, chats, teacher_dir, loss="reverse_kl")
    stages = plan_stages(fwd.strategy, fwd.data.sources)
    assert prefix_key(fwd, stages, 0) != prefix_key(rev, stages, 0)
    assert prefix_key(fwd, stages, 0) == prefix_key(recipe_for(tmp_path, base_dir, chats, teacher_dir), stages, 0)
