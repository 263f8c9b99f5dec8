"""`mixtune analyze <what>`: the sub-verb registry, usage, and user errors as one line with exit code 2."""

from __future__ import annotations

from mixtune.analysis.cli import ANALYSES
from mixtune.cli import main


def test_analyze_lists_its_analyses(capsys):
    assert main(["analyze", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("capacity", "scaling", "cpt"))
    assert {"capacity", "scaling", "cpt"} <= set(ANALYSES)


def test_unknown_analysis_names_the_valid_ones(capsys):
    assert main(["analyze", "pruning"]) == 2
    err = capsys.readouterr().err
    assert "unknown verb 'pruning'" in err and all(name in err.split("valid verbs:")[1] for name in ANALYSES)


def test_a_recipe_the_analysis_cannot_run_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: x\nout_dir: {tmp_path / 'out'}\n")
    for what, needs in (("capacity", "analysis.capacity.runs is empty"), ("scaling", "analysis.scaling needs"),
                        ("cpt", "the base needs train.schedule: wsd")):
        assert main(["analyze", what, "-c", str(recipe)]) == 2
        err = capsys.readouterr().err
        assert needs in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_bad_recipe_key_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nanalysis: {capacity: {runs: [{size: nope, n_people: 4, exposures: 1}]}}\n")
    assert main(["analyze", "capacity", "-c", str(recipe)]) == 2
    assert "not in capacity.sizes" in capsys.readouterr().err
