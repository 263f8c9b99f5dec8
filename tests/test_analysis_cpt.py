"""Continued pre-training (analysis/cpt.py): the three starts come from the right checkpoints with the right
schedules (the lr of each start's first step), both domains are measured from the start, and the same SFT runs on
each; the tiny recipe end to end."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mixtune.analysis.cpt import STARTS, base_steps


def test_the_base_stable_checkpoint_is_where_the_decay_starts():
    from mixtune.config import load_recipe

    recipe = load_recipe("recipes/analysis/cpt-tiny.yaml")
    assert base_steps(recipe) == (16, 20)  # 20 steps, decay over 0.2 of them
    default = load_recipe("recipes/analysis/cpt.yaml")
    stable, total = base_steps(default)
    assert stable == total - round(default.train.decay_ratio * total)


@pytest.mark.slow
def test_tiny_cpt_analysis_end_to_end(tmp_path):
    from mixtune.analysis.cpt import run_cpt
    from mixtune.config import load_recipe
    from mixtune.results import ResultsDB

    out = tmp_path / "cpt"
    recipe = load_recipe("recipes/analysis/cpt-tiny.yaml", [
        f"out_dir={out}", f"world.out_dir={tmp_path / 'world'}", f"tokenizer.out_dir={tmp_path / 'tok'}"])
    summary = run_cpt(recipe, log=lambda _: None)
    runs = summary["cpt"]
    assert set(runs) == set(STARTS)
    peak = recipe.train.lr
    expected = {"stable": (16, peak), "decayed-rewarm": (20, 0.1 * peak), "decayed": (20, peak)}
    for start, (step, first_lr) in expected.items():
        folder = out / "cpt" / start
        rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        assert runs[start]["start_step"] == step
        assert rows[0]["step"] == step and {"eval_loss_new", "eval_loss_old"} <= set(rows[0])  # both, at the start
        assert runs[start]["checkpoint"].endswith(f"step-{step:07d}")
        assert runs[start]["old_loss_start"] == pytest.approx(rows[0]["eval_loss_old"])
        logged = [(r["step"], r["lr"]) for r in rows if "lr" in r]  # log_every 1: every step, with its lr
        assert logged[0] == (step + 1, pytest.approx(first_lr)), start  # the lr of the start's first step
        assert logged[-1][0] == step + 10  # cpt.steps continuation steps
        assert max(lr for _, lr in logged) == pytest.approx(peak)
    # the corpus: 5 new people x 4 biographies + 1/4 of the documents replayed from the old corpus's first half;
    # the held-out biographies are never trained
    corpus = [r["text"] for r in map(json.loads, (out / "new-domain" / "corpus.jsonl").read_text().splitlines())]
    heldout = [r["text"] for r in map(json.loads, (out / "new-domain" / "heldout.jsonl").read_text().splitlines())]
    new_names = [p["name"] for p in json.loads((out / "new-domain" / "world.json").read_text())["people"]]
    bios = [d for d in corpus if any(n in d for n in new_names)]
    assert len(bios) == 20 and len(corpus) - len(bios) == round(20 * 0.25 / 0.75)
    old = [r["text"] for r in map(json.loads, (tmp_path / "world" / "corpus" / "pretrain.jsonl").read_text()
                                  .splitlines())]
    assert all(d in old[: len(old) // 2] for d in corpus if d not in bios)
    assert len(heldout) == 10 and not set(heldout) & set(corpus)
    # the starts' weights are the checkpoints' (the stable one differs from the decayed one)
    stable = load_file(str(out / "base" / "checkpoints" / "step-0000016" / "weights.safetensors"))
    decayed = load_file(str(out / "base" / "checkpoints" / "step-0000020" / "weights.safetensors"))
    assert any(not torch.equal(stable[k], decayed[k]) for k in stable)
    assert set(summary["sft"]) == {*STARTS, "base"}
    for r in summary["sft"].values():
        assert {"minilab_math", "minilab_facts", "minilab_facts_new"} <= set(r["scores"])
    with ResultsDB(out / "results.sqlite") as db:
        assert {f"cpt/{s}" for s in STARTS} <= {r["run_id"] for r in db.runs("cpt")}
        assert db.metrics("cpt/stable", "eval_old")[0]["step"] == 0
        scored = {r["run_id"] for r in db.rows()}
        assert {"sft-stable", "sft-decayed", "sft-decayed-rewarm", "sft-base"} <= scored
    assert "data:image/png;base64," in (out / "report" / "index.html").read_text()
    # the old-domain eval rows must be rows the base held out: 10 x 4 = 40 rows > the 17 (1% of 1,796) it holds out
    from mixtune.analysis.cpt import check_old_rows_held_out
    from mixtune.analysis.report import AnalysisError

    check_old_rows_held_out(recipe)
    wider = load_recipe("recipes/analysis/cpt-tiny.yaml", [
        f"world.out_dir={tmp_path / 'world'}", f"tokenizer.out_dir={tmp_path / 'tok'}", "train.eval_batches=10",
        "analysis.cpt.eval_batches=10"])
    with pytest.raises(AnalysisError, match="held out only the last"):
        check_old_rows_held_out(wider)
