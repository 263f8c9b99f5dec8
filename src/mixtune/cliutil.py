"""Argument helpers shared by the verbs: `-c recipe.yaml`, overrides, and recipe-field help."""

from __future__ import annotations

import argparse
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
