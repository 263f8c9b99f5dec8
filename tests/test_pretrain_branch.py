"""Branching a run from a checkpoint (train/pretrain.py `branch_from`, engine.load_branch_point, model/load.py for
`checkpoints/step-N`): the branch starts from the checkpoint's weights, moments and step, its schedule counts from
the branch point, checkpoints can all be kept, and extra corpora are evaluated."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mixtune.config import Recipe
from mixtune.model.load import load_checkpoint
from mixtune.train import engine
from mixtune.train.pretrain import pretrain
from tests.conftest import tiny_model_section


def _recipe(tmp_path, tok, corpus, name, **train) -> Recipe:
    base = {"lr": 1e-2, "batch_size": 4, "seq_len": 32, "bf16": False, "log_every": 1, "warmup_ratio": 0.1,
            "schedule": "wsd", "decay_ratio": 0.25, "min_lr_ratio": 0.1}
    return Recipe.model_validate({"name": name, "out_dir": str(tmp_path / name), "model": tiny_model_section(tok),
                                  "train": {**base, **train}, "pretrain_corpus": [str(corpus)]})


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def main_run(tmp_path_factory, tiny_tokenizer_dir, tiny_corpus):
    root = tmp_path_factory.mktemp("branch")
    recipe = _recipe(root, tiny_tokenizer_dir, tiny_corpus, "main", max_steps=40, save_every=10, keep_checkpoints=0)
    pretrain(recipe)
    return root, recipe


def test_every_checkpoint_is_kept_and_loads_as_a_model(main_run):
    root, _ = main_run
    steps = sorted(p.name for p in (root / "main" / "checkpoints").iterdir() if p.is_dir())
    assert steps == ["step-0000010", "step-0000020", "step-0000030", "step-0000040"]
    model = load_checkpoint(root / "main" / "checkpoints" / "step-0000020")
    saved = load_file(str(root / "main" / "checkpoints" / "step-0000020" / "weights.safetensors"))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_logged_lr_is_the_lr_each_step_used(main_run):
    root, _ = main_run
    lrs = {r["step"]: r["lr"] for r in _rows(root / "main") if "lr" in r}
    # 40 steps: warm-up over 4 from the floor (transformers' WSD: min + (1 - min)·t/4 of the peak, t = 0..3),
    # stable to step 30, then the 1-sqrt decay over 10
    assert lrs[1] == pytest.approx(0.1e-2) and lrs[2] == pytest.approx(0.325e-2) and lrs[5] == pytest.approx(1e-2)
    assert lrs[30] == pytest.approx(1e-2) and lrs[31] == pytest.approx(1e-2)
    assert lrs[40] == pytest.approx(1e-2 * (0.1 + 0.9 * (1 - (9 / 10) ** 0.5)))


def test_a_decay_branches_from_the_stable_phase(main_run, tiny_tokenizer_dir, tiny_corpus):
    root, _ = main_run
    ckpt = root / "main" / "checkpoints" / "step-0000020"
    branch = _recipe(root, tiny_tokenizer_dir, tiny_corpus, "decay", max_steps=8, warmup_ratio=0.0, decay_ratio=1.0,
                     eval_every=4)
    summary = pretrain(branch, branch_from=ckpt)
    assert summary["start_step"] == 20 and summary["step"] == 28
    rows = _rows(root / "decay")
    lrs = {r["step"]: r["lr"] for r in rows if "lr" in r}
    assert min(lrs) == 21  # the branch's first step is step 21 of the data stream
    assert lrs[21] == pytest.approx(1e-2)  # no warm-up: the stable phase's peak
    assert lrs[28] == pytest.approx(1e-2 * (0.1 + 0.9 * (1 - (7 / 8) ** 0.5)))  # the decay ends at the min
    assert all(a > b for a, b in zip(list(lrs.values()), list(lrs.values())[1:]))
    evals = [r["step"] for r in rows if "eval_loss" in r]
    assert evals[0] == 20  # the curve starts at the branch point


def test_branch_starts_from_the_checkpoint_weights_and_moments(main_run, tiny_tokenizer_dir):
    root, recipe = main_run
    from mixtune.model.load import build_llama, load_tokenizer

    ckpt = root / "main" / "checkpoints" / "step-0000030"
    model = build_llama(recipe.model, load_tokenizer(tiny_tokenizer_dir), seed=123)  # other init: must be replaced
    point = engine.load_branch_point(ckpt, model)
    saved = load_file(str(ckpt / "weights.safetensors"))
    assert point.step == 30
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    blob = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    opt = engine.make_optimizer(model, recipe.train, carried=point.optimizer_state)
    first = next(iter(opt.state.values()))
    assert torch.equal(first["exp_avg"], next(iter(blob["optimizer"]["state"].values()))["exp_avg"])
    assert opt.param_groups[0]["lr"] == recipe.train.lr


def test_a_rewarmed_branch_starts_from_the_floor_and_extra_corpora_are_evaluated(main_run, tiny_tokenizer_dir,
                                                                              tiny_corpus):
    root, _ = main_run
    branch = _recipe(root, tiny_tokenizer_dir, tiny_corpus, "rewarm", max_steps=10, warmup_ratio=0.2,
                     decay_ratio=0.2, eval_every=5)
    summary = pretrain(branch, branch_from=root / "main" / "checkpoints" / "step-0000040",
                       eval_corpora={"old": [tiny_corpus]})
    lrs = {r["step"]: r["lr"] for r in _rows(root / "rewarm") if "lr" in r}
    # re-warm-up over 2 steps from the floor: 0.1, 0.55, then 1.0 of the peak
    assert lrs[41] == pytest.approx(0.1e-2) and lrs[42] == pytest.approx(0.55e-2) and lrs[43] == pytest.approx(1e-2)
    assert "eval_loss_old" in summary["eval_losses"]
    # at the branch point, every 5 steps, and the final pass at step 50
    assert [r["step"] for r in _rows(root / "rewarm") if "eval_loss_old" in r] == [40, 45, 50, 50]


def test_branching_from_a_missing_checkpoint_is_one_line(tmp_path, tiny_tokenizer_dir, tiny_corpus, capsys):
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(json.dumps(_recipe(tmp_path, tiny_tokenizer_dir, tiny_corpus, "x").model_dump(mode="json",
                                                                                                     exclude={"analysis"})))
    from mixtune.cli import main

    assert main(["pretrain", "-c", str(recipe_path), "--branch-from", str(tmp_path / "nope")]) == 2
    assert "no checkpoint there" in capsys.readouterr().err


def test_a_checkpoint_of_another_size_is_refused(main_run, tiny_tokenizer_dir):
    root, recipe = main_run
    from mixtune.model.load import build_llama, load_tokenizer

    wider = recipe.model.model_copy(update={"hidden_size": 48, "intermediate_size": 64})
    model = build_llama(wider, load_tokenizer(tiny_tokenizer_dir))
    with pytest.raises(engine.BranchError, match="do not fit the model"):
        engine.load_branch_point(root / "main" / "checkpoints" / "step-0000010", model)
