"""`mixtune analyze`: the registry lists the analyses, each `--help` documents its recipe section without loading
torch, and an unknown analysis is one line naming the valid ones (exit 2)."""

from __future__ import annotations

import subprocess
import sys

from test_cli_help import SRC, help_of


def test_analyze_lists_its_analyses_and_their_recipe_fields_without_torch():
    listing = help_of("analyze", "--help")
    assert listing["heavy"] == [] and "usage: mixtune analyze" in listing["help"]
    assert "prune " in listing["help"] and "tts " in listing["help"]
    for what, field in (("prune", "prune.sparsities"), ("tts", "tts.n_max")):
        probe = help_of("analyze", what, "--help")
        assert probe["heavy"] == [], (what, probe["heavy"])
        assert f"usage: mixtune analyze {what}" in probe["help"] and field in probe["help"]


def test_unknown_analysis_is_one_line_with_the_valid_names():
    out = subprocess.run([sys.executable, "-m", "mixtune.cli", "analyze", "prnue"], capture_output=True, text=True,
                         env={"PYTHONPATH": str(SRC)}, timeout=120, check=False)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["mixtune analyze: unknown verb 'prnue'; valid verbs: capacity, scaling, cpt, prune, tts"]
