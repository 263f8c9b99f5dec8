"""Distillation as a study: plain SFT vs logit KD vs sequence KD of one student from one teacher, each run scored,
through `mixtune study` (a teacher is a path in the recipe; the runs differ only in their overrides)."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import chat_examples
from tiny_lab import make_tiny_lab

from mixtune.config import Recipe, load_recipe
from mixtune.model.load import build_llama, load_tokenizer
from mixtune.results import DB_NAME, ResultsDB
from mixtune.study.cli import run_study
from mixtune.train.save import save_final
from mixtune.train.sft import sft_stage


@pytest.mark.slow  # ~1 min on a loaded 2-core machine (the tiny world and three runs)
def test_distill_study_runs_each_method_and_scores_it(tmp_path):
    lab = make_tiny_lab(tmp_path / "lab")
    tok = load_tokenizer(lab["tokenizer"])
    section = {"tokenizer": lab["tokenizer"], "hidden_size": 48, "intermediate_size": 96, "num_layers": 2,
               "num_heads": 2, "max_position_embeddings": 512}
    recipe = Recipe.model_validate({"name": "t", "model": section, "train": {
        "lr": 1e-2, "batch_size": 8, "bf16": False, "max_steps": 12, "warmup_ratio": 0.0}})
    model = build_llama(recipe.model, tok, seed=5)  # a few SFT steps, so that it answers with words
    sft_stage(model, tok, recipe, chat_examples(32, seed=9), tmp_path / "teacher-sft", log=lambda _: None)
    teacher = save_final(model, tok, tmp_path / "teacher", adapter="none", base=None)
    kd = {"name": "stages", "stages": [{"name": "distill", "kind": "distill", "sources": ["math", "code"]}]}
    tree = {
        "name": "distill-tiny", "out_dir": str(tmp_path / "study"),
        "study": {"base_recipe": lab["recipe"], "workers": 1, "runs": [
            {"label": "plain SFT"},
            {"label": "KD reverse KL", "strategy": kd, "overrides": ["distill.loss=reverse_kl"]},
            {"label": "sequence KD", "strategy": kd, "overrides": ["distill.mode=sequence"]}]},
        "world": {"out_dir": lab["world"]},
        "distill": {"teacher": str(teacher), "max_new_tokens": 8},
        "data": {"sources": [{"name": a, "minilab": a, "count": 8} for a in ("math", "code")], "max_seq_len": 256},
        "train": {"lr": 1e-3, "epochs": 1, "batch_size": 4, "bf16": False, "threads": 1, "warmup_ratio": 0.0},
        "eval": {"benchmarks": ["minilab_math"], "limit": 2, "max_new_tokens": 8, "batch_size": 2},
    }
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(tree))
    study_dir = run_study(load_recipe(path), log=lambda _: None)
    with ResultsDB(study_dir / DB_NAME) as db:
        runs = {r["run_id"]: r["status"] for r in db.runs("distill-tiny")}
        scored = {(r["run_id"], r["stage"]) for r in db.rows("distill-tiny") if r["metric"] == "strict"}
    ids = ["plain-sft-f1-s0-matched", "kd-reverse-kl-f1-s0-matched", "sequence-kd-f1-s0-matched"]
    assert runs == dict.fromkeys(["base", *ids], "finished")  # the base is scored once, as run `base`
    assert scored == {("base", "base"), (ids[0], "multi_task"), (ids[1], "distill"), (ids[2], "distill")}
    for run in ids[1:]:  # both distill runs train the matched budget, ceil(16 / 4) = 4 steps
        stage = json.loads((study_dir / run / "stages" / "0-distill" / "stage.json").read_text())
        assert stage["kind"] == "distill" and stage["steps"] == 4
    assert (study_dir / ids[2] / "stages" / "0-distill" / "teacher_answers.jsonl").exists()
    # a teacher that is not there stops the study before its folder exists, naming the stage (not 2 failed runs)
    from mixtune.config import RecipeError

    missing = load_recipe(path, ["name=no-teacher", f"out_dir={tmp_path / 'no-teacher'}",
                                 f"distill.teacher={tmp_path / 'nope'}"])
    with pytest.raises(RecipeError, match=r"stage distill \(distill\): distill.teacher .*nope is not a folder"):
        run_study(missing, log=lambda _: None)
    assert not (tmp_path / "no-teacher").exists()
