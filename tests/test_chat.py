"""`mixtune chat`: the conversation builder, and the REPL driven through stdin on the tiny LoRA run: the second
prompt holds the first answer, answers equal the evaluation backend's greedy answers, `/reset` starts over, end of
input quits."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_serve import lora_run

from mixtune.evaluate.generate import HFBackend
from mixtune.serve.chat import Conversation
from mixtune.serve.engine import load_served

SRC = Path(__file__).resolve().parents[1] / "src"
PROMPT_BLOCK = re.compile(r"--- prompt ---\n(.*?)\n--- end of prompt ---\n", re.DOTALL)
ANSWER = re.compile(r"assistant> (.*?)\nyou> ", re.DOTALL)


def test_conversation_keeps_turns_and_the_system_message():
    conv = Conversation(system="be brief")
    conv.add("user", "q1")
    conv.add("assistant", "a1")
    conv.add("user", "q2")
    assert conv.messages() == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q1"},
                               {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    conv.reset()
    assert conv.messages() == [{"role": "system", "content": "be brief"}]
    assert Conversation().messages() == []


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, base_dir):
    return lora_run(tmp_path_factory.mktemp("chat"), base_dir, "vicuna")


def chat(run_dir: Path, stdin: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "mixtune.cli", "chat", str(run_dir), "--max-tokens", "6",
                           "--show-prompt", *extra], input=stdin.encode(), capture_output=True, env=env, timeout=120,
                          check=False)


def test_two_turns_then_reset_then_end_of_input(run_dir):
    out = chat(run_dir, "first question 12\nsecond question 7\n/reset\nthird question 5\n",
               "--system", "You answer in short.")
    stdout = out.stdout.decode("utf-8")
    assert out.returncode == 0, out.stderr.decode()
    assert "template vicuna" in stdout
    prompts = PROMPT_BLOCK.findall(stdout)
    answers = ANSWER.findall(stdout + "you> ")  # the last answer is followed by end of input, not a new prompt
    assert len(prompts) == 3 and len(answers) == 3
    assert answers[0], "a random model still answers something: the containment check below is not vacuous"
    assert prompts[0] == "You answer in short. USER: first question 12 ASSISTANT:"
    loaded = load_served(run_dir)
    # Vicuna v1.1 (FastChat): "... ASSISTANT: {answer}</s>USER: ...", with the tokenizer's eos as </s>
    eos = loaded.tokenizer.eos_token
    assert prompts[1] == f"{prompts[0]} {answers[0]}{eos}USER: second question 7 ASSISTANT:"
    assert prompts[2] == "You answer in short. USER: third question 5 ASSISTANT:"  # /reset kept the system message
    backend = HFBackend(loaded.model, loaded.tokenizer, loaded.template, progress=False)
    conv = [{"role": "system", "content": "You answer in short."}, {"role": "user", "content": "first question 12"}]
    assert backend.chat([conv], max_new_tokens=6, temperature=0.0) == [answers[0]]


def test_exit_command_and_bad_template(run_dir):
    out = chat(run_dir, "/help\n/exit\nnever read\n", "--template", "chatml")
    stdout = out.stdout.decode("utf-8")
    assert out.returncode == 0 and "unknown command '/help'" in stdout and "template chatml: --template" in stdout
    assert "--- prompt ---" not in stdout
    bad = chat(run_dir, "", "--template", "alpaca")
    assert bad.returncode == 2 and bad.stderr.decode().count("\n") == 1 and b"unknown chat template" in bad.stderr
