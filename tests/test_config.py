"""Recipe loading: overrides (sections and list items), errors naming the key path, help text from docstrings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mixtune.config import Recipe, RecipeError, apply_override, describe_fields, load_recipe, parse_override


def test_override_parses_yaml_values_and_indexes_lists(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: r\ndata:\n  sources:\n    - {name: a, minilab: math}\n    - {name: b, minilab: code}\n")
    recipe = load_recipe(path, ["data.sources.1.count=7", "train.lr=3e-4", "eval.benchmarks=[minilab_math]"])
    assert recipe.data.sources[1].count == 7 and recipe.data.sources[0].count is None
    assert recipe.train.lr == pytest.approx(3e-4)
    assert recipe.eval.benchmarks == ["minilab_math"]


@pytest.mark.parametrize("text, message", [
    ("data.sources.5.count=1", "data.sources.5 is not an index of a 1-item list"),
    ("train.lr.x=1", "train.lr is not a section"),
    ("noequals", "expected key.sub=value"),
])
def test_bad_overrides_name_the_key(text, message):
    tree = {"name": "r", "data": {"sources": [{"name": "a", "minilab": "math"}]}, "train": {"lr": 1.0}}
    with pytest.raises(RecipeError, match=message):
        apply_override(tree, *parse_override(text))


def test_recipe_is_frozen_and_rejects_unknown_sections(tmp_path):
    recipe = Recipe(name="x")
    with pytest.raises(ValidationError, match="frozen"):
        recipe.train.lr = 1.0  # frozen: configs never change after load
    path = tmp_path / "r.yaml"
    path.write_text("name: x\ntrian: {lr: 1}\n")
    with pytest.raises(RecipeError, match="r.yaml: trian: Extra inputs are not permitted"):
        load_recipe(path)


def test_every_field_is_documented():
    undocumented = [key for key, _, doc in describe_fields(Recipe) if not doc]
    assert not undocumented, undocumented
