"""`mixtune analyze <what> -c recipe.yaml [key.sub=value ...]`: the analyses the seeds' claims rest on.

Each analysis reads its own recipe section (`analysis.<what>` for capacity, scaling and cpt; `prune`, `tts`) plus the
model, data, train, eval, world and tokenizer sections it uses, writes its numbers into `<run folder>/results.sqlite`,
its plot (and for capacity, scaling and cpt a self-contained HTML page) under the run folder, and prints the headline
numbers. Recipes: recipes/analysis/<what>.yaml or <what>-mini.yaml (default size) and <what>-tiny.yaml (seconds; the
tests run them).
"""

from __future__ import annotations

from mixtune.cliutil import Verbs, dispatch

# what -> ("module:function" taking argv and returning an exit code, one-line help); one entry per line.
ANALYSES: Verbs = {
    "capacity": ("mixtune.analysis.capacity:main", "knowledge capacity: bits per parameter on bioS(N)"),
    "scaling": ("mixtune.analysis.scaling:main", "scaling law L(N, D) from WSD runs with branched decays"),
    "cpt": ("mixtune.analysis.cpt:main", "continued pre-training from a stable vs a decayed checkpoint"),
    "prune": ("mixtune.analysis.prune_cli:main", "pruning (magnitude, Wanda, structured): abilities vs sparsity"),
    "tts": ("mixtune.analysis.tts_cli:main", "test-time scaling: best-of-N (ORM, PRM), self-consistency, pass@k"),
}


def main(argv: list[str]) -> int:
    return dispatch("mixtune analyze", ANALYSES, argv, "<what> -c recipe.yaml [key.sub=value ...]")
