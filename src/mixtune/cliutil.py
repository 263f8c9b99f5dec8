"""Argument helpers shared by the verbs: `-c recipe.yaml`, overrides, and recipe-field help."""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
from collections.abc import Sequence

from mixtune.config import Recipe, describe_fields, load_recipe


def recipe_parser(verb: str, description: str, sections: Sequence[str] = ()) -> argparse.ArgumentParser:
    """A parser for `mixtune <verb> -c recipe.yaml key.sub=value`; its help lists the recipe fields of `sections`."""
    rows = [r for r in describe_fields(Recipe) if not sections or r[0].split(".")[0] in sections]
    width = max(len(key) for key, _, _ in rows) + 2 if rows else 30
    lines = [textwrap.fill(doc + (f" [default {default}]" if default else ""), width=max(60, 118 - width),
                           initial_indent=f"  {key:<{width}}", subsequent_indent=" " * (width + 2))
             for key, default, doc in rows]
    epilog = ("recipe fields: override any with key.sub=value (YAML values: train.lr=3e-4, 'eval.benchmarks=[gsm8k]');\n"
              "a list entry by its index from 0: data.sources.0.count=7; `key[].field` below is a field of each "
              "entry\n\n" + "\n".join(lines))
    parser = argparse.ArgumentParser(
        prog=f"mixtune {verb}", description=description, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", required=True, help="recipe YAML file")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.lr=3e-4")
    return parser


def parse_recipe(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, Recipe]:
    args = parser.parse_args(argv)
    return args, load_recipe(args.config, args.overrides)


# ---------------------------------------------------------------------------------------------- verb dispatch
Verbs = dict[str, tuple[str, str]]
"""verb -> ("module[:function]" taking argv and returning an exit code, one-line help): a registry of verbs."""


def verb_usage(prog: str, verbs: Verbs, synopsis: str = "<verb> [-h] ...", extra: tuple[str, ...] = ()) -> str:
    width = max(map(len, verbs), default=0) + 2
    lines = [f"usage: {prog} {synopsis}", "", "verbs:"]
    lines += [f"  {verb:<{width}}{text}" for verb, (_, text) in verbs.items()]
    return "\n".join([*lines, *extra])


def verb_function(verbs: Verbs, verb: str):
    """The callable of a verb (`module:function`, default function `main`), imported now (a verb imports its
    heavy dependencies only when it runs)."""
    module, _, name = verbs[verb][0].partition(":")
    return getattr(importlib.import_module(module), name or "main")


def dispatch(prog: str, verbs: Verbs, argv: list[str], synopsis: str = "<verb> [-h] ...") -> int:
    """`prog <verb> ...` of a sub-verb registry (`mixtune data`, `mixtune analyze`): help, an unknown verb in one
    line with the valid ones (exit 2), a verb whose optional dependency is missing in one line (exit 2)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(verb_usage(prog, verbs, synopsis))
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in verbs:
        print(f"{prog}: unknown verb {verb!r}; valid verbs: {', '.join(verbs)}", file=sys.stderr)
        return 2
    try:
        function = verb_function(verbs, verb)
    except ModuleNotFoundError as e:
        if not e.name or e.name.startswith("mixtune"):
            raise
        print(f"{prog} {verb}: needs the optional package {e.name!r}: pip install -e '.[data,ray]' "
              f"(or `make test`, which installs every extra)", file=sys.stderr)
        return 2
    return int(function(rest) or 0)
