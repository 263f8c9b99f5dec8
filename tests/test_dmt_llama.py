"""recipes/dmt-llama.yaml: the DMT paper's real-model study loads as written; a two-step dry run on a tiny model
trains both DMT stages on the real files in ../shared/data (GSM8K, Code Alpaca 2K, FastChat's ShareGPT sample); the
whole study (every strategy, the base scored, the report) dry-runs from a checkpoint saved with save_pretrained; the
shipped placeholder paths fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixtune.config import Recipe, load_recipe, load_tree
from mixtune.train.strategies import plan_stages

pytestmark = pytest.mark.slow  # end-to-end runs: `pytest -m "not slow"` skips them; CI runs everything

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "dmt-llama.yaml"


def test_recipe_is_the_papers_setup():
    r = load_recipe(RECIPE)
    assert (r.strategy.name, r.strategy.k) == ("dmt", 1 / 256)
    assert (r.train.epochs, r.train.lr, r.train.warmup_ratio, r.train.schedule) == (3, 2e-5, 0.03, "cosine")
    assert r.train.batch_size == 16 and r.train.batch_size % r.train.grad_accum == 0
    assert r.train.bf16 and r.train.fresh_optimizer and r.adapter.type == "none"
    assert r.data.template == "vicuna" and r.model.path == "/models/llama-7b"
    assert [(s.name, s.path, s.format, s.ability) for s in r.data.sources] == [
        ("math", "../shared/data/gsm8k/train.jsonl", "gsm8k", "math"),
        ("code", "../shared/data/code_alpaca/code_alpaca_2k.json", "alpaca", "code"),
        ("general", "../shared/data/sharegpt/dummy_conversation_fastchat.json", "sharegpt", "general")]
    assert all(s.fraction is s.count is s.ratio is None and not s.replace for s in r.data.sources)  # full sets
    assert r.eval.benchmarks == ["gsm8k", "humaneval", "mt_bench"] and r.eval.temperature == 0
    stages = plan_stages(r.strategy, r.data.sources)
    assert [(s.name, s.sources, s.replay) for s in stages] == [
        ("specialized", ("code", "math"), ()), ("general", ("general",), (("code", 1 / 256), ("math", 1 / 256)))]


@pytest.fixture()
def tiny_base(tmp_path, tiny_tokenizer_dir):
    from conftest import tiny_model_section

    from mixtune.model.load import build_llama, load_tokenizer
    from mixtune.train.save import save_final

    cfg = Recipe.model_validate({"name": "b", "model": {**tiny_model_section(tiny_tokenizer_dir),
                                                        "max_position_embeddings": 512}})
    tok = load_tokenizer(tiny_tokenizer_dir)
    save_final(build_llama(cfg.model, tok), tok, tmp_path / "base", adapter="none", base=None)
    return tmp_path / "base"


def test_two_step_dry_run_trains_both_dmt_stages_on_the_real_files(tmp_path, tiny_base, monkeypatch, shared_data):
    from mixtune.train.run import train

    tree = load_tree(RECIPE)
    monkeypatch.chdir(ROOT)  # the recipe's paths are relative to the repository root
    tree.update(out_dir=str(tmp_path / "run"))
    tree["model"]["path"] = str(tiny_base)
    tree["data"]["max_seq_len"] = 512
    for src, n in zip(tree["data"]["sources"], (12, 8, 6)):
        src["count"] = n
    tree["train"].update(max_steps=2, log_every=1, save_every=0)
    tree["eval"]["benchmarks"] = []
    lines = []
    summary = train(Recipe.model_validate(tree), log=lines.append)

    assert [(s["name"], s["steps"], s["finished"]) for s in summary["stages"]] == [
        ("specialized", 2, True), ("general", 2, True)]
    assert summary["stages"][0]["n_examples"] == 20 and summary["stages"][1]["n_examples"] == 6 + 1 + 1
    run = Path(tree["out_dir"])
    sources = json.loads((run / "manifest.json").read_text())["sources"]
    assert {k: (m["available"], m["drawn"], m["skipped"]) for k, m in sources.items()} == {
        "math": (7473, 12, 0), "code": (2015, 8, 2), "general": (500, 6, 0)}  # 2017 records, 2 empty outputs
    assert all(m["tokens"] > m["target_tokens"] > 0 for m in sources.values())
    assert any("source code: skipped 2 invalid records" in line and "output: empty" in line for line in lines)
    stage2 = json.loads((run / "stages" / "1-general" / "manifest.json").read_text())
    assert stage2["n_drawn"] == 8 and stage2["n_trained"] == 8 - sum(map(len, stage2["dropped"].values()))
    replay = stage2["drawn"]
    for name in ("math", "code"):  # max(1, round(|D| / 256)) of the examples stage 1 trained
        assert replay[f"{name} (replay)"]["drawn"] == 1 and replay[f"{name} (replay)"]["replay_k"] == 1 / 256
        assert set(replay[f"{name} (replay)"]["ids"]) <= set(sources[name]["ids"])
    assert (run / "final" / "model.safetensors").exists()


def test_recipe_is_a_study_of_the_papers_strategies():
    r = load_recipe(RECIPE)
    assert r.study.base == "/models/llama-7b" and r.study.base_recipe is None and r.study.workers == 1
    assert [(run.label, run.strategy.name, run.sources) for run in r.study.runs] == [
        ("general only", "multi_task", ["general"]), ("math only", "multi_task", ["math"]),
        ("code only", "multi_task", ["code"]), ("multi-task", "multi_task", []), ("sequential", "sequential", []),
        ("mixed sequential", "mixed_sequential", []), ("DMT k=1/256", "dmt", [])]
    assert r.study.runs[-1].strategy.k == 1 / 256


def dead_port() -> int:
    import socket

    with socket.socket() as s:  # bound then closed: nothing listens there, connections are refused at once
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dry_run_overrides(tmp_path, base) -> list[str]:
    counts = [f"data.sources.{i}.count={n}" for i, n in enumerate((12, 8, 6))]
    return [f"study.base={base}", f"out_dir={tmp_path / 'study'}", "data.max_seq_len=512", *counts,
            "train.max_steps=2", "train.batch_size=4", "train.grad_accum=2", "train.log_every=1", "train.save_every=0",
            "train.bf16=false", "study.workers=2", "eval.limit=2", "eval.max_new_tokens=8", "eval.batch_size=2",
            f"eval.judge.base_url=http://127.0.0.1:{dead_port()}/v1", "eval.judge.on_unreachable=skip",
            f"eval.judge.cache_dir={tmp_path / 'judge-cache'}"]


def test_study_dry_run_from_a_saved_checkpoint_and_the_real_files(tmp_path, tiny_base, monkeypatch, shared_data,
                                                                   capsys):
    """Every strategy of the paper from a checkpoint saved with save_pretrained, two optimizer steps per stage, tiny
    eval limits, an unreachable judge skipped; then the report."""
    from mixtune.cli import main as mixtune_main
    from mixtune.results import ResultsDB

    monkeypatch.chdir(ROOT)  # the recipe's data paths are relative to the repository root
    assert mixtune_main(["study", "-c", str(RECIPE), *dry_run_overrides(tmp_path, tiny_base)]) == 0
    study = tmp_path / "study"
    meta = json.loads((study / "study.json").read_text())
    assert meta["failed"] == [] and meta["base"] == str(tiny_base)
    with ResultsDB(study / "results.sqlite") as db:
        runs = {r["run_id"]: r for r in db.runs("dmt-llama")}
        rows = db.rows()
        skipped = [r for r in db.rows(numeric_only=False) if r["metric"] == "status" and r["text"] == "skipped"]
    assert set(runs) == {"base", "general-only-f1-s0-epochs", "math-only-f1-s0-epochs", "code-only-f1-s0-epochs", "multi-task-f1-s0-epochs",
                         "sequential-f1-s0-epochs", "mixed-sequential-f1-s0-epochs", "dmt-k-1-256-f1-s0-epochs"}
    assert {r["status"] for r in runs.values()} == {"finished"}
    stages = {(r["run_id"], r["stage"]) for r in rows}
    assert ("base", "base") in stages and {s for r, s in stages if r == "sequential-f1-s0-epochs"} == {"code", "math",
                                                                                                 "general"}
    assert {r["benchmark"] for r in rows} == {"gsm8k", "humaneval"}  # mt_bench: skipped, never a score
    assert {(r["run_id"], r["stage"]) for r in skipped} == stages
    final = study / "dmt-k-1-256-f1-s0-epochs" / "final"
    assert "USER: " in (final / "chat_template.jinja").read_text()  # the Vicuna prompt it was trained with
    assert (study / "report" / "index.html").exists() and (study / "report" / "stages.png").exists()
    assert "Strategy × ability" in capsys.readouterr().out


def test_the_shipped_placeholders_fail_in_one_line(tmp_path, capsys, monkeypatch):
    from mixtune.cli import main as mixtune_main

    monkeypatch.chdir(ROOT)
    out = f"out_dir={tmp_path / 'x'}"
    assert mixtune_main(["study", "-c", str(RECIPE), out]) == 2
    err = capsys.readouterr().err
    assert err == ("mixtune study: study.base /models/llama-7b: no such folder; set study.base=/path/to/checkpoint "
                   "(a local Hugging Face model folder or a mixtune run folder)\n")
    assert mixtune_main(["train", "-c", str(RECIPE), out]) == 2
    assert capsys.readouterr().err.startswith("mixtune train: model.path /models/llama-7b: no such folder; "
                                              "set model.path=/path/to/checkpoint")
    assert not (tmp_path / "x").exists()  # nothing that looks like a run or study folder
