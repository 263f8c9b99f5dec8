"""`mixtune analyze <what> -c recipe.yaml [key.sub=value ...]`: the analyses the seeds' claims rest on.

Each analysis reads its own recipe section (`prune`, `tts`) plus the model / data / train / eval sections it uses,
writes its numbers into `<run folder>/results.sqlite` and its plot into the run folder, and prints the headline
numbers. Recipes: recipes/analysis/<what>-mini.yaml.
"""

from __future__ import annotations

from mixtune.cliutil import Verbs, dispatch

# what -> ("module:function" taking argv and returning an exit code, one-line help); one entry per line.
ANALYSES: Verbs = {
    "prune": ("mixtune.analysis.prune_cli:main", "pruning (magnitude, Wanda, structured): abilities vs sparsity"),
    "tts": ("mixtune.analysis.tts_cli:main", "test-time scaling: best-of-N (ORM, PRM), self-consistency, pass@k"),
}


def main(argv: list[str]) -> int:
    return dispatch("mixtune analyze", ANALYSES, argv, "<what> -c recipe.yaml [key.sub=value ...]")
