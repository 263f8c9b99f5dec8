"""Exact and near-duplicate detection: normalised-text hashes, numpy MinHash, LSH banding, verified greedy keep-one.

Our own code because measurement favours it (benchmarks/dedup_throughput.py): datatrove's MinHash stages spend their
time in a per-n-gram Python hash and a spaCy tokenizer, and neither datatrove nor datasketch verifies LSH candidates,
so their "near-duplicate" is the LSH curve's blur (14 bands x 8 rows behaves like J >= 0.72). Here:
- words: lower-cased text with punctuation as spaces, split on whitespace (digits kept unless asked);
- shingles: word n-grams (5 by default), each a 32-bit hash combined in numpy from per-word 64-bit hashes (each
  distinct word hashed once per process with blake2b, so hashes agree across processes and runs);
- MinHash (Broder 1997): `num_perm` hash functions from the multiply-add-shift family
  h(x) = ((a*x + b) mod 2^64) >> 32 (Dietzfelbinger 1996; a odd), applied to all shingles of a batch of documents at
  once, minimum per document with `np.minimum.reduceat`;
- LSH (Indyk & Motwani 1998; Leskovec et al., MMDS ch. 3): the first `bands * rows` values split into bands; documents
  sharing a band key are candidates;
- verification: a candidate pair is a near duplicate only if its estimated Jaccard (share of equal values over all
  `num_perm`) is >= threshold;
- keep-one: in input order, a document is removed when it is a verified near duplicate of an earlier *kept*
  document (`duplicate_of` = the first such one), so every removed document has J >= threshold with a document that
  stays, and the result does not depend on how the work was split.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence

import numpy as np

_PUNCT = {i: " " for i in range(0x10000) if unicodedata.category(chr(i)).startswith(("P", "S"))}
_DIGITS = re.compile(r"\d+")
MASK32 = np.uint64(0xFFFFFFFF)
MAX_GROUP_PAIRS = 50
"""Within an LSH bucket of more than 51 documents, each is paired only with its 50 neighbours in index order (a
bucket that large is boilerplate; exact dedup has already removed copies)."""


def normalize_exact(text: str) -> str:
    """Text for exact dedup: NFKC, lower case, whitespace runs as one space, stripped (punctuation and digits kept)."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def words(text: str, keep_digits: bool = True) -> list[str]:
    """Lower-cased words with punctuation and symbols as spaces; digit runs become "0" unless keep_digits."""
    text = text.lower().translate(_PUNCT)
    if not keep_digits:
        text = _DIGITS.sub("0", text)
    return text.split()


def text_hash64(text: str) -> int:
    """A stable 64-bit hash (blake2b) of a string."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class ShingleHasher:
    """Word n-gram hashes as uint64 (values < 2^32), with a per-process cache of word hashes."""

    def __init__(self, n: int = 5, seed: int = 1):
        self.n = n
        rng = np.random.default_rng(seed)
        self.mix = rng.integers(1, 2**63, size=n, dtype=np.uint64) | np.uint64(1)  # odd: a bijection mod 2^64
        self.cache: dict[str, int] = {}

    def word_hashes(self, ws: Sequence[str]) -> np.ndarray:
        out = list(map(self.cache.get, ws))  # C-level loop; a word seen before costs one dict lookup
        if None in out:
            for k, h in enumerate(out):
                if h is None:
                    out[k] = self.cache.setdefault(ws[k], text_hash64(ws[k]))
        return np.array(out, dtype=np.uint64)

    def shingles(self, ws: Sequence[str]) -> np.ndarray:
        """(S,) uint64 shingle hashes (< 2^32) of one text; fewer than n words make one shingle; no words: empty."""
        return self.batch([ws])[0]

    def batch(self, word_lists: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """(shingles (S,) uint64 < 2^32 of all texts in order, counts (D,) int64 per text).

        All words of the batch are hashed in one pass and the n-gram sums are computed over the concatenation,
        keeping only windows that start and end inside one text (no per-text numpy calls).
        """
        lens = np.fromiter((len(ws) for ws in word_lists), dtype=np.int64, count=len(word_lists))
        w = self.word_hashes([x for ws in word_lists for x in ws])  # (W,)
        n = self.n
        counts = np.where(lens >= n, lens - n + 1, np.minimum(lens, 1))  # (D,)
        out = np.empty(int(counts.sum()), dtype=np.uint64)
        doc_start = np.concatenate([[0], np.cumsum(lens)[:-1]])
        out_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        full = lens >= n
        if full.any() and len(w) >= n:
            span = len(w) - n + 1
            acc = np.zeros(span, dtype=np.uint64)
            for k in range(n):  # acc[i] = sum_k mix[k] * w[i + k] mod 2^64: the ordered n-gram hash
                acc += w[k:k + span] * self.mix[k]
            c = counts[full]
            within = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)  # window index inside its text
            out[np.repeat(out_start[full], c) + within] = _fold(acc[np.repeat(doc_start[full], c) + within])
        for d in np.flatnonzero(~full & (lens > 0)).tolist():  # texts shorter than n words: one shingle
            part = w[doc_start[d]:doc_start[d] + lens[d]] * self.mix[:lens[d]]
            out[out_start[d]] = _fold(np.array([part.sum(dtype=np.uint64)], dtype=np.uint64))[0]
        return out, counts


def _fold(acc: np.ndarray) -> np.ndarray:
    """64-bit sums to 32-bit shingle hashes (high xor low half)."""
    return (acc >> np.uint64(32)) ^ (acc & MASK32)


class MinHasher:
    """`num_perm` multiply-add-shift hash functions; signatures of many documents at once."""

    def __init__(self, num_perm: int = 128, seed: int = 1):
        rng = np.random.default_rng(seed + 1_000_003)
        self.num_perm = num_perm
        self.a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)

    def signatures(self, shingle_sets: Sequence[np.ndarray]) -> np.ndarray:
        """(D, num_perm) uint32 signatures of separate shingle arrays (see `signatures_flat`)."""
        counts = np.fromiter((len(x) for x in shingle_sets), dtype=np.int64, count=len(shingle_sets))
        flat = np.concatenate(list(shingle_sets)) if len(shingle_sets) else np.zeros(0, dtype=np.uint64)
        return self.signatures_flat(flat.astype(np.uint64), counts)

    def signatures_flat(self, shingles: np.ndarray, counts: np.ndarray, batch_shingles: int = 1 << 10) -> np.ndarray:
        """(D, num_perm) uint32 signatures of texts whose shingles lie back to back in `shingles` (counts per text);
        a text without shingles gets all 0xFFFFFFFF (matches nothing)."""
        out = np.full((len(counts), self.num_perm), 0xFFFFFFFF, dtype=np.uint32)
        ends = np.cumsum(counts)
        start = 0
        while start < len(counts):  # texts [start, stop): at least one, about batch_shingles shingles
            base = int(ends[start - 1]) if start else 0
            stop = max(start + 1, int(np.searchsorted(ends, base + batch_shingles, side="right")))
            self._fill(shingles[base:int(ends[stop - 1])], counts[start:stop], start, out)
            start = stop
        return out

    def _fill(self, x: np.ndarray, counts: np.ndarray, start: int, out: np.ndarray) -> None:
        docs = np.flatnonzero(counts > 0)
        if len(docs) == 0:
            return
        offsets = np.concatenate([[0], np.cumsum(counts[docs])[:-1]])
        # Batches of ~1k shingles keep the (S, P) matrix in cache. The shift is applied after the minimum: the top
        # 32 bits are monotone in the 64-bit value, so min(v >> 32) == min(v) >> 32, one pass fewer over (S, P).
        hashed = np.multiply.outer(x, self.a)  # (S, P), mod 2^64
        hashed += self.b
        low = np.minimum.reduceat(hashed, offsets, axis=0)  # (D, P)
        out[start + docs] = (low >> np.uint64(32)).astype(np.uint32)


def lsh_candidates(sig: np.ndarray, bands: int, rows: int, alive: np.ndarray | None = None) -> np.ndarray:
    """(K, 2) int64 candidate pairs (i < j, unique) sharing at least one band key; only rows with `alive` True."""
    n, perms = sig.shape
    if bands * rows > perms:
        raise ValueError(f"bands x rows = {bands * rows} exceeds num_perm = {perms}")
    idx = np.arange(n) if alive is None else np.flatnonzero(alive)
    empty = (sig[idx] == 0xFFFFFFFF).all(axis=1)
    idx = idx[~empty]
    mix = np.random.default_rng(7).integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)
    pairs = []
    for band in range(bands):
        part = sig[idx, band * rows:(band + 1) * rows].astype(np.uint64)  # (n, rows)
        with np.errstate(over="ignore"):
            keys = (part * mix[None, :]).sum(axis=1, dtype=np.uint64) ^ np.uint64(band)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        gid = np.concatenate([[0], np.cumsum(sorted_keys[1:] != sorted_keys[:-1])])  # bucket id per position
        members = idx[order]
        for d in range(1, MAX_GROUP_PAIRS + 1):  # pair each document with the d-th next one in its bucket
            same = gid[d:] == gid[:-d]
            if not same.any():
                break
            a, b = members[:-d][same], members[d:][same]
            pairs.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1).astype(np.int64))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(pairs), axis=0)


def estimated_jaccard(sig: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(K,) share of equal MinHash values for each pair."""
    if len(pairs) == 0:
        return np.zeros(0)
    return (sig[pairs[:, 0]] == sig[pairs[:, 1]]).mean(axis=1)


def exact_duplicates(keys: Sequence[int]) -> dict[int, int]:
    """{index: index of its first occurrence} for every repeated key."""
    first: dict[int, int] = {}
    dup: dict[int, int] = {}
    for i, k in enumerate(keys):
        if k in first:
            dup[i] = first[k]
        else:
            first[k] = i
    return dup


def greedy_keep_one(n: int, pairs: np.ndarray, scores: np.ndarray, removed: set[int] | None = None
                    ) -> dict[int, tuple[int, float]]:
    """{removed index: (kept earlier index, score)}: in input order, a document with a verified pair to an earlier
    kept document is removed (`duplicate_of` = the smallest such index). `removed` are already gone (not reused)."""
    gone = set(removed or ())
    earlier: dict[int, list[tuple[int, float]]] = {}
    for (i, j), s in zip(pairs.tolist(), scores.tolist()):
        earlier.setdefault(j, []).append((i, s))
    out: dict[int, tuple[int, float]] = {}
    for j in sorted(earlier):
        if j in gone:
            continue
        for i, s in sorted(earlier[j]):
            if i not in gone:
                out[j] = (i, s)
                gone.add(j)
                break
    return out


def near_duplicates(sig: np.ndarray, bands: int, rows: int, threshold: float, removed: set[int] | None = None
                    ) -> tuple[dict[int, tuple[int, float]], int]:
    """({removed index: (duplicate_of index, estimated J)}, number of LSH candidate pairs)."""
    alive = np.ones(len(sig), dtype=bool)
    alive[list(removed or ())] = False
    pairs = lsh_candidates(sig, bands, rows, alive)
    scores = estimated_jaccard(sig, pairs)
    verified = scores >= threshold
    return greedy_keep_one(len(sig), pairs[verified], scores[verified], removed), len(pairs)
