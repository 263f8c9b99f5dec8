"""`mixtune analyze <what> -c recipe.yaml [key.sub=value ...]`: the analyses the seeds' claims rest on.

Each analysis reads its own recipe section (`analysis.<what>`) plus the recipe's model, train, world and tokenizer
sections, writes its numbers into `<run folder>/results.sqlite`, a PNG plot and a self-contained HTML page under
`<run folder>/report/`, and prints the headline numbers. Recipes: recipes/analysis/<what>.yaml (default size) and
recipes/analysis/<what>-tiny.yaml (seconds; the tests run them).
"""

from __future__ import annotations

from mixtune.cliutil import Verbs, dispatch

# what -> ("module:function" taking argv and returning an exit code, one-line help); one entry per line.
ANALYSES: Verbs = {
    "capacity": ("mixtune.analysis.capacity:main", "knowledge capacity: bits per parameter on bioS(N)"),
    "scaling": ("mixtune.analysis.scaling:main", "scaling law L(N, D) from WSD runs with branched decays"),
    "cpt": ("mixtune.analysis.cpt:main", "continued pre-training from a stable vs a decayed checkpoint"),
}


def main(argv: list[str]) -> int:
    return dispatch("mixtune analyze", ANALYSES, argv, "<what> -c recipe.yaml [key.sub=value ...]")
