"""SFT mixtures: counts by fraction / count / ratio, sampling with and without replacement, seeds, held-out eval
examples, skipped records, and the manifest `train()` saves (ids, example and token counts per source and ability)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import chat_examples, tiny_model_section

from mixtune.config import Recipe, SourceConfig
from mixtune.data.formats import DataError
from mixtune.data.mixture import MixtureError, draw_mixture


def write_source(root, name: str, n: int, seed: int) -> str:
    path = root / f"{name}.jsonl"
    with path.open("w") as f:
        for ex in chat_examples(n, seed=seed, ability=name, source=name):
            f.write(json.dumps({"messages": ex["messages"]}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    return {"math": write_source(root, "math", 60, 1), "code": write_source(root, "code", 40, 2),
            "general": write_source(root, "general", 50, 3)}


def src(files, name: str, **amount) -> SourceConfig:
    return SourceConfig(name=name, path=files[name], ability=name, **amount)


def per_source(mixture) -> dict[str, int]:
    return dict(Counter(ex["source"] for ex in mixture.train))


def test_fraction_count_and_ratio_counts(files):
    sources = [src(files, "math", fraction=0.5), src(files, "code", count=10),
               src(files, "general", ratio=2.0, relative_to="code")]  # 2 × what code drew
    mixture = draw_mixture(sources, "unused", seed=0, log=lambda _: None)
    assert per_source(mixture) == {"math": 30, "code": 10, "general": 20}
    assert {k: m["drawn"] for k, m in mixture.manifest.items()} == {"math": 30, "code": 10, "general": 20}
    assert {k: m["available"] for k, m in mixture.manifest.items()} == {"math": 60, "code": 40, "general": 50}
    for name, m in mixture.manifest.items():
        assert m["ids"] == [ex["id"] for ex in mixture.train if ex["source"] == name]
        assert m["ability"] == name and m["replace"] is False


def test_ratio_follows_the_drawn_count_and_needs_an_earlier_source(files):
    sources = [src(files, "code", fraction=0.25), src(files, "general", ratio=0.5, relative_to="code")]
    assert per_source(draw_mixture(sources, "", seed=0)) == {"code": 10, "general": 5}
    with pytest.raises(MixtureError, match="relative_to 'code' is not an earlier source"):
        draw_mixture(sources[::-1], "", seed=0)


def test_without_replacement_ids_are_unique_and_asking_for_too_many_fails(files):
    mixture = draw_mixture([src(files, "code", count=40)], "", seed=3)
    ids = [ex["id"] for ex in mixture.train]
    assert len(ids) == len(set(ids)) == 40
    with pytest.raises(MixtureError, match=r"source code: asks for 41 examples but holds 40; .*replace: true"):
        draw_mixture([src(files, "code", count=41)], "", seed=3)


def test_with_replacement_is_allowed_only_when_asked_and_logged(files):
    lines = []
    mixture = draw_mixture([src(files, "code", count=100, replace=True)], "", seed=3, log=lines.append)
    ids = [ex["id"] for ex in mixture.train]
    assert len(ids) == 100 and len(set(ids)) <= 40  # more than the source holds: repeats
    assert lines == ["source code: sampling 100 of 40 WITH replacement"]
    assert mixture.manifest["code"]["replace"] is True
    quiet = []
    draw_mixture([src(files, "code", count=10)], "", seed=3, log=quiet.append)
    assert not any("replacement" in line for line in quiet)


def test_same_seed_same_draw_other_seed_other_draw(files):
    sources = [src(files, "math", fraction=0.5), src(files, "general", count=7)]

    def ids(seed):
        return [ex["id"] for ex in draw_mixture(sources, "", seed=seed).train]

    assert ids(0) == ids(0)
    assert ids(0) != ids(1)
    assert set(ids(0)) != set(ids(1))  # a different subset, not only a different order


def test_eval_count_is_held_out_and_disjoint_from_train(files):
    mixture = draw_mixture([src(files, "math", eval_count=8), src(files, "code", count=5, eval_count=3)], "", seed=0)
    held = {name: [ex["id"] for ex in exs] for name, exs in mixture.eval.items()}
    assert {k: len(v) for k, v in held.items()} == {"math": 8, "code": 3}
    train_ids = {ex["id"] for ex in mixture.train}
    assert not train_ids & (set(held["math"]) | set(held["code"]))
    assert per_source(mixture) == {"math": 52, "code": 5}  # all of math's remaining 52
    assert mixture.manifest["math"]["eval_ids"] == held["math"] and mixture.manifest["math"]["available"] == 52
    # the held-out examples do not depend on how much is drawn for training
    smaller = draw_mixture([src(files, "math", fraction=0.25, eval_count=8)], "", seed=0)
    assert [ex["id"] for ex in smaller.eval["math"]] == held["math"]
    with pytest.raises(MixtureError, match="eval_count 40"):
        draw_mixture([src(files, "code", eval_count=40)], "", seed=0)


def test_invalid_records_fail_unless_skipped_and_skips_are_counted(tmp_path):
    path = tmp_path / "alpaca.json"
    records = [{"instruction": f"task {i}", "input": "", "output": f"answer {i}"} for i in range(5)]
    records[2]["output"] = ""
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match="1 invalid record"):
        draw_mixture([SourceConfig(name="alp", path=str(path))], "", seed=0)
    lines = []
    mixture = draw_mixture([SourceConfig(name="alp", path=str(path), skip_invalid=True)], "", seed=0,
                           log=lines.append)
    assert len(mixture.train) == 4 and mixture.manifest["alp"]["skipped"] == 1
    assert "alp/2" not in mixture.manifest["alp"]["ids"]
    assert len(lines) == 1 and "skipped 1 invalid records" in lines[0] and "alpaca.json:3: output:" in lines[0]


def test_train_saves_the_manifest_with_ids_and_token_counts(tmp_path, files, tiny_tokenizer_dir):
    from mixtune.data.sft_dataset import build_sft_rows
    from mixtune.model.load import build_llama, load_tokenizer
    from mixtune.train.run import train
    from mixtune.train.save import save_final

    tok = load_tokenizer(tiny_tokenizer_dir)
    tiny = Recipe.model_validate({"name": "b", "model": tiny_model_section(tiny_tokenizer_dir)})
    save_final(build_llama(tiny.model, tok), tok, tmp_path / "base", adapter="none", base=None)
    recipe = Recipe.model_validate({
        "name": "m", "out_dir": str(tmp_path / "run"), "model": {"path": str(tmp_path / "base")},
        "data": {"sources": [src(files, "math", fraction=0.5).model_dump(exclude_none=True),
                             src(files, "code", count=12).model_dump(exclude_none=True),
                             {"name": "chat", "path": files["general"], "ratio": 0.5, "relative_to": "code"}],
                 "shuffle_seed": 4},
        "train": {"batch_size": 16, "epochs": 2, "bf16": False, "log_every": 1}})
    train(recipe, log=lambda _: None)
    manifest = json.loads((recipe.run_dir / "manifest.json").read_text())["sources"]
    assert {k: (m["drawn"], m["ability"]) for k, m in manifest.items()} == {
        "math": (30, "math"), "code": (12, "code"), "chat": (6, "general")}
    drawn = draw_mixture(recipe.data.sources, "", seed=4)
    stats = build_sft_rows(drawn.train, tok, recipe.data).summary()["per_source"]
    for name, m in manifest.items():
        assert m["ids"] == drawn.manifest[name]["ids"] and len(set(m["ids"])) == m["drawn"]
        assert m["tokens"] == stats[name]["tokens"] > m["target_tokens"] == stats[name]["target_tokens"] > 0
    summary = json.loads((recipe.run_dir / "mixture.json").read_text())
    assert summary["abilities"]["general"] == {"examples": 6, "tokens": manifest["chat"]["tokens"],
                                               "target_tokens": manifest["chat"]["target_tokens"]}
    assert "ids" not in summary["sources"]["math"]
    # reshuffled every epoch, each epoch's seed logged: 48 examples / 16 = 3 steps per epoch, 2 epochs
    stage_dir = next((recipe.run_dir / "stages").iterdir())
    logged = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    seeds = {r["epoch"]: r["shuffle_seed"] for r in logged if "shuffle_seed" in r}
    assert len(seeds) == 2 and seeds[0] != seeds[1]
