"""`mixtune data filter`: the heuristic filters (`mixtune.data.filters`), then a reference-model filter of our own.

No library runs a reference-model filter offline on a local checkpoint, so this one is ours. It scores each record
that passed the cheap filters with any local Hugging Face causal LM (`mixtune.model.load.load_checkpoint`; the
mini-lab base `runs/base-mini/final` by default):
- `nll`: mean next-token negative log-likelihood of the record's text under the reference model (nats/token);
- `ppl`: exp(nll), for a perplexity band (CCNet, Wenzek et al. 2020, keeps documents by reference-LM perplexity);
- `kl`: mean over tokens of KL(target || reference) on the target model's top-k tokens, both distributions
  renormalised over those k (a token-level disagreement score between a trained target and its reference).
A record is kept when `min <= score <= max` (either bound optional). Texts are tokenised with BOS, truncated to
`max_len` tokens, sorted by length and batched under a token budget, so padding work stays small.

This module sits on the model floor because it loads checkpoints; the data CLI maps the `filter` verb here by name.
torch and the model are imported only when a reference model is asked for.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from mixtune.data.corpus_io import Corpus, CorpusError
from mixtune.data.filters import DEFAULT_FILTERS, FILTERS, build_filters, load_options, verdict
from mixtune.data.pipeline import add_common_args, run_verb

SCORES = ("nll", "ppl", "kl")
DEFAULT_REFERENCE = "runs/base-mini/final"
REFERENCE_DEFAULTS: dict[str, Any] = {"model": None, "target": None, "score": "nll", "min": None, "max": None,
                                      "top_k": 20, "batch_tokens": 8192, "max_len": 512}


# ------------------------------------------------------------------------------------------------ pure scoring
def sequence_nll(logits: Any, input_ids: Any, attention_mask: Any) -> Any:
    """(B,) mean next-token NLL per row over real (unpadded) target positions; NaN for a row with none.

    logits (B, T, V) predict input_ids shifted by one; attention_mask (B, T) is 1 on real tokens.
    """
    import torch

    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    target = input_ids[:, 1:]  # (B, T-1)
    mask = attention_mask[:, 1:].float()  # (B, T-1)
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return (nll * mask).sum(-1) / mask.sum(-1)


def sequence_topk_kl(target_logits: Any, ref_logits: Any, attention_mask: Any, k: int) -> Any:
    """(B,) mean over real positions of KL(p_t || p_r) on the target's top-k tokens, both renormalised over them."""
    import torch

    t = target_logits[:, :-1].float()  # (B, T-1, V)
    r = ref_logits[:, :-1].float()
    top = t.topk(min(k, t.shape[-1]), dim=-1).indices  # (B, T-1, k)
    log_pt = torch.log_softmax(t.gather(-1, top), dim=-1)  # (B, T-1, k)
    log_pr = torch.log_softmax(r.gather(-1, top), dim=-1)
    kl = (log_pt.exp() * (log_pt - log_pr)).sum(-1)  # (B, T-1)
    mask = attention_mask[:, 1:].float()
    return (kl * mask).sum(-1) / mask.sum(-1)


def length_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices sorted longest first, cut into batches whose (rows x longest row) stays within batch_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


# ------------------------------------------------------------------------------------------------------ scorer
class ReferenceScorer:
    """Loads the reference (and, for `kl`, the target) checkpoint once; `score(texts)` gives one float per text."""

    def __init__(self, options: dict[str, Any]):
        from mixtune.model.load import load_checkpoint, load_tokenizer

        self.opts = options
        self.tokenizer = load_tokenizer(options["model"])
        self.ref = load_checkpoint(options["model"]).eval()
        self.target = load_checkpoint(options["target"]).eval() if options["score"] == "kl" else None
        if self.target is not None and self.target.config.vocab_size != self.ref.config.vocab_size:
            raise CorpusError(f"--target-model {options['target']}: vocabulary {self.target.config.vocab_size} "
                              f"differs from the reference's {self.ref.config.vocab_size} (KL needs one tokenizer)")
        limit = getattr(self.ref.config, "max_position_embeddings", None) or options["max_len"]
        self.max_len = min(options["max_len"], limit)

    def score(self, texts: list[str], progress: bool | None = None) -> list[float]:
        import torch
        from tqdm.auto import tqdm

        ids = [self.tokenizer(t, add_special_tokens=True)["input_ids"][:self.max_len] for t in texts]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = [math.nan] * len(texts)
        batches = length_batches([len(x) for x in ids], self.opts["batch_tokens"])
        with torch.inference_mode():
            for batch in tqdm(batches, desc="filter: reference model", disable=progress is False or None,
                              leave=False):
                width = len(ids[batch[0]])
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):  # right padding: causal attention never sees the pads
                    input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
                    mask[row, :len(ids[i])] = 1
                ref_logits = self.ref(input_ids=input_ids, attention_mask=mask).logits  # (B, T, V)
                if self.target is None:
                    scores = sequence_nll(ref_logits, input_ids, mask)
                else:
                    tgt = self.target(input_ids=input_ids, attention_mask=mask).logits
                    scores = sequence_topk_kl(tgt, ref_logits, mask, self.opts["top_k"])
                for row, i in enumerate(batch):
                    out[i] = float(scores[row])
        if self.opts["score"] == "ppl":
            out = [math.exp(s) if not math.isnan(s) else s for s in out]
        return out


# ------------------------------------------------------------------------------------------------ verb stages
def filter_map(corpus: Corpus, indices: range, options: dict[str, Any]) -> dict[str, Any]:
    """Heuristic verdicts for the block, then reference scores for the records that passed."""
    from tqdm.auto import tqdm

    filters = build_filters(options)
    reasons = {}
    for i in tqdm(indices, desc="filter: heuristics", disable=None, leave=False):
        if i not in corpus.invalid:
            reason = verdict(filters, corpus.texts[i], corpus.ids[i])
            if reason:
                reasons[str(i)] = reason
    scores: dict[str, float] = {}
    ref = options.get("reference")
    if ref:
        alive = [i for i in indices if str(i) not in reasons and i not in corpus.invalid]
        values = ReferenceScorer(ref).score([corpus.texts[i] for i in alive])
        scores = {str(i): v for i, v in zip(alive, values)}
    return {"reasons": reasons, "scores": scores}


def filter_reduce(corpus: Corpus, parts: list[dict[str, Any]], options: dict[str, Any]
                  ) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    decisions: dict[int, dict[str, Any]] = {}
    by_reason: dict[str, int] = {}
    for part in parts:
        for k, reason in part["reasons"].items():
            decisions[int(k)] = {"action": "dropped", "reason": reason}
            by_reason[reason] = by_reason.get(reason, 0) + 1
    ref = options.get("reference") or {}
    unscored = 0
    for part in parts:
        for k, value in part["scores"].items():
            if math.isnan(value):
                unscored += 1
            elif (ref["min"] is not None and value < ref["min"]) or (ref["max"] is not None and value > ref["max"]):
                reason = f"reference:{ref['score']}_out_of_band"
                decisions[int(k)] = {"action": "dropped", "reason": reason, "score": round(value, 6)}
                by_reason[reason] = by_reason.get(reason, 0) + 1
    summary = {"input": len(corpus), "kept": len(corpus) - len(decisions), "removed": len(decisions),
               "by_reason": dict(sorted(by_reason.items())), "settings": options}
    if ref:
        scored = [v for p in parts for v in p["scores"].values() if not math.isnan(v)]
        summary.update(reference_scored=len(scored), reference_unscored=unscored,
                       reference_mean=round(sum(scored) / len(scored), 6) if scored else None)
    return decisions, summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixtune data filter", description=__doc__.splitlines()[0])
    add_common_args(p)
    p.add_argument("--options", default=None, help="YAML/JSON file: filters, per-filter thresholds, reference")
    p.add_argument("--filters", default=None, help=f"comma-separated, in order (of {', '.join(FILTERS)}) "
                   f"[default {','.join(DEFAULT_FILTERS)}, FineWeb's order; 'none' for the reference model alone]")
    p.add_argument("--set", action="append", default=[], metavar="FILTER.ARG=VALUE",
                   help="a filter threshold, e.g. gopher_quality.min_doc_words=20 (repeatable)")
    p.add_argument("--reference-model", default=None,
                   help=f"checkpoint folder of the reference model (turns the reference filter on; '' for the "
                   f"mini-lab base {DEFAULT_REFERENCE})")
    p.add_argument("--target-model", default=None, help="checkpoint folder of the target model (score kl)")
    p.add_argument("--score", default=None, choices=SCORES, help="nll (default), ppl or kl")
    p.add_argument("--min-score", type=float, default=None, help="drop records scoring below this")
    p.add_argument("--max-score", type=float, default=None, help="drop records scoring above this")
    p.add_argument("--top-k", type=int, default=None, help="top-k tokens of the KL [default 20]")
    p.add_argument("--batch-tokens", type=int, default=None, help="tokens per scoring batch [default 8192]")
    p.add_argument("--max-len", type=int, default=None, help="tokens scored per record [default 512]")
    return p


def reference_options(args: argparse.Namespace, from_file: dict[str, Any] | None) -> dict[str, Any] | None:
    flags = {"model": args.reference_model, "target": args.target_model, "score": args.score,
             "min": args.min_score, "max": args.max_score, "top_k": args.top_k, "batch_tokens": args.batch_tokens,
             "max_len": args.max_len}
    if from_file is None and args.reference_model is None:
        return None
    unknown = sorted(set(from_file or {}) - set(REFERENCE_DEFAULTS))
    if unknown:
        raise CorpusError(f"options: reference: unknown key {unknown[0]!r}; valid: {', '.join(REFERENCE_DEFAULTS)}")
    ref = {**REFERENCE_DEFAULTS, **(from_file or {}), **{k: v for k, v in flags.items() if v is not None}}
    ref["model"] = ref["model"] or DEFAULT_REFERENCE
    if ref["score"] not in SCORES:
        raise CorpusError(f"reference score {ref['score']!r}; valid: {', '.join(SCORES)}")
    if ref["score"] == "kl" and not ref["target"]:
        raise CorpusError("--score kl needs --target-model")
    from mixtune.model.load import ModelLoadError, load_tokenizer

    try:
        load_tokenizer(ref["model"])
    except (ModelLoadError, OSError) as e:
        raise CorpusError(f"--reference-model {ref['model']}: {e}") from None
    return ref


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        filters = None if args.filters is None else ("" if args.filters == "none" else args.filters)
        options = load_options(args.options, args.set, filters if filters != "" else None)
        if filters == "":
            options["filters"] = []
        options["reference"] = reference_options(args, options.get("reference"))
        build_filters(options)  # a bad threshold fails here, before any work
    except CorpusError as e:
        print(f"mixtune data filter: {e}", file=sys.stderr)
        return 2
    except (TypeError, ValueError) as e:
        print(f"mixtune data filter: options: {e}", file=sys.stderr)
        return 2
    return run_verb(args, "filter", "mixtune.model.reference_filter:filter_map",
                    "mixtune.model.reference_filter:filter_reduce", options)
