"""A seeded corpus with planted duplicates, and exact-Jaccard ground truth, for the dedup tests and benchmark.

Documents are random text over a Zipf-distributed vocabulary of made-up words (so two unrelated documents share
almost no 5-gram). Planted, each from a random original:
- `exact`: the original with changed letter case and whitespace (equal after `normalize_exact`);
- `edit`: a few words replaced, inserted or deleted;
- `boilerplate`: the original with a short header and footer added;
- `truncate`: the original's first 88-97% of words;
- `negative` (hard negative): the original's first 70-85% of words followed by new text, so it shares one long
  passage and has Jaccard 0.54-0.74, just under the usual 0.8 threshold.
Ground truth is the exact Jaccard of the word 5-gram sets (`true_pairs`), whatever the planting meant to do.
"""

from __future__ import annotations

import random
from itertools import combinations

from mixtune.data.minhash import words

KINDS = ("exact", "edit", "boilerplate", "truncate", "negative")
HEADERS = ["home about contact login", "skip to main content menu", "share this page on social media"]
FOOTERS = ["all rights reserved privacy policy terms", "subscribe to our newsletter for updates today"]


def _vocab(rng: random.Random, size: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    seen: set[str] = set()
    while len(seen) < size:
        seen.add("".join(rng.choices(letters, k=rng.randint(2, 9))))
    return sorted(seen)


def _sentence_text(ws: list[str], rng: random.Random) -> str:
    out, k = [], 0
    while k < len(ws):
        n = rng.randint(6, 16)
        chunk = ws[k:k + n]
        out.append(" ".join([chunk[0].capitalize(), *chunk[1:]]) + ".")
        k += n
    return " ".join(out)


def make_corpus(n_docs: int = 1000, seed: int = 0, dup_fraction: float = 0.3, min_words: int = 60,
                max_words: int = 300) -> list[dict]:
    """`n_docs` records `{id, text, kind, origin}` (origin: the planted document's original id, else None),
    in shuffled order; about `dup_fraction` of them are planted."""
    rng = random.Random(f"planted/{seed}")
    vocab = _vocab(rng, 20_000)
    weights = [1.0 / (r + 1) ** 0.8 for r in range(len(vocab))]
    n_planted = int(n_docs * dup_fraction)
    originals = []
    for i in range(n_docs - n_planted):
        ws = rng.choices(vocab, weights=weights, k=rng.randint(min_words, max_words))
        originals.append({"id": f"doc/{i}", "words": ws, "text": _sentence_text(ws, rng), "kind": "original",
                          "origin": None})
    planted = []
    for k in range(n_planted):
        src = rng.choice(originals)
        kind = KINDS[k % len(KINDS)]
        text = (_case_and_space(src["text"], rng) if kind == "exact"
                else _sentence_text(_plant(kind, src["words"], rng, vocab, weights), rng))
        planted.append({"id": f"dup/{k}", "text": text, "kind": kind, "origin": src["id"]})
    docs = [{k: d[k] for k in ("id", "text", "kind", "origin")} for d in originals + planted]
    rng.shuffle(docs)
    return docs


def _plant(kind: str, ws: list[str], rng: random.Random, vocab: list[str], weights: list[float]) -> list[str]:
    ws = list(ws)
    if kind == "exact":
        return ws
    if kind == "edit":
        for _ in range(max(1, len(ws) // 100)):
            op, pos = rng.choice(("replace", "insert", "delete")), rng.randrange(len(ws))
            if op == "replace":
                ws[pos] = rng.choice(vocab)
            elif op == "insert":
                ws.insert(pos, rng.choice(vocab))
            elif len(ws) > 2:
                del ws[pos]
        return ws
    if kind == "boilerplate":
        return rng.choice(HEADERS).split() + ws + rng.choice(FOOTERS).split()
    if kind == "truncate":
        return ws[:max(5, int(len(ws) * rng.uniform(0.88, 0.97)))]
    head = ws[:int(len(ws) * rng.uniform(0.7, 0.85))]  # J ~ p / (2 - p): 0.54 .. 0.74
    return head + rng.choices(vocab, weights=weights, k=len(ws) - len(head))


def _case_and_space(text: str, rng: random.Random) -> str:
    out = text.upper() if rng.random() < 0.5 else text.lower()
    return "  " + out.replace(" ", rng.choice(["  ", " \n", "\t"]), 3) + " \n"


def shingle_set(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """The exact word n-gram set that mixtune's dedup hashes (a text shorter than n words is one shingle)."""
    ws = words(text)
    if not ws:
        return set()
    n = min(n, len(ws))
    return {tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)}


def true_pairs(texts: list[str], n: int = 5, threshold: float = 0.8, max_posting: int = 200
               ) -> dict[tuple[int, int], float]:
    """{(i, j): exact Jaccard} for every pair i < j with J >= threshold (inverted index over shingles; a shingle in
    more than `max_posting` documents is boilerplate and does not propose pairs, though it still counts in J)."""
    sets = [shingle_set(t, n) for t in texts]
    postings: dict[tuple[str, ...], list[int]] = {}
    for i, s in enumerate(sets):
        for sh in s:
            postings.setdefault(sh, []).append(i)
    shared: set[tuple[int, int]] = set()
    for docs in postings.values():
        if 1 < len(docs) <= max_posting:
            shared.update(combinations(docs, 2))
    out = {}
    for i, j in sorted(shared):
        inter = len(sets[i] & sets[j])
        jac = inter / (len(sets[i]) + len(sets[j]) - inter)
        if jac >= threshold:
            out[(i, j)] = jac
    return out


def removal_scores(removed: set[int], pairs: dict[tuple[int, int], float]) -> tuple[float, float]:
    """(recall, precision) of a set of removed documents against true pairs (J >= threshold).

    recall: share of true pairs with at least one side removed (a pair left whole is a missed duplicate);
    precision: share of removed documents that have a true partner (a removed document without one was unique).
    """
    partnered = {i for pair in pairs for i in pair}
    recall = sum(i in removed or j in removed for i, j in pairs) / len(pairs) if pairs else 1.0
    precision = len(removed & partnered) / len(removed) if removed else 1.0
    return recall, precision
