"""Every user error is one line on stderr and exit 2 (never a traceback; `--debug` shows it), and nothing that looks
like a run folder is left behind; an unreachable judge fails in seconds, and NaN never passes as a score."""

from __future__ import annotations

import fcntl
import json
import socket
import time
from pathlib import Path

import pytest
import yaml
from conftest import chat_examples, needs_data, tiny_model_section
from judge_server import JudgeServer

from mixtune.cli import main as mixtune_main
from mixtune.runs import DiskFullError


def one_line_error(capsys, argv: list[str], verb: str) -> str:
    """Run the CLI in-process; assert exit 2 and exactly one line on stderr; return that line."""
    capsys.readouterr()
    rc = mixtune_main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith(f"mixtune {verb}: ") and "Traceback" not in err, err
    return err.strip()


def write_data(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_recipe(tmp_path: Path, tokenizer_dir: Path, **sections) -> Path:
    """A tiny built-model SFT recipe on a generated chat file (no checkpoint load, so no loading progress bars)."""
    data = write_data(tmp_path / "chats.jsonl", [{"messages": ex["messages"]} for ex in chat_examples(8)])
    tree = {"name": "err", "out_dir": str(tmp_path / "run"), "model": tiny_model_section(tokenizer_dir),
            "data": {"sources": [{"name": "toy", "path": str(data)}], "max_seq_len": 128},
            "train": {"max_steps": 1, "batch_size": 2, "bf16": False}}
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_a_missing_model_folder(tmp_path, capsys):
    recipe = sft_recipe(tmp_path, tmp_path, model={"path": str(tmp_path / "no-such-model"), "tokenizer": None})
    line = one_line_error(capsys, ["train", "-c", str(recipe)], "train")
    assert line == (f"mixtune train: model.path {tmp_path / 'no-such-model'}: no such folder; set "
                    "model.path=/path/to/checkpoint (a local Hugging Face model folder or a mixtune run folder)")
    assert not (tmp_path / "run").exists()


def test_a_data_format_error_names_file_line_and_field(tmp_path, capsys, tiny_tokenizer_dir):
    recipe = sft_recipe(tmp_path, tiny_tokenizer_dir)
    bad = write_data(tmp_path / "bad.jsonl", [{"instruction": "q", "output": "a"}, {"instruction": "q", "output": 3}])
    line = one_line_error(capsys, ["train", "-c", str(recipe), f"data.sources.0.path={bad}"], "train")
    assert line.startswith(f"mixtune train: {bad}: 1 invalid record(s) of 2 (alpaca format; numbers are 1-based "
                           "lines); fix them or set skip_invalid: true on the source")
    assert line.endswith(f"on the source ({bad}:2: output: expected a string, got int)")
    assert not (tmp_path / "run").exists()


def test_a_tokenizer_without_a_chat_template(tmp_path, capsys, tiny_tokenizer_dir):
    from mixtune.model.load import load_tokenizer

    tok = load_tokenizer(tiny_tokenizer_dir)
    tok.chat_template = None
    tok.save_pretrained(str(tmp_path / "bare-tok"))
    (tmp_path / "bare-tok" / "chat_template.jinja").unlink(missing_ok=True)
    recipe = sft_recipe(tmp_path, tmp_path / "bare-tok")
    line = one_line_error(capsys, ["train", "-c", str(recipe)], "train")
    assert "data.template=tokenizer but" in line and "has no chat_template; set data.template to a family " \
        "template (chatml, qwen2, llama3, mistral, gemma, vicuna) or auto" in line
    assert not (tmp_path / "run").exists()


def test_a_folder_given_as_a_file(tmp_path, capsys, tiny_tokenizer_dir):
    line = one_line_error(capsys, ["train", "-c", str(tmp_path)], "train")
    assert line == f"mixtune train: {tmp_path}: is a folder; -c takes a recipe YAML file (e.g. recipes/quickstart.yaml)"
    recipe = sft_recipe(tmp_path, tiny_tokenizer_dir)
    (tmp_path / "empty").mkdir()
    line = one_line_error(capsys, ["train", "-c", str(recipe), f"data.sources.0.path={tmp_path / 'empty'}"], "train")
    assert line.startswith(f"mixtune train: {tmp_path / 'empty'}: a folder with no data file")


def test_max_seq_len_above_the_models_context_is_an_error(tmp_path, capsys, tiny_tokenizer_dir):
    recipe = sft_recipe(tmp_path, tiny_tokenizer_dir)
    line = one_line_error(capsys, ["train", "-c", str(recipe), "data.max_seq_len=1024"], "train")
    assert line == ("mixtune train: data.max_seq_len 1024 is above the model's max_position_embeddings 512 "
                    "(model.max_position_embeddings); set data.max_seq_len=512 or lower")


def test_a_locked_run_folder_and_a_full_disk(tmp_path, capsys, tiny_tokenizer_dir, monkeypatch):
    recipe = sft_recipe(tmp_path, tiny_tokenizer_dir)
    (tmp_path / "run").mkdir()
    with (tmp_path / "run" / ".lock").open("a+") as fh:  # another writer holds the run folder
        fh.write("4242\n")
        fh.flush()
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        line = one_line_error(capsys, ["train", "-c", str(recipe)], "train")
    assert line == (f"mixtune train: {tmp_path / 'run'}: another mixtune process (pid 4242) is writing this run "
                    "folder; wait for it to finish or use another folder")

    def full(*_, **__):
        raise DiskFullError(28, f"no space left on device while writing {tmp_path / 'run'} (3 MiB free); free "
                                "some space and rerun with --resume")

    monkeypatch.setattr("mixtune.train.run.prepare_run_dir", full)
    line = one_line_error(capsys, ["train", "-c", str(recipe)], "train")
    assert line.startswith("mixtune train: [Errno 28] no space left on device while writing")


def test_one_line_of_a_message_listing_problems():
    from mixtune.errors import UserError

    assert UserError("a: 3 bad\n p1\n p2\n p3").one_line() == "a: 3 bad (first: p1; +2 more)"
    assert UserError("a: 1 bad\n p1").one_line() == "a: 1 bad (p1)" and UserError("plain").one_line() == "plain"


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="is a folder"):
        mixtune_main(["--debug", "train", "-c", str(tmp_path)])


# --------------------------------------------------------------------------------------------------- the judge
def judge_recipe(tmp_path: Path, base_dir: Path, url: str, shared_data: Path, **judge) -> Path:
    tree = {"name": "j", "out_dir": str(tmp_path / "eval-run"), "model": {"path": str(base_dir)},
            "eval": {"benchmarks": ["mt_bench"], "limit": 1, "max_new_tokens": 2, "data_dir": str(shared_data),
                     "judge": {"base_url": url, "model": "judge", "api_key_env": "MIXTUNE_UNSET_KEY",
                               "cache_dir": str(tmp_path / "cache"), "max_retries": 5, "check_timeout_s": 1.0,
                               **judge}}}
    path = tmp_path / "judge.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_data
def test_a_missing_judge_fails_in_seconds_before_any_generation(tmp_path, capsys, base_dir, shared_data):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: refused at once
    t0 = time.perf_counter()
    line = one_line_error(capsys, ["eval", "run", "-c", str(judge_recipe(tmp_path, base_dir, url, shared_data))],
                          "eval")
    assert time.perf_counter() - t0 < 5
    assert line.startswith(f"mixtune eval: {url}/models: no answer within 1 s (ConnectError")
    assert line.endswith("start the judge server, fix eval.judge.base_url, or set eval.judge.on_unreachable=skip")
    assert not (tmp_path / "eval-run").exists()
    with socket.socket() as silent:  # accepts connections (backlog) but never answers: the check times out
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        t0 = time.perf_counter()
        line = one_line_error(capsys, ["eval", "run", "-c", str(judge_recipe(tmp_path, base_dir, url, shared_data))],
                              "eval")
        assert time.perf_counter() - t0 < 5 and "no answer within 1 s (ReadTimeout" in line


@needs_data
def test_skip_records_the_benchmark_as_skipped_never_as_a_score(tmp_path, capsys, base_dir, shared_data):
    from mixtune.results import ResultsDB

    url = f"http://127.0.0.1:{free_port()}/v1"
    recipe = judge_recipe(tmp_path, base_dir, url, shared_data, on_unreachable="skip")
    assert mixtune_main(["eval", "run", "-c", str(recipe), "--db", str(tmp_path / "r.sqlite")]) == 0
    out = capsys.readouterr()
    assert "WARNING: mt_bench will be SKIPPED (no score): the judge is unreachable" in out.err
    assert "mt_bench   general  status  SKIPPED" in out.out
    with ResultsDB(tmp_path / "r.sqlite") as db:
        assert db.rows() == []  # no numeric score at all
        assert [(r["metric"], r["text"]) for r in db.rows(numeric_only=False) if r["metric"] == "status"] == [
            ("status", "skipped")]


class SilentJudge(JudgeServer):
    """Answers every request, never with a rating: every verdict is invalid."""

    def respond(self, body: dict) -> tuple[int, dict, dict]:
        status, reply, headers = super().respond(body)
        reply["choices"][0]["message"]["content"] = "I will not rate this."
        return status, reply, headers


@needs_data
def test_nan_is_a_failed_benchmark_and_a_nonzero_exit(tmp_path, capsys, base_dir, shared_data):
    from mixtune.results import ResultsDB

    with SilentJudge(delay_s=0.0) as server:
        recipe = judge_recipe(tmp_path, base_dir, server.base_url, shared_data)
        rc = mixtune_main(["eval", "run", "-c", str(recipe), "--db", str(tmp_path / "r.sqlite")])
    out = capsys.readouterr()
    assert rc == 1
    assert out.err.strip().splitlines()[-1] == ("mixtune eval run: 1 benchmark(s) have no valid score: mt_bench: "
                                                "score is nan: no valid sample ({'n_invalid': 2, 'n_judge_errors': 0})")
    summary = json.loads((tmp_path / "eval-run" / "eval" / "mt_bench" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["score"] is None
    with ResultsDB(tmp_path / "r.sqlite") as db:
        texts = {r["metric"]: r["text"] for r in db.rows(numeric_only=False) if r["value"] is None}
    assert texts["status"] == "failed" and texts["score"] == "nan"


def test_compile_without_a_cxx_compiler_is_one_line_before_the_run_folder(tmp_path, capsys, tiny_tokenizer_dir,
                                                                          tiny_corpus):
    # inductor builds its CPU kernels with a C++ compiler; without one the first compiled step would fail deep
    # inside torch. Both verbs that compile say so up front.
    from torch._inductor import config

    with config.patch({"cpp.cxx": (None, "no-such-cxx-for-mixtune")}):
        check_no_compiler(tmp_path, capsys, tiny_tokenizer_dir, tiny_corpus)
    assert config.cpp.cxx != (None, "no-such-cxx-for-mixtune")  # restored for the tests that compile


def check_no_compiler(tmp_path, capsys, tiny_tokenizer_dir, tiny_corpus):
    want = ("train.compile: torch.compile (inductor) needs a C++ compiler and found none of no-such-cxx-for-mixtune "
            "on PATH; install one (e.g. apt install g++, or set CXX) or set train.compile: false")
    recipe = sft_recipe(tmp_path, tiny_tokenizer_dir, train={"compile": True})
    assert one_line_error(capsys, ["train", "-c", str(recipe)], "train") == f"mixtune train: {want}"
    assert not (tmp_path / "run").exists()
    pre = tmp_path / "pretrain.yaml"
    pre.write_text(yaml.safe_dump({"name": "pre", "out_dir": str(tmp_path / "pre"),
                                   "model": tiny_model_section(tiny_tokenizer_dir),
                                   "pretrain_corpus": [str(tiny_corpus)],
                                   "train": {"max_steps": 1, "batch_size": 2, "seq_len": 16, "bf16": False,
                                             "compile": True}}))
    assert one_line_error(capsys, ["pretrain", "-c", str(pre)], "pretrain") == f"mixtune pretrain: {want}"
    assert not (tmp_path / "pre").exists()
    study = ["study", "-c", "recipes/dmt-mini.yaml", f"out_dir={tmp_path / 'study'}", "train.compile=true",
             f"study.base_recipe={tmp_path / 'no-such-base.yaml'}"]  # refused before the base is even looked for
    assert one_line_error(capsys, study, "study") == f"mixtune study: {want}"
    assert not (tmp_path / "study").exists()
