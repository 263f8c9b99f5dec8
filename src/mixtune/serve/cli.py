"""`mixtune serve MODEL_OR_RUN [--host 127.0.0.1] [--port 8000] [--template NAME] [--max-batch N]
[--max-concurrent N] [--timeout-s S] [--served-name NAME]`: an OpenAI-compatible HTTP server for a trained model.

MODEL_OR_RUN is a run folder (its `final/` is served), a `final/` folder, an adapter folder (`mixtune_model.json`
names its base: LoRA, LoRAMoE, prefix, prompt, bottleneck) or any local Hugging Face checkpoint. The chat template
is `--template`, else the one the run trained with, else the tokenizer's own (`mixtune.serve.resolve`); the
startup log says which and why. Endpoints and behaviour: `mixtune.serve.app`; batching: `mixtune.serve.engine`;
usage: docs/serving.md. Nothing heavy is imported until the arguments are checked.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from mixtune.serve.resolve import TEMPLATE_NAMES, ServeError, check_template_name, resolve_source

log = logging.getLogger("mixtune.serve")


def positive(kind: type) -> object:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixtune serve", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL_OR_RUN", help="run folder, final/ folder, or model checkpoint folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on [127.0.0.1: this machine only]")
    parser.add_argument("--port", type=int, default=8000, help="port (0 picks a free one) [8000]")
    parser.add_argument("--template", default=None,
                        help=f"chat template: {', '.join(TEMPLATE_NAMES)} [the run's, else the tokenizer's]")
    parser.add_argument("--max-batch", type=positive(int), default=16,
                        help="most rows (requests x n) in one generate call [16]")
    parser.add_argument("--max-concurrent", type=positive(int), default=64,
                        help="most requests in flight; more get HTTP 429 [64]")
    parser.add_argument("--timeout-s", type=positive(float), default=300.0,
                        help="per-request time limit; past it HTTP 504 [300]")
    parser.add_argument("--served-name", default=None,
                        help="model name clients use [the run folder's name, else the model folder's]")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_template_name(args.template)
        source = resolve_source(args.model)
        from mixtune.serve.http import bind, url_of

        sock = bind(args.host, args.port)  # before loading: a taken port fails in a second, not after the load
        from mixtune.serve.engine import load_served

        loaded = load_served(args.model, args.template)
    except ServeError as e:
        print(f"mixtune serve: {e}", file=sys.stderr)
        return 2
    from mixtune.serve.app import create_app
    from mixtune.serve.engine import BatchEngine
    from mixtune.serve.http import uvicorn_server

    name = args.served_name or source.name
    log.info("model %s: %s on %s", name, source.model_dir, next(loaded.model.parameters()).device)
    log.info("chat template: %s, chosen by %s; stop strings %s", loaded.template, loaded.template_why,
             loaded.template_stop)
    engine = BatchEngine(loaded, max_batch=args.max_batch)
    app = create_app(loaded, engine, name, max_concurrent=args.max_concurrent, timeout_s=args.timeout_s)
    log.info("serving %r at %s/v1 (max batch %d, max concurrent %d, timeout %g s)", name, url_of(sock),
             args.max_batch, args.max_concurrent, args.timeout_s)
    try:
        uvicorn_server(app).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down cleanly
        pass
    finally:
        engine.close()
        sock.close()
    log.info("stopped")
    return 0
