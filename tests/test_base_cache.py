"""The mini-lab base's cache (`study.base.prepare_base`): keyed by what each step reads. A world file no step reads
leaves the tokenizer and base cached; a changed corpus re-trains the base from scratch (its old checkpoints are not
resumed on other data); a killed pre-training (no stamp yet) resumes."""

from __future__ import annotations

import json

import yaml
from tiny_lab import tiny_base_tree

from mixtune.config import load_recipe
from mixtune.study.base import STAMP, prepare_base


def _recipe(root):
    tree = tiny_base_tree(root, save_every=1)
    path = root / "base.yaml"
    path.write_text(yaml.safe_dump(tree))
    return load_recipe(path)


def test_base_cache_follows_the_files_each_step_reads(tmp_path):
    recipe, logs = _recipe(tmp_path), []
    final = prepare_base(recipe, log=logs.append)
    weights = (final / "model.safetensors").read_bytes()
    assert [line.split(":")[0] for line in logs] == ["[base] world", "[base] tokenizer", "[base] base model"]

    # a file in the world that neither the tokenizer nor the pre-training reads: everything stays cached
    (tmp_path / "world" / "sft" / "extra.jsonl").write_text('{"x": 1}\n')
    logs.clear()
    prepare_base(recipe, log=logs.append)
    assert all("cached" in line for line in logs), logs

    # a training field added to the schema after the stamp was written: cached while it holds its default value
    stamp = tmp_path / "base" / STAMP
    key = json.loads(stamp.read_text())
    assert key["train"].pop("fused_ce") is False
    stamp.write_text(json.dumps(key))
    logs.clear()
    prepare_base(recipe, log=logs.append)
    assert any("base model: cached" in line for line in logs), logs
    logs.clear()
    prepare_base(recipe.model_copy(update={"train": recipe.train.model_copy(update={"fused_ce": True})}),
                 log=logs.append)  # the new switch turned on: not the base the stamp describes
    assert any("(train changed)" in line for line in logs), logs
    prepare_base(recipe, log=lambda _: None)  # back to the recipe's own base
    assert (final / "model.safetensors").read_bytes() == weights

    # an old-style stamp (the configuration, not the inputs): the base is made again, from scratch
    stamp.write_text(json.dumps({"world": {}, "model": {}}))
    logs.clear()
    prepare_base(recipe, log=logs.append)
    assert any("pre-trained from other inputs (corpus, model, tokenizer, train, world changed)" in line
               for line in logs), logs
    assert not any("resume" in line for line in logs)
    assert (final / "model.safetensors").read_bytes() == weights  # same inputs, same seed, from step 0: same bits

    # the corpus changes: the base is pre-trained again, its checkpoints from the old corpus are not resumed
    corpus = tmp_path / "world" / "corpus" / "pretrain.jsonl"
    rows = corpus.read_text().splitlines()
    corpus.write_text("\n".join(rows[len(rows) // 2:]) + "\n")
    logs.clear()
    prepare_base(recipe, log=logs.append)
    assert any("(corpus, tokenizer changed)" in line for line in logs), logs  # the tokenizer reads it too
    metrics = [json.loads(r) for r in (tmp_path / "base" / "metrics.jsonl").read_text().splitlines()]
    assert next(m["step"] for m in metrics if "loss" in m) == 1  # from the first step, not resumed
    assert (final / "model.safetensors").read_bytes() != weights

    # killed before its stamp was written: the next call resumes and stamps
    stamp.unlink()
    logs.clear()
    prepare_base(recipe, log=logs.append)
    assert stamp.exists() and any("pre-trained in" in line for line in logs)
