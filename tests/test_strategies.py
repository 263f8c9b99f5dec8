"""Strategies as stage plans (DMT §3.5, METHODS.md §1): stage names, source sets, DMT replay subsets."""

from __future__ import annotations

import pytest

from mixtune.config import SourceConfig, StrategyConfig
from mixtune.train.strategies import StrategyError, plan_stages, stage_examples

MINILAB = [SourceConfig(name=a, minilab=a) for a in ("code", "math", "general")]


def plan(sources=MINILAB, **strategy):
    return [(s.name, s.sources, s.replay) for s in plan_stages(StrategyConfig(**strategy), sources)]


def pools(sizes: dict[str, int]) -> dict[str, list[dict]]:
    return {name: [{"id": f"{name}/{i}", "source": name} for i in range(n)] for name, n in sizes.items()}


def test_multi_task_is_one_stage_on_every_source():
    assert plan(name="multi_task") == [("multi_task", ("code", "math", "general"), ())]


def test_sequential_default_order_is_code_math_general():
    assert plan(name="sequential") == [("code", ("code",), ()), ("math", ("math",), ()),
                                       ("general", ("general",), ())]
    assert [s[0] for s in plan(name="sequential", order=["general", "math", "code"])] == ["general", "math", "code"]


def test_sequential_groups_sources_by_ability():
    sources = [SourceConfig(name="gsm", path="g.jsonl", format="gsm8k"),  # the format's ability: math
               SourceConfig(name="alpaca", path="a.json", ability="code"),
               SourceConfig(name="arith", minilab="math"),
               SourceConfig(name="chat", path="c.json", ability="general")]
    assert plan(sources, name="sequential") == [("code", ("alpaca",), ()), ("math", ("gsm", "arith"), ()),
                                                ("general", ("chat",), ())]


def test_mixed_sequential_is_specialized_then_general_without_replay():
    assert plan(name="mixed_sequential") == [("specialized", ("code", "math"), ()), ("general", ("general",), ())]


def test_dmt_replays_k_of_each_specialized_source():
    assert plan(name="dmt", k=1 / 64) == [("specialized", ("code", "math"), ()),
                                          ("general", ("general",), (("code", 1 / 64), ("math", 1 / 64)))]
    # k = 0 is mixed sequential
    assert plan(name="dmt", k=0) == plan(name="mixed_sequential")


def test_dmt_and_mixed_sequential_share_the_first_stage_key_only():
    dmt = plan_stages(StrategyConfig(name="dmt", k=0.25), MINILAB)
    mixed = plan_stages(StrategyConfig(name="mixed_sequential"), MINILAB)
    assert dmt[0].key() == mixed[0].key()
    assert dmt[1].key() != mixed[1].key()
    assert dmt[1].key() != plan_stages(StrategyConfig(name="dmt", k=0.5), MINILAB)[1].key()


@pytest.mark.parametrize("k", [1.0, 0.25, 1 / 16, 1 / 256])
def test_dmt_replay_is_a_seeded_subset_of_the_stage1_pool(k):
    stage2 = plan_stages(StrategyConfig(name="dmt", k=k), MINILAB)[1]
    data = pools({"code": 300, "math": 200, "general": 100})
    examples, manifest = stage_examples(stage2, data, seed=0)
    for name, n in (("code", 300), ("math", 200)):
        replay = manifest[f"{name} (replay)"]
        assert replay["drawn"] == max(1, round(k * n)) and replay["replay_k"] == k
        assert len(set(replay["ids"])) == replay["drawn"]  # without replacement
        assert set(replay["ids"]) <= {ex["id"] for ex in data[name]}
    assert manifest["general"]["drawn"] == 100
    assert len(examples) == 100 + manifest["code (replay)"]["drawn"] + manifest["math (replay)"]["drawn"]
    again, _ = stage_examples(stage2, data, seed=0)
    assert [ex["id"] for ex in again] == [ex["id"] for ex in examples]
    if 0 < k < 1:
        other, _ = stage_examples(stage2, data, seed=1)
        assert [ex["id"] for ex in other] != [ex["id"] for ex in examples]


def test_explicit_stages_and_their_unknown_sources():
    stages = [{"name": "warm", "sources": ["math"]},
              {"name": "rest", "sources": ["code", "general"], "replay": {"math": 0.5}}]
    assert plan(name="stages", stages=stages) == [("warm", ("math",), ()),
                                                  ("rest", ("code", "general"), (("math", 0.5),))]
    bad = [{"name": "s1", "sources": ["math", "poetry"], "replay": {"chess": 0.1}}]
    with pytest.raises(StrategyError, match=r"stage s1: names unknown sources \['poetry', 'chess'\]"):
        plan(name="stages", stages=bad)
    with pytest.raises(StrategyError, match="empty"):
        plan(name="stages", stages=[])


def test_a_missing_ability_or_an_unplaced_source_fails():
    no_general = MINILAB[:2]
    with pytest.raises(StrategyError, match=r"no source with ability \['general'\]"):
        plan(no_general, name="dmt")
    with_knowledge = [*MINILAB, SourceConfig(name="facts", minilab="knowledge")]
    with pytest.raises(StrategyError, match="facts"):  # it would otherwise be dropped silently
        plan(with_knowledge, name="mixed_sequential")
    with pytest.raises(StrategyError, match="facts"):
        plan(with_knowledge, name="sequential")
    assert plan(with_knowledge, name="dmt", general=["general", "knowledge"])[1][1] == ("general", "facts")
