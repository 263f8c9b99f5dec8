"""Benchmark contamination by n-gram overlap: an index of test items' n-grams, and the matches of one text.

Our own code (datatrove's decontamination step needs lighteval's task registry and the hub). The method is the one
of GPT-3 (Brown et al. 2020, appendix C) and the FLAN / Llama reports: normalise the text (lower case, punctuation as
spaces: `mixtune.data.minhash.words`), and call a training record contaminated by a test item when they share a
word n-gram. n is 13 by default, and shorter for short items as GPT-3 did: an item of L < n words uses n = L, and
an item shorter than `min_n` words (8 by default, GPT-3's floor) is not indexed (too short to tell apart from common
phrases; counted in `IndexStats.too_short`).

Items are `(benchmark, item_id, text)` triples; an item may come as several triples (question and answer), each
indexed separately so no n-gram spans two fields. The benchmark loaders live on the evaluate side
(`mixtune.evaluate.contamination`); this module never imports them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from mixtune.data.minhash import ShingleHasher, words

MAX_MATCHES = 5
"""Matches listed per flagged record (the longest overlaps first)."""


@dataclass
class IndexStats:
    items: int = 0
    texts: int = 0
    too_short: int = 0
    by_benchmark: dict[str, int] = field(default_factory=dict)


def ngram_keys(tokens: list[str], n: int, hasher: ShingleHasher) -> np.ndarray:
    """(L - n + 1,) uint64 ordered hashes of the word n-grams of `tokens` (empty if fewer than n tokens)."""
    if len(tokens) < n:
        return np.zeros(0, dtype=np.uint64)
    w = hasher.word_hashes(tokens)
    span = len(w) - n + 1
    acc = np.zeros(span, dtype=np.uint64)
    for k in range(n):  # mod 2^64, as ShingleHasher.batch
        acc += w[k:k + span] * hasher.mix[k]
    return acc


class NgramIndex:
    """n-grams of benchmark items, per n; `matches(text)` finds the items a text overlaps."""

    def __init__(self, items: Iterable[tuple[str, str, str]], n: int = 13, min_n: int = 8, seed: int = 1):
        if not 1 <= min_n <= n:
            raise ValueError(f"need 1 <= min_n ({min_n}) <= n ({n})")
        self.n, self.min_n = n, min_n
        self.hasher = ShingleHasher(n, seed)
        self.item_names: list[tuple[str, str]] = []
        self.stats = IndexStats()
        owners: dict[int, dict[int, set[int]]] = {}  # n -> key -> item indices
        seen: dict[tuple[str, str], int] = {}
        for benchmark, item_id, text in items:
            self.stats.texts += 1
            item = seen.setdefault((benchmark, item_id), len(seen))
            if item == len(self.item_names):
                self.item_names.append((benchmark, item_id))
                self.stats.by_benchmark[benchmark] = self.stats.by_benchmark.get(benchmark, 0) + 1
            tokens = words(text)
            if len(tokens) < min_n:
                self.stats.too_short += 1
                continue
            size = min(n, len(tokens))
            table = owners.setdefault(size, {})
            for key in ngram_keys(tokens, size, self.hasher).tolist():
                table.setdefault(key, set()).add(item)
        self.stats.items = len(self.item_names)
        self.owners = owners
        self.sorted_keys = {size: np.array(sorted(t), dtype=np.uint64) for size, t in owners.items()}

    def matches(self, text: str) -> list[dict]:
        """Items sharing an n-gram with `text`, longest overlap first: `{benchmark, item_id, ngram, overlap_words,
        span}` where span is the normalised words of the longest run of matching n-grams."""
        tokens = words(text)
        found: dict[int, list[tuple[int, int]]] = {}  # item -> [(start, end)] of matched word spans
        for size, keys in self.sorted_keys.items():
            grams = ngram_keys(tokens, size, self.hasher)
            if not len(grams):
                continue
            at = np.minimum(np.searchsorted(keys, grams), len(keys) - 1)
            hit = np.flatnonzero(keys[at] == grams)
            table = self.owners[size]
            for pos in hit.tolist():
                for item in table[int(grams[pos])]:
                    found.setdefault(item, []).append((pos, pos + size))
        out = []
        for item, spans in found.items():
            start, end, covered = _longest_run(spans)
            benchmark, item_id = self.item_names[item]
            out.append({"benchmark": benchmark, "item_id": item_id, "ngram": spans[0][1] - spans[0][0],
                        "overlap_words": covered, "span": " ".join(tokens[start:end])})
        out.sort(key=lambda m: (-m["overlap_words"], m["benchmark"], m["item_id"]))
        return out


def _longest_run(spans: list[tuple[int, int]]) -> tuple[int, int, int]:
    """(start, end) of the longest union of overlapping spans, and the words covered by all spans together."""
    spans = sorted(spans)
    best, covered = (spans[0][0], spans[0][1]), 0
    cur_s, cur_e = spans[0]
    for s, e in spans[1:] + [(10**18, 10**18)]:
        if s <= cur_e:
            cur_e = max(cur_e, e)
            continue
        covered += cur_e - cur_s
        if cur_e - cur_s > best[1] - best[0]:
            best = (cur_s, cur_e)
        cur_s, cur_e = s, e
    return best[0], best[1], covered


def flag_records(index: NgramIndex, texts: Iterable[str]) -> dict[int, list[dict]]:
    """{record position: its matches (at most MAX_MATCHES)} for every text that overlaps an item."""
    from tqdm.auto import tqdm

    out = {}
    for i, text in enumerate(tqdm(texts, desc="decontaminate", disable=None, leave=False)):
        found = index.matches(text)
        if found:
            out[i] = found[:MAX_MATCHES]
    return out
