"""recipes/dmt-llama.yaml: the DMT paper's real-model set-up loads as written, and a two-step dry run on a tiny model
trains both DMT stages on the real files in ../shared/data (GSM8K, Code Alpaca 2K, FastChat's ShareGPT sample)."""

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
