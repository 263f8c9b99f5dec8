"""One entry point: `mixtune [--debug] <verb> -c recipe.yaml key.sub=value`.

Each verb lives in the module of the pipeline step it drives and exposes `main(argv: list[str]) -> int` (or the
function named after a colon); this file only dispatches, so `mixtune --help` and `mixtune <verb> --help` stay fast
and a verb imports torch only when it runs.

Errors: any `mixtune.errors.UserError` (a bad recipe, data file, model folder, a locked run folder, a full disk...)
and any missing / wrong-kind file named by the user is printed as one line on stderr, `mixtune <verb>: <message>`,
and the verb exits 2; `--debug` (anywhere on the command line, or MIXTUNE_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import os
import signal
import sys

from mixtune.cliutil import verb_function, verb_usage
from mixtune.errors import EXIT_USER_ERROR, UserError

# verb -> ("module[:function]" taking argv, one-line help). The registry of verbs, in pipeline order.
VERBS: dict[str, tuple[str, str]] = {
    "world": ("mixtune.world.cli", "generate the mini-lab world (corpus, SFT sources, benchmarks)"),
    "tokenizer": ("mixtune.data.tokenizer_train", "train a byte-level BPE tokenizer on the world/corpus"),
    "data": ("mixtune.data.cli", "dedup, decontaminate, filter, synthesise and check data files"),
    "pretrain": ("mixtune.train.cli:pretrain_main", "pre-train or continue pre-training a causal LM"),
    "train": ("mixtune.train.cli:train_main", "fine-tuning: SFT stages or strategies, then preference stages (reward, dpo)"),
    "eval": ("mixtune.evaluate.cli", "run or score ability benchmarks"),
    "study": ("mixtune.study.cli", "run a strategy x data-fraction x seed grid"),
    "report": ("mixtune.study.report_cli", "tables, plots and an HTML page for a study"),
    "export": ("mixtune.model.export", "merge adapters and export a Hugging Face checkpoint"),
    "serve": ("mixtune.serve.cli", "OpenAI-compatible HTTP server for a trained model or checkpoint"),
    "chat": ("mixtune.serve.chat", "chat with a trained model in the terminal"),
    "demo": ("mixtune.demo", "the main job: the mini-lab study from scratch"),
}

DEBUG_FLAG = "--debug"
FILE_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
"""OS errors about a path the user named: reported as one line like a UserError."""


def usage() -> str:
    return verb_usage("mixtune", VERBS, "[--debug] <verb> [-h] ...",
                      ("", "--debug: show the traceback of an error instead of its one-line message"))


def error_line(exc: BaseException) -> str:
    """The one-line message of a user error or a file error."""
    if isinstance(exc, UserError):
        return exc.one_line()
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.strerror}: {exc.filename}"
    return f"{type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the command line (not a test calling main): `mixtune ... | head` ends quietly, as a CLI does
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get("MIXTUNE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != DEBUG_FLAG]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"mixtune: unknown verb {verb!r}; valid verbs: {', '.join(VERBS)}", file=sys.stderr)
        return EXIT_USER_ERROR
    # Spin-waiting OpenMP threads lose 5-20x on a shared small machine; must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return int(verb_function(VERBS, verb)(rest) or 0)
    except (UserError, *FILE_ERRORS) as e:
        if debug:
            raise
        print(f"mixtune {verb}: {error_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"mixtune {verb}: interrupted (a run continues from its last checkpoint with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
