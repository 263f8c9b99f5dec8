"""The stage registry: kinds chain in one recipe with their own overrides, each starting from the previous stage's
weights, abilities scored after every stage; a run folder has one writer; resume falls back to a loadable
checkpoint; what is checked before training fails before the run folder exists."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import stage_probe
import torch
from conftest import chat_examples
from safetensors.torch import load_file

from mixtune.config import Recipe, RecipeError, load_recipe
from mixtune.runs import RunLock, RunLockedError
from mixtune.train import stages as stages_module
from mixtune.train.run import train


@pytest.fixture()
def probe_kind(monkeypatch):
    monkeypatch.setitem(stages_module.STAGE_KINDS, "probe", "stage_probe:run_stage")
    stage_probe.SEEN.clear()
    return stage_probe.SEEN


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    out = {}
    for name, seed in (("math", 1), ("code", 2), ("prefs", 3)):
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"messages": ex["messages"]}) + "\n"
                                for ex in chat_examples(16, seed=seed, source=name)))
        out[name] = str(path)
    return out


def tree_for(tmp_path, base_dir, files, **extra) -> dict:
    tree = {"name": "r", "out_dir": str(tmp_path / "run"), "model": {"path": str(base_dir)},
            "data": {"sources": [{"name": "math", "path": files["math"], "ability": "math"},
                                 {"name": "code", "path": files["code"], "ability": "code"},
                                 {"name": "prefs", "path": files["prefs"], "ability": "preference"}]},
            "train": {"lr": 5e-3, "batch_size": 8, "bf16": False, "epochs": 1, "warmup_ratio": 0.0}}
    tree.update(extra)
    return tree


def test_kinds_chain_after_a_strategy_with_their_own_overrides(tmp_path, base_dir, files, probe_kind):
    tree = tree_for(tmp_path, base_dir, files, strategy={
        "name": "multi_task", "then": [{"name": "after", "kind": "probe", "sources": ["prefs"],
                                        "overrides": ["train.lr=0.125"]}]})
    summary = train(Recipe.model_validate(tree))
    assert [(s["name"], s["kind"]) for s in summary["stages"]] == [("multi_task", "sft"), ("after", "probe")]
    sft = json.loads((tmp_path / "run" / "stages" / "0-multi_task" / "manifest.json").read_text())
    assert sorted(sft["drawn"]) == ["code", "math"]  # the later stage's source is not trained by SFT
    (seen,) = probe_kind
    assert seen["sources"] == ["prefs"] and seen["n"] == 16 and seen["lr"] == 0.125  # its own override
    sft_weights = load_file(tmp_path / "run" / "stages" / "0-multi_task" / "stage_weights.safetensors")
    base = load_file(base_dir / "model.safetensors")
    assert any(not torch.equal(sft_weights[k], base[k]) for k in base)
    # the probe saw the weights the SFT stage ended with (tied embeddings are stored once, counted twice)
    ours = sum(float(v.double().sum()) for v in sft_weights.values())
    assert seen["checksum"] == pytest.approx(ours + float(sft_weights["model.embed_tokens.weight"].double().sum()),
                                             rel=1e-9) or seen["checksum"] == pytest.approx(ours, rel=1e-9)
    assert json.loads((tmp_path / "run" / "stages" / "1-after" / "stage.json").read_text())["metrics"] == {
        "probe/seen": 16.0}


def test_explicit_plan_orders_any_kinds(tmp_path, base_dir, files, probe_kind):
    tree = tree_for(tmp_path, base_dir, files, strategy={"name": "stages", "stages": [
        {"name": "first", "kind": "probe", "sources": ["prefs"]},
        {"name": "sft", "sources": ["math", "code"]},
        {"name": "last", "kind": "probe", "sources": ["prefs"], "overrides": ["train.lr=0.5"]}]})
    summary = train(Recipe.model_validate(tree))
    assert [s["kind"] for s in summary["stages"]] == ["probe", "sft", "probe"]
    assert [s["lr"] for s in probe_kind] == [5e-3, 0.5]
    assert probe_kind[0]["checksum"] != probe_kind[1]["checksum"]  # SFT ran between them


def test_unknown_kind_and_fixed_fields_fail_at_load(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent("""\
        name: r
        strategy: {name: stages, stages: [{name: a, kind: dpoo, sources: [x]}]}
        """))
    with pytest.raises(RecipeError, match=r"strategy.stages.0.kind: Value error, unknown stage kind 'dpoo'; valid: sft"):
        load_recipe(recipe)
    recipe.write_text("name: r\nstrategy: {name: stages, stages: [{name: a, sources: [x], overrides: [adapter.type=lora]}]}\n")
    with pytest.raises(RecipeError, match="cannot change the model, adapter or run folder"):
        load_recipe(recipe)


@pytest.mark.parametrize("override,problem", [
    ("eval.benchmarks=[humanevil]", "unknown benchmark 'humanevil'; valid: gsm8k"),
    ("train.lr=.inf", "train.lr: Input should be a finite number"),
    ("data.template=vicunna", "unknown chat template 'vicunna'"),
    ("strategy.name=dmtt", "unknown strategy 'dmtt'; valid: multi_task"),
    ("adapter.type=loraa", "unknown adapter 'loraa'; valid: none, lora"),
])
def test_what_can_be_checked_is_checked_at_load(tmp_path, override, problem):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\n")
    with pytest.raises(RecipeError, match=problem.replace("[", r"\[").replace(".", r"\.")):
        load_recipe(recipe, [override])


def test_a_missing_data_file_fails_before_the_run_folder_exists(tmp_path, base_dir, files):
    from mixtune.data.formats import DataError

    tree = tree_for(tmp_path, base_dir, files)
    tree["data"]["sources"][1]["path"] = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="nope.jsonl: data file not found"):
        train(Recipe.model_validate(tree))
    assert not (tmp_path / "run").exists()


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path, base_dir, files):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""\
        import sys, time
        from mixtune.runs import RunLock
        with RunLock({str(run)!r}):
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"another mixtune process \(pid {holder.pid}\) is writing"):
            train(Recipe.model_validate(tree_for(tmp_path, base_dir, files)))
        assert not (run / "config.yaml").exists()  # the refused writer wrote nothing
    finally:
        holder.kill()
        holder.wait(timeout=10)
    with RunLock(run):  # the holder died: its lock died with it (no stale lock)
        pass


def test_resume_falls_back_to_the_newest_loadable_checkpoint(tmp_path, tiny_tokenizer_dir, tiny_corpus, capsys):
    from conftest import tiny_model_section

    from mixtune.train.pretrain import pretrain

    def recipe(name):
        return Recipe.model_validate({
            "name": name, "out_dir": str(tmp_path / name), "model": tiny_model_section(tiny_tokenizer_dir),
            "pretrain_corpus": [str(tiny_corpus)],
            "train": {"max_steps": 8, "batch_size": 4, "seq_len": 32, "save_every": 2, "bf16": False,
                      "log_every": 1, "lr": 3e-3, "warmup_ratio": 0.0}})

    straight = pretrain(recipe("straight"))
    killed = recipe("killed")
    pretrain(killed, stop_at_step=7)  # checkpoints at steps 2, 4 and 6 (the last two kept)
    ckpts = killed.run_dir / "checkpoints"
    (ckpts / "latest.json").unlink()  # a lost pointer must not restart at step 0
    (ckpts / "step-0000006" / "weights.safetensors").write_bytes(b"truncated")  # the newest is corrupt
    capsys.readouterr()
    resumed = pretrain(killed, resume=True)
    lines = capsys.readouterr().out.splitlines()
    assert any("step-0000006 does not load" in line for line in lines)
    assert any("continuing from" in line and "step-0000004" in line for line in lines)
    assert resumed["eval_loss"] == pytest.approx(straight["eval_loss"], abs=1e-6)
    steps = [json.loads(line)["step"] for line in (killed.run_dir / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == sorted(set(steps))  # the rows the killed run logged after step 4 were dropped, none twice
