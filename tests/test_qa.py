"""Closed-book QA: SQuAD v1.1 normalisation, EM and token F1 (max over golds), worked by hand."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA, needs_data

from mixtune.evaluate.qa import (
    MiniLabKnowledge,
    NQOpen,
    answer_span,
    exact_match_score,
    f1_score,
    normalize_answer,
    score_qa,
)

DATA_DIR = SHARED_DATA


def test_normaliser():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("Theatre, 1972.") == "theatre 1972"  # "the" only as a whole word
    assert normalize_answer("A+") == ""  # punctuation goes first, then the article "a"


def test_exact_match_and_f1_by_hand():
    assert exact_match_score("The Beatles.", "beatles") == 1.0
    assert exact_match_score("Beatles band", "beatles") == 0.0
    # pred tokens [cat, sat, on, mat], gold [cat, on, mat]: P = 3/4, R = 1, F1 = 2*(3/4)/(7/4) = 6/7
    assert f1_score("the cat sat on the mat", "cat on mat") == pytest.approx(6 / 7)
    # repeated tokens count with multiplicity: [x, y, y] vs [y, y, z]: common 2, P = R = 2/3
    assert f1_score("x y y", "y y z") == pytest.approx(2 / 3)
    assert f1_score("dog", "cat") == 0.0
    assert f1_score("", "") == 0.0  # SQuAD v1.1: no shared token -> 0, even when both are empty


def test_max_over_golds_and_first_line():
    golds = ["Bobby Scott", "Bob Russell"]
    hit = score_qa("Bob Russell\nHe wrote the lyrics in 1969.", golds)
    assert hit["passed"] is True and hit["exact_match"] == 1.0 and hit["f1"] == 1.0
    assert hit["prediction"] == "Bob Russell" and hit["result"] == "passed"
    # "Scott" vs "Bobby Scott": P = 1, R = 1/2, F1 = 2/3; vs "Bob Russell": 0 -> max 2/3
    part = score_qa("Scott", golds)
    assert part["passed"] is False and part["exact_match"] == 0.0 and part["f1"] == pytest.approx(2 / 3)
    assert part["result"].startswith("failed")
    empty = score_qa("  \n", golds)
    assert (empty["exact_match"], empty["f1"]) == (0.0, 0.0)
    assert answer_span("\n\n  Paris \nmore") == "Paris"


def test_summary_names_normaliser():
    task = NQOpen()
    rows = [score_qa("Bob Russell", ["Bob Russell"]), score_qa("Scott", ["Bobby Scott"]), score_qa("x", ["y"])]
    summary = task.summarize(rows)
    assert summary["exact_match"] == pytest.approx(1 / 3)
    assert summary["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert summary["n"] == 3 and summary["normalizer"] == "squad_v1"


@needs_data
def test_nq_open_dev_loads_with_stable_ids_and_scores_golds():
    task = NQOpen(data_dir=str(DATA_DIR))
    examples = task.examples()
    assert len(examples) == 3610
    assert examples[0]["task_id"] == "nq_open/dev/0" and examples[3609]["task_id"] == "nq_open/dev/3609"
    assert examples[1]["golds"] == ["Bobby Scott", "Bob Russell"]
    assert examples[0]["messages"] == [{"role": "user", "content": "when was the last time anyone was on the moon"}]
    scored = task.score_all(examples, [ex["golds"][-1] for ex in examples])
    assert task.summarize(scored)["exact_match"] == 1.0
    wrong = task.score_all(examples[:100], ["zzz qqq"] * 100)
    assert task.summarize(wrong)["exact_match"] == 0.0


def test_minilab_knowledge(tmp_path):
    (tmp_path / "bench").mkdir()
    rows = [{"task_id": "kn/0", "question": "Where was Ada Vole born?", "answer": ["Porthaven", "the city of Porthaven"]}]
    (tmp_path / "bench" / "knowledge_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = MiniLabKnowledge(world_dir=str(tmp_path))
    assert task.ability == "knowledge"
    ex = task.example("kn/0")
    assert task.score(ex, "Porthaven.")["passed"] is True
    assert task.score(ex, "Lisbon")["passed"] is False


def test_minilab_facts_completes_biography_sentences_without_chat(tmp_path):
    import json

    from mixtune.evaluate.qa import MiniLabFacts

    world = tmp_path / "world.json"
    world.write_text(json.dumps({"people": [{"index": 0, "name": "Ada Lo", "birth_city": "Houston",
                                             "university": "Yale University", "split": "held_out"}]}))
    task = MiniLabFacts(world_dir=str(tmp_path))
    examples = task.examples()
    assert [e["task_id"] for e in examples] == ["minilab_facts/0/birth_city", "minilab_facts/0/university"]
    assert examples[0]["prompt_text"] == "Ada Lo was born in" and task.completion_only
    scored = task.score_all(examples, [" Houston", " Brown University"])
    assert [s["passed"] for s in scored] == [True, False]
    assert task.summarize(scored)["exact_match"] == 0.5


def test_minilab_facts_reads_only_held_out_people_and_limit_is_a_seeded_subset(tmp_path):
    import json

    from mixtune.evaluate.base import select_examples
    from mixtune.evaluate.qa import MiniLabFacts

    people = [{"index": i, "name": f"P{i}", "birth_city": f"C{i}", "university": f"U{i}",
               "split": "train" if i % 2 else "held_out"} for i in range(40)]
    (tmp_path / "world.json").write_text(json.dumps({"people": people}))
    task = MiniLabFacts(world_dir=str(tmp_path))
    ids = [e["task_id"] for e in task.examples()]
    assert len(ids) == 40 and all(int(t.split("/")[1]) % 2 == 0 for t in ids)  # no trained person's facts
    picked = [e["task_id"] for e in select_examples(task, 10)]
    assert len(picked) == 10 and picked != ids[:10]  # not the first N (those are the first 5 people only)
    assert len({t.split("/")[1] for t in picked}) > 5
    again = [e["task_id"] for e in select_examples(MiniLabFacts(world_dir=str(tmp_path)), 10)]
    assert picked == again  # the same items for the base and for every run
