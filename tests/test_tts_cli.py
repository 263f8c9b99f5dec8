"""Test-time scaling end to end on a tiny lab: samples cached and read back, a PRM and an ORM trained from the same
samples, every curve recorded at N = 1, 2, 4 in the results database, the plot written."""

from __future__ import annotations

import json

import pytest
import yaml
from tiny_lab import make_tiny_lab
from transformers import AutoModelForTokenClassification

from mixtune.analysis.tts_cli import main
from mixtune.results import DB_NAME, ResultsDB


@pytest.mark.slow  # ~1 min on a loaded 2-core machine (the tiny world included)
def test_tts_analysis_end_to_end(tmp_path, capsys):
    lab = make_tiny_lab(tmp_path / "lab", steps=20)
    tree = {"name": "tts-tiny", "out_dir": str(tmp_path / "tts"), "world": {"out_dir": lab["world"]},
            "model": {"path": str(lab["final"])}, "train": {"batch_size": 4, "bf16": False, "warmup_ratio": 0.0},
            "tts": {"n_max": 4, "math_problems": 3, "code_tasks": 2, "train_questions": 6, "train_code_tasks": 2,
                    "train_samples": 2, "max_new_tokens": 12, "prm_epochs": 1, "temperature": 1.5}}
    path = tmp_path / "tts.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert main(["-c", str(path)]) == 0
    out = tmp_path / "tts"
    result = json.loads((out / "tts.json").read_text())
    math, code = result["curves"]["minilab_math"], result["curves"]["minilab_code"]
    assert set(math) == {"self-consistency", "best-of-N ORM", "best-of-N PRM (min)", "best-of-N PRM (prod)",
                         "PRM-weighted vote (min)", "oracle pass@N"}
    assert set(code) == {"pass@k (tests)", "best-of-N ORM"}
    for curves in (math, code):
        assert all([n for n, _ in points] == [1, 2, 4] for points in curves.values())
        at_one = {points[0][1] for points in curves.values()}
        assert len({round(v, 9) for v in at_one}) == 1  # from one sample every rule picks that sample
    with ResultsDB(out / DB_NAME) as db:
        rows = db.rows("tts-tiny")
        metrics = {m["name"] for m in db.metrics("tts")}
    assert {(r["run_id"], r["step"]) for r in rows} == {(f"{b}:{label}", n) for b, c in result["curves"].items()
                                                        for label in c for n in (1, 2, 4)}
    assert {"prm/train_loss", "prm/test_step_accuracy", "orm/pairs", "orm/test_auroc_minilab_math",
            "prm_min/test_auroc_minilab_math", "orm/test_auroc_minilab_code",
            "prm_prod/test_auroc_within_minilab_math", "orm/test_auroc_within_minilab_code"} <= metrics
    assert (out / "tts.png").stat().st_size > 1000
    AutoModelForTokenClassification.from_pretrained(out / "prm", local_files_only=True)
    assert (out / "orm" / "run" / "final").is_dir()
    capsys.readouterr()
    assert main(["-c", str(path), "tts.orm=" + str(out / "orm" / "run" / "final"), "tts.prm=" + str(out / "prm")]) == 0
    assert capsys.readouterr().out.count("samples read back") == 4  # nothing sampled twice
