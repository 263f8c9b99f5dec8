"""`mixtune eval run` end to end on a tiny random model: a 5-question mini-lab math bench written here and MT-Bench
judged by the scripted loopback server; files, results database, table, multi-turn flow and `evaluate_model`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from conftest import SHARED_DATA, needs_data
from judge_server import JudgeServer
from test_generate import tiny_model, tiny_tokenizer

from mixtune.cli import main as cli_main
from mixtune.config import load_recipe
from mixtune.data.templates import render_prompt, stop_strings
from mixtune.evaluate.generate import generate
from mixtune.evaluate.runner import evaluate_model

DATA_DIR = SHARED_DATA
QUESTIONS = [("alice has 3 apples and bob has 4. how many?", "3 + 4 = 7\n#### 7"),
             ("the cat has 2 mats and gets 5 more. how many?", "2 + 5 = 7\n#### 7"),
             ("bob has 12 pears and eats 2. how many?", "12 - 2 = 10\n#### 10"),
             ("write 6 plus 1", "6 + 1 = 7\n#### 7"),
             ("the dog ran 9 parks and 0 more", "9 + 0 = 9\n#### 9")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved tiny checkpoint (model + ChatML tokenizer) and a mini-lab world with bench/math_test.jsonl."""
    root = tmp_path_factory.mktemp("evalrun")
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    ckpt = root / "ckpt"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    bench = root / "world" / "bench" / "math_test.jsonl"
    bench.parent.mkdir(parents=True)
    bench.write_text("".join(json.dumps({"task_id": f"math/{i}", "question": q, "answer": a}) + "\n"
                             for i, (q, a) in enumerate(QUESTIONS)))
    return root, ckpt, tok, model


def write_recipe(root: Path, ckpt: Path, benchmarks: list[str], judge_url: str = "http://127.0.0.1:9/v1",
                 **eval_extra) -> Path:
    tree = {"name": "evaltest", "out_dir": str(root / "runs" / "evaltest"), "model": {"path": str(ckpt)},
            "eval": {"benchmarks": benchmarks, "world_dir": str(root / "world"), "data_dir": str(DATA_DIR),
                     "max_new_tokens": 8, "batch_size": 4, **eval_extra,
                     "judge": {"base_url": judge_url, "model": "judge-x", "api_key_env": "MIXTUNE_UNSET_KEY",
                               "cache_dir": str(root / "judge-cache"), "max_retries": 1}}}
    path = root / f"recipe-{'-'.join(benchmarks)}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def db_scores(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT run_id, stage, step, benchmark, ability, metric, value FROM scores").fetchall()


@needs_data
def test_eval_run_end_to_end(setup, capsys):
    root, ckpt, tok, model = setup
    with JudgeServer(delay_s=0.0) as server:
        recipe_path = write_recipe(root, ckpt, ["minilab_math", "mt_bench"], server.base_url, limit=3)
        assert cli_main(["eval", "run", "-c", str(recipe_path)]) == 0
        n_judge_requests = server.n_requests
    out_dir = root / "runs" / "evaltest" / "eval"

    math_samples = read_jsonl(out_dir / "minilab_math" / "samples.jsonl")
    math_scored = read_jsonl(out_dir / "minilab_math" / "scored.jsonl")
    summary = json.loads((out_dir / "minilab_math" / "summary.json").read_text())
    assert [s["task_id"] for s in math_samples] == ["math/0", "math/1", "math/2"]
    assert [s["task_id"] for s in math_scored] == ["math/0", "math/1", "math/2"]
    assert all("strict" in s and "passed" in s for s in math_scored)
    assert summary["n_examples"] == 3 and summary["primary_metric"] == "strict" and summary["ability"] == "math"
    # The runner's prompts and decoding are the chat template + greedy generate with the template's stops.
    prompts = [render_prompt(s["messages"], tok, "tokenizer") for s in math_samples]
    assert prompts[0].endswith("<|im_start|>assistant\n")
    expected = generate(model, tok, prompts, max_new_tokens=8, stop=stop_strings("tokenizer", tok), progress=False)
    assert [s["completion"] for s in math_samples] == expected

    mt = read_jsonl(out_dir / "mt_bench" / "samples.jsonl")
    assert len(mt) == 3 and all(len(s["completion"]) == 2 for s in mt)
    first = mt[0]  # turn 2 was generated after the turn-1 answer was appended to the conversation
    assert [m["role"] for m in first["messages"]] == ["user", "assistant", "user", "assistant"]
    assert first["messages"][1]["content"] == first["completion"][0]
    assert first["messages"][2]["content"].startswith("Rewrite your previous response")
    mt_summary = json.loads((out_dir / "mt_bench" / "summary.json").read_text())
    assert mt_summary["score"] == 5.0 and mt_summary["n_verdicts"] == 6 and n_judge_requests == 6

    rows = db_scores(root / "runs" / "results.sqlite")
    assert ("evaltest", "eval", -1, "minilab_math", "math", "strict", summary["strict"]) in rows
    assert ("evaltest", "eval", -1, "mt_bench", "general", "score", 5.0) in rows
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("[eval] minilab_math: strict=")  # one progress line per benchmark, then the table
    table = out[2:]
    assert table[0].split() == ["benchmark", "ability", "metric", "value"]
    assert table[-2].split()[:3] == ["mt_bench", "general", "score"]  # sorted by ability: general before math
    assert table[-1].split() == ["minilab_math", "math", "strict", f"{summary['strict']:.4f}"]


def test_evaluate_model_after_a_stage_step(setup, tmp_path):
    root, ckpt, tok, model = setup
    recipe = load_recipe(write_recipe(root, ckpt, ["minilab_math"]),
                         ["eval.temperature=1.0", "eval.n_samples=2", f"out_dir={tmp_path / 'run'}"])
    results = evaluate_model(model, tok, recipe, tmp_path / "run", stage="sft", step=3, subset=2, log=None)
    folder = tmp_path / "run" / "eval" / "sft" / "step-3" / "minilab_math"
    samples = read_jsonl(folder / "samples.jsonl")
    assert [(s["task_id"], s["sample_idx"]) for s in samples] == [("math/0", 0), ("math/0", 1), ("math/1", 0),
                                                                  ("math/1", 1)]
    assert results["minilab_math"]["n"] == 4 and results["minilab_math"]["n_examples"] == 2
    steps = {(r[1], r[2]) for r in db_scores(tmp_path / "results.sqlite")}
    assert steps == {("sft", 3)}


@needs_data
def test_openai_backend_eval(setup, tmp_path):
    """The served-model path: generations come from the loopback server, no local model is loaded."""
    root, ckpt, _, _ = setup
    with JudgeServer(delay_s=0.0) as server:
        recipe_path = write_recipe(root, ckpt, ["minilab_math"], limit=2, backend="openai",
                                   base_url=server.base_url, served_model="served")
        assert cli_main(["eval", "run", "-c", str(recipe_path), f"out_dir={tmp_path}",
                         "--db", str(tmp_path / "db.sqlite")]) == 0
    samples = read_jsonl(tmp_path / "eval" / "minilab_math" / "samples.jsonl")
    assert [s["completion"] for s in samples] == ["Rating: [[5]]"] * 2
    # requests run concurrently and may arrive in either order
    assert sorted(r["messages"][-1]["content"] for r in server.requests) == sorted([QUESTIONS[0][0], QUESTIONS[1][0]])
    assert {r["model"] for r in server.requests} == {"served"}
