"""The task contract's defaults and the benchmark registry."""

from __future__ import annotations

import json

import pytest

from mixtune.evaluate.base import BenchmarkDataError, Task, accepts_keyword, iter_jsonl, summarize_task
from mixtune.evaluate.registry import ABILITY_OF, TASKS, UnknownTaskError, check_task_name, get_task, task_class


class EchoTask(Task):
    """A fake task: passes when the completion equals the example's answer."""

    name, ability = "echo", "general"
    loads = 0

    def __init__(self, rows, **kwargs):
        super().__init__(**kwargs)
        self.rows = rows

    def load(self):
        EchoTask.loads += 1
        return [{"task_id": r[0], "messages": [{"role": "user", "content": "q"}], "answer": r[1]} for r in self.rows]

    def score(self, example, completion):
        ok = completion == example["answer"]
        return {"passed": ok, "result": "passed" if ok else "failed: wrong"}


def test_examples_cached_lookup_and_default_summary():
    EchoTask.loads = 0
    task = EchoTask([("t/0", "a"), ("t/1", "b")])
    assert [e["task_id"] for e in task.examples()] == ["t/0", "t/1"]
    assert task.example("t/1")["answer"] == "b"
    assert EchoTask.loads == 1  # loaded once
    with pytest.raises(KeyError, match="t/9"):
        task.example("t/9")
    scored = task.score_all(task.examples(), ["a", "x"])
    assert [s["passed"] for s in scored] == [True, False]
    assert task.summarize(scored) == {"accuracy": 0.5, "n": 2}
    with pytest.raises(ValueError):
        task.score_all(task.examples(), ["a"])


def test_duplicate_ids_are_an_error():
    with pytest.raises(BenchmarkDataError, match="duplicate"):
        EchoTask([("t/0", "a"), ("t/0", "b")]).examples()


def test_summarize_task_passes_ks_only_when_accepted():
    class WithKs:
        def summarize(self, scored, ks=(1,)):
            return {"ks": list(ks)}

    class WithoutKs:
        def summarize(self, scored):
            return {"n": len(scored)}

    assert summarize_task(WithKs(), [], [1, 10]) == {"ks": [1, 10]}
    assert summarize_task(WithKs(), [], None) == {"ks": [1]}
    assert summarize_task(WithoutKs(), [{}], [1, 10]) == {"n": 1}
    assert accepts_keyword(lambda scored, **kw: None, "ks") and not accepts_keyword(lambda scored: None, "ks")


def test_iter_jsonl_names_the_line(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_text(json.dumps({"a": 1}) + "\n\n" + "{oops\n")
    with pytest.raises(BenchmarkDataError, match=r"b\.jsonl:3: invalid JSON"):
        list(iter_jsonl(p))
    with pytest.raises(BenchmarkDataError, match="not found"):
        list(iter_jsonl(tmp_path / "missing.jsonl"))


def test_registry_names_targets_and_abilities():
    assert set(ABILITY_OF) == set(TASKS)
    assert set(ABILITY_OF.values()) <= {"math", "code", "general", "knowledge"}
    for name in ("gsm8k", "minilab_math", "humaneval", "humaneval_plus", "mbpp", "mbpp_plus", "minilab_code",
                 "ifeval", "minilab_instruct", "nq_open", "minilab_knowledge", "mt_bench"):
        module, _, cls = TASKS[name][0].partition(":")
        assert module.startswith("mixtune.evaluate.") and cls
        assert getattr(task_class(name), "ability", TASKS[name][1]) == TASKS[name][1]  # the class agrees


def test_unknown_task_lists_valid_names():
    with pytest.raises(UnknownTaskError) as info:
        get_task("gsm9k")
    assert "gsm9k" in str(info.value) and "gsm8k" in str(info.value) and "nq_open" in str(info.value)
    assert check_task_name("mbpp") == "mbpp"


def test_get_task_builds_with_kwargs(tmp_path):
    task = get_task("minilab_knowledge", data_dir="unused", world_dir=str(tmp_path), path=None)
    assert task.name == "minilab_knowledge" and task.world_dir == str(tmp_path)
    assert task.source_path() == tmp_path / "bench" / "knowledge_test.jsonl"
    explicit = get_task("gsm8k", path=str(tmp_path / "x.jsonl"))
    assert explicit.source_path() == tmp_path / "x.jsonl"
    with pytest.raises(BenchmarkDataError, match="not found"):
        explicit.examples()
