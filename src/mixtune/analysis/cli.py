"""`mixtune analyze <what> -c recipe.yaml [key.sub=value ...]`: the analyses the seeds' claims rest on.

Each analysis reads its own recipe section (`analysis.<what>`) plus the recipe's model, train, world and tokenizer
sections, writes its numbers into `<run folder>/results.sqlite`, a PNG plot and a self-contained HTML page under
`<run folder>/report/`, and prints the headline numbers. Recipes: recipes/analysis/<what>.yaml (default size) and
recipes/analysis/<what>-tiny.yaml (seconds; the tests run them).
"""

from __future__ import annotations

import importlib
import sys

# what -> ("module:function" taking (recipe, log) and returning a summary dict, one-line help)
ANALYSES: dict[str, tuple[str, str]] = {
    "capacity": ("mixtune.analysis.capacity:run_capacity", "knowledge capacity: bits per parameter on bioS(N)"),
    "scaling": ("mixtune.analysis.scaling:run_scaling", "scaling law L(N, D) from WSD runs with branched decays"),
    "cpt": ("mixtune.analysis.cpt:run_cpt", "continued pre-training from a stable vs a decayed checkpoint"),
}


def usage() -> str:
    lines = ["usage: mixtune analyze <what> -c recipe.yaml [key.sub=value ...]", "", "analyses:"]
    return "\n".join(lines + [f"  {name:<10} {text}" for name, (_, text) in ANALYSES.items()])


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    what, rest = argv[0], argv[1:]
    if what not in ANALYSES:
        print(f"mixtune analyze: unknown analysis {what!r}; valid: {', '.join(ANALYSES)}", file=sys.stderr)
        return 2
    from mixtune.analysis.report import AnalysisError
    from mixtune.cliutil import parse_recipe, recipe_parser

    target, text = ANALYSES[what]
    parser = recipe_parser(f"analyze {what}", text, sections=["analysis", "model", "train", "world", "tokenizer"])
    _, recipe = parse_recipe(parser, rest)
    module, func = target.split(":")
    try:
        getattr(importlib.import_module(module), func)(recipe)
    except AnalysisError as e:  # a recipe the analysis cannot run: one line, exit 2
        print(f"mixtune analyze {what}: {e}", file=sys.stderr)
        return 2
    return 0
