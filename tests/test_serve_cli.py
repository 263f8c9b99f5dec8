"""`mixtune serve` from the command line: which folder and template it picks (and says why), one-line errors with
exit code 2 for bad input, a real server process answering over loopback and stopping on SIGINT, a fast --help."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_serve import lora_run

from mixtune.cli import main as cli_main
from mixtune.data.templates import TEMPLATES
from mixtune.model.load import load_tokenizer
from mixtune.serve.http import bind
from mixtune.serve.resolve import TEMPLATE_NAMES, ServeError, resolve_source, resolve_template

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, base_dir):
    root = tmp_path_factory.mktemp("serve-cli")
    return {"vicuna": lora_run(root, base_dir, "vicuna", name="vicuna-run"),
            "tokenizer": lora_run(root, base_dir, "tokenizer", name="tok-run")}


def no_template_checkpoint(base_dir: Path, dest: Path) -> Path:
    """A copy of the tiny checkpoint whose tokenizer has no chat_template."""
    shutil.copytree(base_dir, dest)
    (dest / "chat_template.jinja").unlink(missing_ok=True)
    cfg_path = dest / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    assert not load_tokenizer(dest).chat_template
    return dest


def test_template_names_are_the_registry():
    assert TEMPLATE_NAMES == tuple(TEMPLATES)


def test_source_of_a_run_its_final_and_a_checkpoint(runs, base_dir):
    run = runs["vicuna"]
    for path in (run, run / "final"):
        src = resolve_source(path)
        assert (src.model_dir, src.run_config, src.name) == (run / "final", run / "config.yaml", "vicuna-run")
    plain = resolve_source(base_dir)  # a checkpoint folder with no run config beside it
    assert plain.model_dir == base_dir and plain.run_config is None


def test_template_resolution_order(runs, base_dir, tmp_path):
    vicuna, tok_run = resolve_source(runs["vicuna"]), resolve_source(runs["tokenizer"])
    tok = load_tokenizer(base_dir)
    assert resolve_template(vicuna, tok, "chatml") == ("chatml", "--template")
    name, why = resolve_template(vicuna, tok)
    assert name == "vicuna" and "data.template=vicuna" in why and str(runs["vicuna"] / "config.yaml") in why
    name, why = resolve_template(tok_run, tok)
    assert name == "tokenizer" and "data.template=tokenizer (the tokenizer's own chat_template)" in why
    name, why = resolve_template(resolve_source(base_dir), tok)
    assert name == "tokenizer" and why.startswith("the checkpoint tokenizer's chat_template")
    bare = no_template_checkpoint(base_dir, tmp_path / "bare")
    with pytest.raises(ServeError, match="no chat_template; pass --template chatml"):
        resolve_template(resolve_source(bare), load_tokenizer(bare))
    assert resolve_template(resolve_source(bare), load_tokenizer(bare), "vicuna")[0] == "vicuna"
    with pytest.raises(ServeError, match="unknown chat template"):
        resolve_template(vicuna, tok, "alpaca")


def one_line_error(capsys, argv: list[str], expected: str) -> None:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err, err


def test_bad_input_is_one_line_and_exit_2(capsys, runs, base_dir, tmp_path):
    one_line_error(capsys, ["serve", str(tmp_path / "missing")], "no such folder")
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, ["serve", str(tmp_path / "empty")], "not a model")
    (tmp_path / "file.txt").write_text("x")
    one_line_error(capsys, ["serve", str(tmp_path / "file.txt")], "is a file")
    one_line_error(capsys, ["serve", str(runs["vicuna"]), "--template", "alpaca"],
                   f"unknown chat template; valid: {', '.join(TEMPLATES)}")
    bare = no_template_checkpoint(base_dir, tmp_path / "bare")
    one_line_error(capsys, ["serve", str(bare), "--port", "0"], "no chat_template")
    taken = bind("127.0.0.1", 0)
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        one_line_error(capsys, ["serve", str(runs["vicuna"]), "--port", str(port)], "cannot listen there")
    finally:
        taken.close()
    nomodel = tmp_path / "tokenizer-only"
    shutil.copytree(base_dir, nomodel)
    (nomodel / "config.json").rename(nomodel / "config.json.bak")
    (nomodel / "mixtune_model.json").write_text(json.dumps({"adapter": "none"}))
    one_line_error(capsys, ["serve", str(nomodel), "--port", "0"], "no config.json")
    for verb in ("serve", "chat"):
        one_line_error(capsys, [verb, str(tmp_path / "missing")], f"mixtune {verb}: ")


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}


def test_help_lists_the_verbs_and_serve_imports_nothing_heavy():
    out = subprocess.run([sys.executable, "-m", "mixtune.cli", "--help"], capture_output=True, text=True, env=env(),
                         timeout=60, check=False)
    assert re.search(r"^  serve ", out.stdout, re.MULTILINE) and re.search(r"^  chat ", out.stdout, re.MULTILINE)
    code = "import sys, mixtune.serve.cli, mixtune.serve.chat; print(sorted({'torch', 'transformers', 'fastapi'} & " \
           "set(sys.modules)))"
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=60,
                           check=False)
    assert probe.stdout.strip() == "[]", probe.stderr


def test_serve_process_answers_and_stops_on_sigint(runs):
    cmd = [sys.executable, "-m", "mixtune.cli", "serve", str(runs["vicuna"]), "--port", "0", "--served-name", "tiny",
           "--max-batch", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    log: list[str] = []
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None:
            assert time.monotonic() < deadline and proc.poll() is None, "".join(log)
            line = proc.stdout.readline()
            log.append(line)
            found = re.search(r"serving 'tiny' at (http://127\.0\.0\.1:\d+/v1)", line)
            url = found.group(1) if found else None
        wait_until_up(url)
        assert [m["id"] for m in httpx.get(url + "/models", timeout=10).json()["data"]] == ["tiny"]
        reply = httpx.post(url + "/chat/completions", timeout=60, json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate(timeout=10)
    text = "".join(log) + rest
    assert proc.returncode == 0, text
    assert f"chat template: vicuna, chosen by the run's {runs['vicuna'] / 'config.yaml'}: it trained with " \
           f"data.template=vicuna" in text


def wait_until_up(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url.removesuffix("/v1") + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} did not come up"
        time.sleep(0.05)
