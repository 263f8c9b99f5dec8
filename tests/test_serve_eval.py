"""`mixtune eval run` through `mixtune serve` scores like the in-process backend on greedy decoding: the same
per-sample completions and the same scores on a mini-lab math bench and on real GSM8K and NQ-open questions, with a
LoRA run trained with the Vicuna template (the server renders and stops as the HF backend does); completion-style
prompts go through `/v1/completions` and match `HFBackend.complete`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_eval_runner import QUESTIONS
from test_serve import lora_run

from mixtune.cli import main as cli_main
from mixtune.config import Recipe
from mixtune.evaluate.generate import HFBackend, OpenAIBackend
from mixtune.model.load import build_llama, load_tokenizer
from mixtune.serve.app import create_app
from mixtune.serve.engine import BatchEngine, load_served
from mixtune.serve.http import ThreadedServer
from mixtune.train.save import save_final

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BENCHMARKS = ["minilab_math", "gsm8k", "nq_open"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer_dir):
    """A LoRA run on a tiny Llama with room for GSM8K prompts (1024 positions), a world with a math bench, and the
    server for that run on a loopback port."""
    root = tmp_path_factory.mktemp("serve-eval")
    recipe = Recipe.model_validate({"name": "b", "model": {
        "tokenizer": str(tiny_tokenizer_dir), "hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
        "num_heads": 2, "max_position_embeddings": 1024}})
    tok = load_tokenizer(tiny_tokenizer_dir)
    base = save_final(build_llama(recipe.model, tok), tok, root / "base" / "final", adapter="none", base=None)
    run_dir = lora_run(root, base, "vicuna")
    bench = root / "world" / "bench" / "math_test.jsonl"
    bench.parent.mkdir(parents=True)
    bench.write_text("".join(json.dumps({"task_id": f"math/{i}", "question": q, "answer": a}) + "\n"
                             for i, (q, a) in enumerate(QUESTIONS)))
    loaded = load_served(run_dir)
    engine = BatchEngine(loaded, max_batch=4)
    with ThreadedServer(create_app(loaded, engine, "lora-run")) as server:
        yield root, run_dir, loaded, server, engine
    engine.close()


def eval_run(root: Path, run_dir: Path, out: Path, *overrides: str) -> dict[str, list[dict]]:
    tree = {"name": "served-eval", "model": {"path": str(run_dir / "final")}, "data": {"template": "vicuna"},
            "eval": {"benchmarks": BENCHMARKS, "limit": 4, "world_dir": str(root / "world"), "data_dir": str(DATA_DIR),
                     "max_new_tokens": 16, "batch_size": 4}}
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tree))
    assert cli_main(["eval", "run", "-c", str(recipe), f"out_dir={out}", *overrides, "--db", str(out / "db")]) == 0
    return {b: [json.loads(line) for line in (out / "eval" / b / "scored.jsonl").read_text().splitlines()]
            for b in BENCHMARKS}


def test_eval_through_the_server_matches_in_process(setup, tmp_path):
    root, run_dir, _, server, engine = setup
    calls_before = engine.snapshot()["generate_calls"]
    local = eval_run(root, run_dir, tmp_path / "hf", "eval.backend=hf")
    served = eval_run(root, run_dir, tmp_path / "served", "eval.backend=openai", f"eval.base_url={server.base_url}",
                      "eval.served_model=lora-run")
    for bench in BENCHMARKS:
        assert len(local[bench]) == 4
        assert [(s["task_id"], s["completion"]) for s in served[bench]] == \
            [(s["task_id"], s["completion"]) for s in local[bench]], bench
        assert served[bench] == local[bench]  # every per-sample score too
        for folder in ("hf", "served"):
            summary = json.loads((tmp_path / folder / "eval" / bench / "summary.json").read_text())
            assert summary["backend"] == ("hf" if folder == "hf" else "openai")
        s_hf = json.loads((tmp_path / "hf" / "eval" / bench / "summary.json").read_text())
        s_srv = json.loads((tmp_path / "served" / "eval" / bench / "summary.json").read_text())
        assert s_hf[s_hf["primary_metric"]] == s_srv[s_srv["primary_metric"]]
    completions = [s["completion"] for b in BENCHMARKS for s in local[b]]
    assert sum(bool(c) for c in completions) >= len(completions) // 2  # the comparison is not between empty strings
    assert engine.snapshot()["generate_calls"] - calls_before < 12  # 12 requests, batched 4 at a time at most


def test_completion_prompts_match_hf_complete(setup):
    _, _, loaded, server, _ = setup
    prompts = ["Ada Lovelace was born in", "the city of 12", "def f(x):\n"]
    kw = {"max_new_tokens": 12, "temperature": 0.0, "stop": [".", "\n"]}
    local = HFBackend(loaded.model, loaded.tokenizer, loaded.template, progress=False).complete(prompts, **kw)
    backend = OpenAIBackend(server.base_url, "lora-run", api_key_env=None, concurrency=3)
    try:
        assert backend.complete(prompts, **kw) == local
    finally:
        backend.close()
    assert any(local)
