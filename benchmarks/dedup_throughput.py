"""Near-dedup throughput and quality: mixtune vs datatrove's MinHash pipeline (spaCy and regex tokenizers) vs datasketch.

One seeded corpus (`mixtune.data.planted`: planted exact copies, word edits, boilerplate, truncations and hard
negatives) with ground truth by exact Jaccard of word 5-gram sets; every method uses word 5-grams and no digit
normalisation; quality is measured on pairs with J >= 0.8:
- mixtune: `mixtune data dedup` end to end (JSONL in and out, datatrove LocalPipelineExecutor, 1 task), its defaults
  (128 values, 20 bands x 5 rows, verified by estimated J >= 0.8);
- datatrove default: its 4-stage MinHash pipeline (signatures, buckets, clusters, filter; JsonlReader / JsonlWriter;
  14 buckets x 8 hashes, its default) with its default English word tokenizer (spaCy), 1 worker;
- datatrove regex: the same pipeline with a regex word tokenizer;
- datasketch: MinHash(128, xxh32) + MinHashLSH(threshold 0.8), candidates verified like mixtune's.
Methods run alternately in one process so shared load hits all of them; docs/s is the best of `--repeats` runs
(datatrove's spaCy variant runs once). recall: share of true pairs with at least one side removed; precision: share of
removed documents that have a true partner. The last line is one JSON object.

    python benchmarks/dedup_throughput.py [--docs 10000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

from mixtune.data.minhash import greedy_keep_one, words
from mixtune.data.planted import make_corpus, removal_scores, true_pairs

NGRAM, THRESHOLD = 5, 0.8


def run_mixtune(src: Path, work: Path) -> set[str]:
    from mixtune.data.cli import main as data_main

    out = work / "mixtune.jsonl"
    with contextlib.redirect_stdout(io.StringIO()):
        assert data_main(["dedup", str(src), "--out", str(out)]) == 0
    return {r["id"] for r in map(json.loads, Path(str(out) + ".removed.jsonl").read_text().splitlines())}


def regex_tokenizer():
    from datatrove.utils.word_tokenizers import WordTokenizer

    class RegexWordTokenizer(WordTokenizer):
        """Words as runs of non-space characters (datatrove has already removed punctuation)."""

        pattern = re.compile(r"\S+")

        def word_tokenize(self, text: str) -> list[str]:
            return self.pattern.findall(text)

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    return RegexWordTokenizer("en")


def run_datatrove(src: Path, work: Path, tokenizer) -> set[str]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.text import TextNormConfig

    root = work / "datatrove"
    shutil.rmtree(root, ignore_errors=True)
    cfg = MinhashConfig(n_grams=NGRAM, num_buckets=14, hashes_per_bucket=8, norm_config=TextNormConfig(
        norm_numbers=False))
    lang = tokenizer if tokenizer is not None else "en"
    reader = {"data_folder": str(src.parent), "glob_pattern": src.name}
    stages = [
        ([JsonlReader(**reader), MinhashDedupSignature(output_folder=str(root / "sigs"), config=cfg, language=lang)], 1),
        ([MinhashDedupBuckets(input_folder=str(root / "sigs"), output_folder=str(root / "buckets"), config=cfg)],
         cfg.num_buckets),
        ([MinhashDedupCluster(input_folder=str(root / "buckets"), output_folder=str(root / "ids"), config=cfg)], 1),
        ([JsonlReader(**reader), MinhashDedupFilter(input_folder=str(root / "ids")),
          JsonlWriter(str(root / "out"), output_filename="kept.jsonl", compression=None)], 1),
    ]
    for k, (pipeline, tasks) in enumerate(stages):
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=str(root / f"logs{k}"),
                              skip_completed=False).run()
    kept = {json.loads(line)["id"] for line in (root / "out" / "kept.jsonl").read_text().splitlines()}
    return {json.loads(line)["id"] for line in src.read_text().splitlines()} - kept


def run_datasketch(texts: list[str], ids: list[str]) -> set[str]:
    import numpy as np
    import xxhash
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=128)
    sigs = []
    for i, text in enumerate(texts):
        ws = words(text)
        n = min(NGRAM, len(ws))
        m = MinHash(num_perm=128, hashfunc=xxhash.xxh32_intdigest)
        m.update_batch([" ".join(ws[k:k + n]).encode() for k in range(len(ws) - n + 1)])
        sigs.append(m)
        lsh.insert(str(i), m)
    pairs, scores = [], []
    for i, m in enumerate(sigs):
        for key in lsh.query(m):
            j = int(key)
            if j < i:
                score = m.jaccard(sigs[j])
                if score >= THRESHOLD:
                    pairs.append((j, i))
                    scores.append(score)
    gone = greedy_keep_one(len(texts), np.array(pairs, dtype=np.int64).reshape(-1, 2), np.array(scores))
    return {ids[i] for i in gone}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000, help="corpus size [default 10000]")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each fast method [default 2]")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from loguru import logger

    logger.remove()  # datatrove's per-task INFO lines would drown the figures
    docs = make_corpus(args.docs, seed=args.seed)
    texts, ids = [d["text"] for d in docs], [d["id"] for d in docs]
    t0 = time.perf_counter()
    truth = true_pairs(texts, NGRAM, THRESHOLD)
    print(f"corpus: {len(docs)} docs, {sum(len(t.split()) for t in texts) / len(texts):.0f} words/doc, "
          f"{len(truth)} true pairs with J >= {THRESHOLD} (exact Jaccard in {time.perf_counter() - t0:.1f} s)")
    work = Path(tempfile.mkdtemp(prefix="dedup-bench-"))
    src = work / "corpus.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids, texts)))
    methods = {"mixtune": lambda: run_mixtune(src, work),
               "datatrove_regex": lambda: run_datatrove(src, work, regex_tokenizer()),
               "datasketch": lambda: run_datasketch(texts, ids),
               "datatrove_default": lambda: run_datatrove(src, work, None)}
    best: dict[str, float] = {}
    quality: dict[str, tuple[float, float]] = {}
    index = {i: k for k, i in enumerate(ids)}
    for rep in range(args.repeats):
        for name, fn in methods.items():
            if name == "datatrove_default" and rep > 0:
                continue
            start = time.perf_counter()
            with contextlib.redirect_stderr(io.StringIO()):  # datatrove's per-task log lines and stats tables
                removed = fn()
            seconds = time.perf_counter() - start
            best[name] = max(best.get(name, 0.0), len(docs) / seconds)
            quality[name] = removal_scores({index[i] for i in removed}, truth)
            print(f"{name:<18} {len(docs) / seconds:>9.0f} docs/s  removed {len(removed):>5}  "
                  f"recall {quality[name][0]:.3f}  precision {quality[name][1]:.3f}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    result = {"docs": len(docs), "true_pairs": len(truth), "mixtune_docs_s": round(best["mixtune"], 1),
              "datatrove_default_docs_s": round(best["datatrove_default"], 1),
              "datatrove_regex_docs_s": round(best["datatrove_regex"], 1),
              "datasketch_docs_s": round(best["datasketch"], 1),
              "ratio": round(best["mixtune"] / best["datatrove_default"], 2),
              "ratio_regex": round(best["mixtune"] / best["datatrove_regex"], 2),
              "recall": round(quality["mixtune"][0], 4), "precision": round(quality["mixtune"][1], 4),
              "quality": {k: {"recall": round(r, 4), "precision": round(p, 4)} for k, (r, p) in quality.items()}}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
