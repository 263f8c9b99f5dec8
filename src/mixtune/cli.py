"""One entry point: `mixtune <verb> -c recipe.yaml key.sub=value`.

Each verb lives in the module of the pipeline step it drives and exposes `main(argv: list[str]) -> int`; this file
only dispatches, so `mixtune --help` stays fast and a verb imports torch only when it runs.
"""

from __future__ import annotations

import importlib
import os
import sys

# verb -> (module with main(argv), one-line help). The registry of verbs, in pipeline order.
VERBS: dict[str, tuple[str, str]] = {
    "world": ("mixtune.world.cli", "generate the mini-lab world (corpus, SFT sources, benchmarks)"),
    "tokenizer": ("mixtune.data.tokenizer_train", "train a byte-level BPE tokenizer on the world/corpus"),
    "data": ("mixtune.data.cli", "dedup, decontaminate, filter, synthesise and check data files"),
    "pretrain": ("mixtune.train.pretrain", "pre-train or continue pre-training a causal LM"),
    "train": ("mixtune.train.run", "fine-tuning: SFT stages or strategies, then preference stages (reward, dpo)"),
    "eval": ("mixtune.evaluate.cli", "run or score ability benchmarks"),
    "study": ("mixtune.study.cli", "run a strategy x data-fraction x seed grid"),
    "report": ("mixtune.study.report_cli", "tables, plots and an HTML page for a study"),
    "export": ("mixtune.model.export", "merge adapters and export a Hugging Face checkpoint"),
    "serve": ("mixtune.serve.cli", "OpenAI-compatible HTTP server for a trained model or checkpoint"),
    "chat": ("mixtune.serve.chat", "chat with a trained model in the terminal"),
    "demo": ("mixtune.demo", "the main job: the mini-lab study from scratch"),
}


def usage() -> str:
    lines = ["usage: mixtune <verb> [-h] ...", "", "verbs:"]
    lines += [f"  {verb:<10} {text}" for verb, (_, text) in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"mixtune: unknown verb {verb!r}; valid verbs: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    # Spin-waiting OpenMP threads lose 5-20x on a shared small machine; must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    module = importlib.import_module(VERBS[verb][0])
    from mixtune.config import RecipeError

    try:
        return int(module.main(rest) or 0)
    except RecipeError as e:
        print(f"mixtune {verb}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
