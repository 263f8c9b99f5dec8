"""`mixtune demo`: the study's overrides pass through, a failed study is a failed demo, a missing study recipe is one
line and exit 2 (not a silent switch to the quickstart)."""

from __future__ import annotations

import os
import subprocess
import sys

from mixtune import demo


def test_overrides_reach_the_study_and_its_exit_code_is_the_demos(tmp_path, monkeypatch):
    study = tmp_path / "study.yaml"
    study.write_text("name: s\n")
    calls = []
    monkeypatch.setattr(demo, "prepare_base", lambda recipe: calls.append(("base", recipe.name)))
    no_compile = type("T", (), {"compile": False})()
    monkeypatch.setattr(demo, "load_recipe",
                        lambda path, overrides=(): type("R", (), {"name": str(path), "train": no_compile})())
    import mixtune.study.cli as study_cli

    for code in (0, 1):
        monkeypatch.setattr(study_cli, "main", lambda argv, code=code: calls.append(("study", argv)) or code)
        assert demo.main(["--study", str(study), "train.packed_attention=false", "study.seeds=[0,1]"]) == code
    assert calls[-1] == ("study", ["-c", str(study), "train.packed_attention=false", "study.seeds=[0,1]"])
    assert calls[0] == ("base", "recipes/base-mini.yaml")


def test_a_missing_study_recipe_is_one_line_and_exit_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mixtune.cli", "demo", "--study", str(tmp_path / "nope.yaml")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "nope.yaml not found" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "runs").exists()


def test_a_bad_override_is_refused_before_the_base_is_built(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mixtune.cli", "demo", "train.no_such_switch=1"], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 2, out.stderr
    assert "no_such_switch" in out.stderr and "Traceback" not in out.stderr and out.stderr.strip().count("\n") == 0


def test_compile_without_a_cxx_compiler_is_refused_before_the_base_is_built(tmp_path):
    env = {**os.environ, "CXX": "no-such-cxx-for-mixtune"}  # inductor's compiler search reads CXX
    no_base = tmp_path / "no-such-base.yaml"  # without the check the demo would stop at this base instead
    out = subprocess.run([sys.executable, "-m", "mixtune.cli", "demo", "--base", str(no_base), "train.compile=true"],
                         capture_output=True, text=True, timeout=120, check=False, env=env)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert "needs a C++ compiler and found none of no-such-cxx-for-mixtune" in out.stderr
