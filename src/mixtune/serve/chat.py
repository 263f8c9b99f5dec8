"""`mixtune chat RUN_OR_MODEL [--template NAME] [--temperature T] [--max-tokens N] [--system TEXT] [--show-prompt]`:
a terminal chat with a trained model, for a quick look at it.

The model, template and stop strings are chosen as `mixtune serve` chooses them (`mixtune.serve.resolve`), and
each answer comes from `mixtune.evaluate.generate.generate_details`, the evaluation code path. The conversation is
kept: every turn renders the whole conversation so far. `/reset` starts over (the system message stays), `/exit`
or Ctrl-D quits. Answers are printed when complete (`generate` has no streamer hook: streaming would need a
second decoding path). A conversation longer than the context keeps its last tokens, and the chat says so.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from mixtune.serve.cli import positive
from mixtune.serve.resolve import TEMPLATE_NAMES, ServeError, check_template_name, resolve_source

HELP = "commands: /reset (start over), /exit (or Ctrl-D) to quit"


class Conversation:
    """The messages of a chat so far, with an optional system message that survives `reset`."""

    def __init__(self, system: str | None = None):
        self.system = system
        self.turns: list[dict[str, str]] = []

    def add(self, role: str, content: str) -> None:
        self.turns.append({"role": role, "content": content})

    def reset(self) -> None:
        self.turns = []

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + list(self.turns)


def reply(loaded: Any, conversation: Conversation, *, max_tokens: int, temperature: float, seed: int,
          show_prompt: bool = False, out: TextIO = sys.stdout) -> str:
    """Generate the assistant's answer to the conversation (ending with a user turn) and append it."""
    from mixtune.evaluate.generate import generate_details

    prompt = loaded.render(conversation.messages())
    if show_prompt:
        print(f"--- prompt ---\n{prompt}\n--- end of prompt ---", file=out)
    n_prompt = loaded.count_tokens(prompt, add_special_tokens=False)
    if loaded.context is not None and n_prompt + max_tokens > loaded.context:
        print(f"(the conversation is {n_prompt} tokens: with {max_tokens} new ones it passes the context of "
              f"{loaded.context}, so its start is cut; /reset starts over)", file=out)
    answer = generate_details(loaded.model, loaded.tokenizer, [prompt], max_new_tokens=max_tokens,
                              temperature=temperature, stop=loaded.template_stop, seed=seed, progress=False)[0]
    conversation.add("assistant", answer.text)
    return answer.text


def repl(loaded: Any, conversation: Conversation, *, max_tokens: int, temperature: float, seed: int = 0,
         show_prompt: bool = False, out: TextIO = sys.stdout) -> int:
    """Read user lines until /exit or end of input; print each answer."""
    print(f"chatting with {loaded.source.name} (template {loaded.template}: {loaded.template_why}). {HELP}",
          file=out)
    turn = 0
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            conversation.reset()
            print("(conversation cleared)", file=out)
            continue
        if text.startswith("/"):
            print(f"unknown command {text!r}; {HELP}", file=out)
            continue
        conversation.add("user", line)
        answer = reply(loaded, conversation, max_tokens=max_tokens, temperature=temperature, seed=seed + turn,
                       show_prompt=show_prompt, out=out)
        print(f"assistant> {answer}", file=out, flush=True)
        turn += 1


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="mixtune chat", description="chat with a trained model in the terminal")
    parser.add_argument("model", metavar="RUN_OR_MODEL", help="run folder, final/ folder, or model checkpoint folder")
    parser.add_argument("--template", default=None,
                        help=f"chat template: {', '.join(TEMPLATE_NAMES)} [the run's, else the tokenizer's]")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy [0]")
    parser.add_argument("--max-tokens", type=positive(int), default=256, help="most new tokens per answer [256]")
    parser.add_argument("--system", default=None, help="system message for the whole conversation")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of the first answer (+1 per turn) [0]")
    parser.add_argument("--show-prompt", action="store_true", help="print each rendered prompt (debugging)")
    args = parser.parse_args(list(argv))
    if args.temperature < 0:
        parser.exit(2, f"mixtune chat: --temperature must be >= 0, got {args.temperature}\n")
    try:
        check_template_name(args.template)
        resolve_source(args.model)
        from mixtune.serve.engine import load_served

        loaded = load_served(args.model, args.template)
    except ServeError as e:
        print(f"mixtune chat: {e}", file=sys.stderr)
        return 2
    return repl(loaded, Conversation(args.system), max_tokens=args.max_tokens, temperature=args.temperature,
                seed=args.seed, show_prompt=args.show_prompt)
