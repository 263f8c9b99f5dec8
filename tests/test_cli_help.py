"""`mixtune <verb> --help` loads no torch (instant) and documents every recipe field: source fields as list
entries, list-index overrides, and the valid names of registry and choice fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PROBE = """
import contextlib, io, json, resource, sys
from mixtune.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
use = resource.getrusage(resource.RUSAGE_SELF)
heavy = [m for m in ("torch", "transformers", "datasets", "tokenizers", "matplotlib", "peft") if m in sys.modules]
print(json.dumps({"help": out.getvalue(), "heavy": heavy, "cpu_s": use.ru_utime + use.ru_stime}))
"""


def help_of(*argv: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, timeout=120,
                         check=True)
    return json.loads(out.stdout)


def test_help_imports_no_torch_and_is_quick():
    for argv in (["train", "--help"], ["study", "--help"], ["eval", "run", "--help"], ["pretrain", "--help"],
                 ["export", "--help"], ["report", "--help"], ["tokenizer", "--help"], ["--help"]):
        probe = help_of(*argv)
        assert probe["heavy"] == [], (argv, probe["heavy"])
        # CPU seconds, not wall time: the shared machine's load must not decide the test (was ~15 s with torch)
        assert probe["cpu_s"] < 2.0, (argv, probe["cpu_s"])
        assert "usage: mixtune" in probe["help"]


def test_help_documents_source_fields_list_overrides_and_valid_names():
    text = " ".join(help_of("train", "--help")["help"].split())  # the epilog wraps lines
    for key in ("data.sources[].format", "data.sources[].count", "data.sources[].fraction", "data.sources[].ratio",
                "data.sources[].skip_invalid", "data.sources[].ability", "data.sources[].streaming",
                "data.sources[].dataset_info", "strategy.then[].kind", "model.dtype", "train.gradient_checkpointing"):
        assert key in text, key
    assert "a list entry by its index from 0: data.sources.0.count=7" in text
    from mixtune.config import registry_names

    assert f"Valid: {', '.join(registry_names('data format'))}." in text  # the format registry, read off it
    assert "alpaca, sharegpt" in text and "trl_standard" in text
    assert "Valid: auto, tokenizer, chatml, qwen2, llama3, mistral, gemma, vicuna." in text  # the template registry
    assert "One of: math, code, general, knowledge, text, preference." in text  # a Literal's choices
    assert "One of: auto, sdpa, eager, flash_attention_2." in text
    study = " ".join(help_of("study", "--help")["help"].split())
    assert "study.base " in study and "study.runs[].label" in study and "Valid: multi_task, sequential" in study
