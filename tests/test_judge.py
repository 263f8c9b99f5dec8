"""The judge stack over real HTTP: the real ChatClient against a scripted judge server on 127.0.0.1.

Covers FastChat's rating parse, retries (5xx, 429 + Retry-After, connection refused), the concurrency limit, the
API key header, the verdict cache, and MT-Bench's prompts, references and summary on the real question file.
"""

from __future__ import annotations

import math
import socket
import time
from pathlib import Path

import pytest
from conftest import SHARED_DATA, needs_data
from judge_server import JudgeServer

from mixtune.config import JudgeConfig
from mixtune.evaluate.judge import Judge, load_judge_prompts, parse_rating
from mixtune.evaluate.mt_bench import MTBench
from mixtune.evaluate.openai_client import ChatClient, ChatError

DATA_DIR = SHARED_DATA


@pytest.mark.parametrize("text, rating", [
    ("The answer is fine. Rating: [[7]]", 7.0),
    ("Rating: [[7.5]]", 7.5),
    ("Rating: [8]", 8.0),  # the backup pattern
    ("first [3] then [[9]]", 9.0),  # [[x]] wins over an earlier [x]
    ("[[8]] and later [[2]]", 8.0),  # the first match
    ("Rating: [[ten]]", -1.0),
    ("no score at all", -1.0),
    ("", -1.0),
])
def test_parse_rating(text, rating):
    assert parse_rating(text) == rating


def _client(server: JudgeServer, **kw) -> ChatClient:
    kw = {"api_key_env": None, "backoff_s": 0.01, "max_retries": 3, **kw}
    return ChatClient(server.base_url, "judge-x", **kw)


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_retries_on_500_and_429_respecting_retry_after():
    with JudgeServer(delay_s=0.0, retry_after="0.3") as server, _client(server) as client:
        assert client.complete(_user("<<fail:500>><<verdict:[[6]]>>")) == "[[6]]"
        assert server.n_requests == 2
        t0 = time.monotonic()
        assert client.complete(_user("<<fail:429>><<verdict:[[4]]>>")) == "[[4]]"
        assert time.monotonic() - t0 >= 0.3  # waited as told, not the 0.01 s backoff
        assert server.n_requests == 4


def test_non_retryable_status_fails_fast_and_retries_are_bounded():
    with JudgeServer(delay_s=0.0) as server, _client(server, max_retries=2) as client:
        with pytest.raises(ChatError, match="HTTP 400"):
            client.complete(_user("<<always:400>>"))
        assert server.n_requests == 1
        with pytest.raises(ChatError, match="gave up after 3 attempts"):
            client.complete(_user("<<always:503>>"))
        assert server.n_requests == 4


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with ChatClient(f"http://127.0.0.1:{port}/v1", "m", api_key_env=None, max_retries=2, backoff_s=0.01) as client:
        with pytest.raises(ChatError, match="ConnectError"):
            client.complete(_user("hi"))
        assert client.n_requests == 3


def test_concurrency_limit_and_order():
    with JudgeServer(delay_s=0.05) as server, _client(server, concurrency=3) as client:
        texts = client.complete_many([_user(f"<<verdict:[[{i % 10}]]>>") for i in range(12)])
    assert texts == [f"[[{i % 10}]]" for i in range(12)]
    assert 2 <= server.max_in_flight <= 3  # concurrent, and never above the limit


def test_api_key_from_environment(monkeypatch):
    monkeypatch.setenv("MIXTUNE_TEST_JUDGE_KEY", "sk-test-123")
    with JudgeServer(delay_s=0.0) as server:
        with ChatClient(server.base_url, "m", api_key_env="MIXTUNE_TEST_JUDGE_KEY") as client:
            client.complete(_user("a"))
        with ChatClient(server.base_url, "m", api_key_env="MIXTUNE_TEST_UNSET_KEY") as client:
            client.complete(_user("b"))
    assert server.headers[0].get("Authorization") == "Bearer sk-test-123"
    assert "Authorization" not in server.headers[1]


# ----------------------------------------------------------------------------------------------------- MT-Bench
def _mt_bench(server: JudgeServer, cache_dir: Path, **client_kw) -> MTBench:
    task = MTBench(data_dir=str(DATA_DIR))
    task.use_judge(Judge(_client(server, **client_kw), cache_dir))
    return task


@needs_data
def test_mt_bench_examples_follow_fastchat():
    task = MTBench(data_dir=str(DATA_DIR))
    examples = task.examples()
    assert len(examples) == 80 and all(len(ex["turns"]) == 2 for ex in examples)
    with_ref = [ex for ex in examples if ex["reference"]]
    assert {ex["category"] for ex in with_ref} == {"math", "reasoning", "coding"} and len(with_ref) == 30
    q104 = task.example("mt_bench/104")
    assert "one brother" in q104["reference"][0]  # the known-wrong reference, kept as FastChat has it
    assert q104["messages"] == [{"role": "user", "content": q104["turns"][0]}]
    assert set(load_judge_prompts(DATA_DIR / "mt_bench" / "judge_prompts.jsonl")) >= {
        "single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"}


@needs_data
def test_mt_bench_scores_cache_and_invalid(tmp_path):
    cache = tmp_path / "cache"
    ids = ["mt_bench/81", "mt_bench/111", "mt_bench/121"]  # writing; math and coding carry references
    answers = [
        ["Aloha! <<verdict:Good. Rating: [[8]]>>", "A rewrite. <<verdict:Rating: [[6]]>>"],
        ["The area is 3. <<verdict:Rating: [9]>>", "<<fail:500>>The circle. <<verdict:It is wrong, sorry>>"],
        ["def f(): pass <<verdict:[[4]]>>", "def g(): pass <<verdict:Rating: [[2]]>>"],
    ]
    with JudgeServer(delay_s=0.01) as server:
        task = _mt_bench(server, cache)
        examples = [task.example(i) for i in ids]
        scored = task.score_all(examples, answers)
        summary = task.summarize(scored)
        first_run_requests = server.n_requests

        again = _mt_bench(server, cache)  # a new judge on the same cache: no new request, same verdicts
        summary_again = again.summarize(again.score_all(examples, answers))
        assert server.n_requests == first_run_requests
    assert first_run_requests == 7  # 6 verdicts + 1 retry after the scripted 500
    assert [(r["rating_turn1"], r["rating_turn2"]) for r in scored] == [(8, 6), (9, -1), (4, 2)]
    assert scored[1]["n_invalid"] == 1 and not scored[1]["passed"] and scored[0]["passed"]
    assert scored[1]["result"] == "turn1=9 turn2=invalid"
    assert summary["n_invalid"] == 1 and summary["n_verdicts"] == 6 and summary["n_judge_errors"] == 0
    assert summary["turn1"] == pytest.approx(7.0) and summary["turn2"] == pytest.approx(4.0)
    assert summary["score"] == pytest.approx((8 + 6 + 9 + 4 + 2) / 5)  # invalid excluded, as FastChat
    assert summary["category/math"] == 9.0 and summary["judge_model"] == "judge-x"
    assert summary_again == summary

    bodies = server.requests
    assert all(b["temperature"] == 0 and b["max_tokens"] == 2048 and b["model"] == "judge-x" for b in bodies)
    prompts = load_judge_prompts(DATA_DIR / "mt_bench" / "judge_prompts.jsonl")
    systems = {b["messages"][0]["content"] for b in bodies}
    assert systems == {prompts[n].system_prompt for n in ("single-v1", "single-v1-multi-turn",
                                                           "single-math-v1-multi-turn")}  # single-v1 == math-v1's
    math_turn2 = [b for b in bodies if "### Reference answer:" in b["messages"][1]["content"]]
    ref = task.example("mt_bench/111")["reference"]
    assert math_turn2 and ref[1] in math_turn2[0]["messages"][1]["content"]
    writing_turn1 = [b for b in bodies if b["messages"][1]["content"].endswith(
        "[The Start of Assistant's Answer]\n" + answers[0][0] + "\n[The End of Assistant's Answer]")]
    assert len(writing_turn1) == 1 and "Reference" not in writing_turn1[0]["messages"][1]["content"]


@needs_data
def test_judge_errors_are_invalid_and_not_cached(tmp_path):
    with JudgeServer(delay_s=0.0) as server:
        task = _mt_bench(server, tmp_path / "cache", max_retries=1)
        ex = task.example("mt_bench/82")
        scored = task.score_all([ex], [["<<always:503>>", "second"]])
        assert server.n_requests == 4  # both turns carry answer 1's directive: 2 verdicts x 2 attempts
        summary = task.summarize(scored)
        task.score_all([ex], [["<<always:503>>", "second"]])
        assert server.n_requests == 8  # failures were not cached
    assert scored[0]["rating_turn1"] == -1 and "HTTP 503" in scored[0]["error_turn1"]
    assert summary["n_judge_errors"] == 2 and summary["n_invalid"] == 2 and math.isnan(summary["score"])


def test_judge_from_config_builds_client(tmp_path):
    cfg = JudgeConfig(base_url="http://127.0.0.1:9/v1", model="j", api_key_env="NOPE_UNSET", concurrency=2,
                      max_retries=0, timeout_s=1.0, cache_dir=str(tmp_path))
    judge = Judge.from_config(cfg)
    try:
        assert judge.model == "j" and judge.client.concurrency == 2
        assert judge.client.url == "http://127.0.0.1:9/v1/chat/completions"
    finally:
        judge.close()
