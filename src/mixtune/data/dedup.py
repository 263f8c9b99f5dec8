"""`mixtune data dedup`: exact and near-duplicate removal (MinHash LSH, verified) and the line-level repetition rule.

Order of the rules (as the Llama 3 report describes its web-data dedup, §3.1.1): exact duplicates of the normalised
text, then near duplicates (MinHash over word 5-grams, LSH candidates verified by estimated Jaccard >= threshold,
see `mixtune.data.minhash`), then, when `--line-repeats N` is given, the line rule on the documents that are left:
within each group of `--line-group` consecutive documents, a line (stripped) that occurs more than N times is cut
from every document of the group (Llama 3: more than 6 times per bucket of 30M documents). The line rule edits a
plain document's text field; a document with no line left is dropped. Every removal is listed with `duplicate_of`.

Summary keys: input, kept, removed_exact, removed_near (and edited_lines, removed_lines, dropped_empty with the line
rule), plus the settings used.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mixtune.data.corpus_io import Corpus, CorpusError, read_corpus
from mixtune.data.minhash import (
    MinHasher,
    ShingleHasher,
    exact_duplicates,
    near_duplicates,
    normalize_exact,
    text_hash64,
    words,
)
from mixtune.data.pipeline import add_common_args, run_verb

DEFAULTS: dict[str, Any] = {"ngram": 5, "num_perm": 128, "bands": 20, "rows": 5, "threshold": 0.8, "seed": 1,
                            "keep_digits": True, "exact": True, "near": True, "line_repeats": 0,
                            "line_group": 30_000_000}
"""20 bands x 5 rows: P(candidate) = 1 - (1 - J^5)^20 is 0.9996 at J = 0.8 and 0.47 at J = 0.5; verification with all
128 values then keeps only J >= threshold (the LSH is tuned for recall, the check for precision)."""


SIGNATURE_BATCH = 512
"""Texts shingled together (one word-hash pass and one n-gram pass per batch)."""


def signatures(texts: list[str], options: dict[str, Any]) -> np.ndarray:
    """(D, num_perm) uint32 MinHash signatures of word n-gram shingles."""
    shingler = ShingleHasher(options["ngram"], options["seed"])
    hasher = MinHasher(options["num_perm"], options["seed"])
    sigs = []
    for start in tqdm(range(0, len(texts), SIGNATURE_BATCH), desc="dedup: minhash", unit_scale=SIGNATURE_BATCH,
                      disable=None, leave=False):
        batch = [words(t, options["keep_digits"]) for t in texts[start:start + SIGNATURE_BATCH]]
        sigs.append(hasher.signatures_flat(*shingler.batch(batch)))
    return np.concatenate(sigs) if sigs else np.zeros((0, options["num_perm"]), dtype=np.uint32)


def line_hashes(text: str) -> list[int]:
    """A stable hash of each stripped line; 0 for a blank line (never counted)."""
    return [text_hash64(line.strip()) if line.strip() else 0 for line in text.split("\n")]


def dedup_map(corpus: Corpus, indices: range, options: dict[str, Any]) -> dict[str, Any]:
    """Per-record features of one block: exact key, signature, and (line rule) line hashes with offsets."""
    texts = [corpus.texts[i] for i in indices]
    exact = np.array([text_hash64(normalize_exact(t)) for t in texts], dtype=np.uint64)
    part: dict[str, Any] = {"exact": exact}
    if options["near"]:
        part["sig"] = signatures(texts, options)
    if options["line_repeats"] > 0:
        per_doc = [line_hashes(t) for t in texts]
        part["line_hashes"] = np.array([h for hs in per_doc for h in hs], dtype=np.uint64)
        part["line_counts"] = np.array([len(hs) for hs in per_doc], dtype=np.int64)
    return part


def _concat(parts: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.concatenate([p[key] for p in parts])


def line_rule(corpus: Corpus, parts: list[dict[str, Any]], gone: set[int], options: dict[str, Any]
              ) -> dict[int, dict[str, Any]]:
    """Decisions of the line rule for the documents not in `gone` (edited or, with nothing left, dropped)."""
    counts = _concat(parts, "line_counts")
    flat = _concat(parts, "line_hashes")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    limit, group = options["line_repeats"], options["line_group"]
    alive = [i for i in range(len(corpus)) if i not in gone]
    decisions: dict[int, dict[str, Any]] = {}
    for g in range(0, len(alive), group):
        members = alive[g:g + group]
        tally = Counter(h for i in members for h in flat[starts[i]:starts[i] + counts[i]].tolist() if h)
        repeated = {h for h, c in tally.items() if c > limit}
        if not repeated:
            continue
        for i in members:
            hashes = flat[starts[i]:starts[i] + counts[i]].tolist()
            if not repeated.intersection(hashes):
                continue
            lines = corpus.texts[i].split("\n")
            kept = [line for line, h in zip(lines, hashes) if h not in repeated]
            cut = [line for line, h in zip(lines, hashes) if h in repeated]
            if any(line.strip() for line in kept):
                decisions[i] = {"action": "edited", "reason": "repeated_lines", "removed_lines": cut,
                                "text": "\n".join(kept)}
            else:
                decisions[i] = {"action": "dropped", "reason": "repeated_lines", "removed_lines": cut}
    return decisions


def dedup_reduce(corpus: Corpus, parts: list[dict[str, Any]], options: dict[str, Any]
                 ) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """Exact, then near, then the line rule; returns (decisions, summary)."""
    decisions: dict[int, dict[str, Any]] = {}
    exact = exact_duplicates(_concat(parts, "exact").tolist()) if options["exact"] else {}
    exact = {i: j for i, j in exact.items() if i not in corpus.invalid}  # unreadable records all have text ""
    for i, j in exact.items():
        decisions[i] = {"action": "dropped", "reason": "exact_duplicate", "duplicate_of": corpus.ids[j]}
    candidates = 0
    near: dict[int, tuple[int, float]] = {}
    if options["near"]:
        near, candidates = near_duplicates(_concat(parts, "sig"), options["bands"], options["rows"],
                                           options["threshold"], set(exact) | set(corpus.invalid))
        for i, (j, score) in near.items():
            decisions[i] = {"action": "dropped", "reason": "near_duplicate", "duplicate_of": corpus.ids[j],
                            "jaccard": round(score, 4)}
    summary: dict[str, Any] = {"input": len(corpus), "removed_exact": len(exact), "removed_near": len(near),
                               "lsh_candidate_pairs": candidates}
    if options["line_repeats"] > 0:
        lines = line_rule(corpus, parts, set(decisions) | set(corpus.invalid), options)
        decisions.update(lines)
        summary.update(edited_lines=sum(d["action"] == "edited" for d in lines.values()),
                       removed_lines=sum(len(d["removed_lines"]) for d in lines.values()),
                       dropped_empty=sum(d["action"] == "dropped" for d in lines.values()))
    dropped = sum(d["action"] == "dropped" for d in decisions.values())
    summary = {"input": len(corpus), "kept": len(corpus) - dropped, **summary, "settings": options}
    return decisions, summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixtune data dedup", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--ngram", type=int, default=DEFAULTS["ngram"], help="words per shingle [default 5]")
    p.add_argument("--num-perm", type=int, default=DEFAULTS["num_perm"], help="MinHash values [default 128]")
    p.add_argument("--bands", type=int, default=DEFAULTS["bands"], help="LSH bands [default 20]")
    p.add_argument("--rows", type=int, default=DEFAULTS["rows"], help="LSH rows per band [default 5]")
    p.add_argument("--threshold", type=float, default=DEFAULTS["threshold"],
                   help="estimated Jaccard at or above which a candidate is a near duplicate [default 0.8]")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="hash seed [default 1]")
    p.add_argument("--normalize-digits", action="store_true", help="digit runs count as one word '0' (as datatrove)")
    p.add_argument("--no-exact", action="store_true", help="skip exact dedup")
    p.add_argument("--no-near", action="store_true", help="skip near dedup")
    p.add_argument("--line-repeats", type=int, default=0,
                   help="cut lines occurring more than N times per group of documents (0: off) [default 0]")
    p.add_argument("--line-group", type=int, default=DEFAULTS["line_group"],
                   help="documents per group of the line rule [default 30000000]")
    return p


def options_from(args: argparse.Namespace) -> dict[str, Any]:
    opts = {"ngram": args.ngram, "num_perm": args.num_perm, "bands": args.bands, "rows": args.rows,
            "threshold": args.threshold, "seed": args.seed, "keep_digits": not args.normalize_digits,
            "exact": not args.no_exact, "near": not args.no_near, "line_repeats": args.line_repeats,
            "line_group": args.line_group}
    if opts["bands"] * opts["rows"] > opts["num_perm"]:
        raise CorpusError(f"--bands x --rows = {opts['bands'] * opts['rows']} exceeds --num-perm {opts['num_perm']}")
    if not 0.0 < opts["threshold"] <= 1.0 or opts["ngram"] < 1 or opts["line_group"] < 1:
        raise CorpusError("--threshold must be in (0, 1], --ngram and --line-group >= 1")
    return opts


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = options_from(args)
        corpus = read_corpus(args.input, args.format, args.text_field, args.invalid)
        if options["line_repeats"] > 0 and corpus.format != "text":
            raise CorpusError(f"{args.input}: --line-repeats edits plain {{id, text}} documents, not {corpus.format}")
    except CorpusError as e:
        print(f"mixtune data dedup: {e}", file=sys.stderr)
        return 2
    return run_verb(args, "dedup", "mixtune.data.dedup:dedup_map", "mixtune.data.dedup:dedup_reduce", options,
                    corpus)
