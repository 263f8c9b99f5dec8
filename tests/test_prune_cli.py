"""The pruning analysis end to end on a tiny lab: every method at one sparsity, the dense control, a recovery SFT that
keeps the masks, the results database, the plot, normal HF checkpoints, and a rerun that reads results back."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from tiny_lab import make_tiny_lab
from transformers import AutoModelForCausalLM

from mixtune.analysis.prune import linear_sparsity
from mixtune.analysis.prune_cli import main
from mixtune.results import DB_NAME, ResultsDB


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return make_tiny_lab(tmp_path_factory.mktemp("lab"))


@pytest.mark.slow  # ~35 s on a loaded 2-core machine (the tiny world included)
def test_prune_analysis_end_to_end(lab, tmp_path, capsys):
    tree = {"name": "prune-tiny", "out_dir": str(tmp_path / "prune"), "world": {"out_dir": lab["world"]},
            "model": {"path": str(lab["final"])},
            "data": {"sources": [{"name": "math", "minilab": "math", "count": 16}], "max_seq_len": 256},
            "train": {"lr": 1e-3, "batch_size": 4, "bf16": False, "warmup_ratio": 0.0, "log_every": 1},
            "eval": {"benchmarks": ["minilab_math"], "limit": 3, "max_new_tokens": 8, "batch_size": 3},
            "prune": {"sparsities": [0.5], "calibration": 8, "recovery_steps": 2}}
    path = tmp_path / "prune.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert main(["-c", str(path)]) == 0
    out = tmp_path / "prune"
    with ResultsDB(out / DB_NAME) as db:
        runs = {r["run_id"]: r for r in db.runs("prune-tiny")}
        stages = {(r["run_id"], r["stage"]) for r in db.rows("prune-tiny")}
        recovered = {m["name"]: m["value"] for m in db.metrics("wanda-s0.5") if m["stage"] == "recovered"}
    assert set(runs) == {"dense", "magnitude_layer-s0.5", "magnitude_global-s0.5", "wanda-s0.5", "heads-s0.5",
                         "channels-s0.5"}
    assert all(r["status"] == "finished" for r in runs.values())
    assert all((rid, stage) in stages for rid in runs for stage in ("pruned", "recovered"))
    assert recovered["linear_sparsity"] == pytest.approx(0.5, abs=1e-3)  # the masks survive the recovery SFT
    result = json.loads((out / "prune.json").read_text())
    assert result["stats"]["heads-s0.5"]["params"] < result["stats"]["dense"]["params"]
    assert result["stats"]["heads-s0.5"]["checkpoint_mb"] < result["stats"]["dense"]["checkpoint_mb"]
    assert (out / "prune.png").stat().st_size > 1000
    for label in ("wanda-s0.5", "channels-s0.5"):  # normal HF checkpoints
        model = AutoModelForCausalLM.from_pretrained(out / label / "model", local_files_only=True)
        with torch.no_grad():
            assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] == model.config.vocab_size
    assert linear_sparsity(AutoModelForCausalLM.from_pretrained(out / "wanda-s0.5" / "model")) == pytest.approx(0.5,
                                                                                                       abs=1e-3)
    capsys.readouterr()
    assert main(["-c", str(path)]) == 0  # resumed: nothing redone
    assert "finished earlier, read back" in capsys.readouterr().out


def test_prune_without_a_model_is_one_line(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "out_dir": str(tmp_path / "p"), "eval": {"benchmarks": ["gsm8k"]}}))
    assert main(["-c", str(path)]) == 2
    assert capsys.readouterr().err.strip() == ("mixtune analyze prune: prune: model.path is not set; give the trained "
                                               "model to prune (a run's final/ folder)")
