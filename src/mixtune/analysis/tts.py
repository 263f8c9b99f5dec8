"""Test-time scaling: choose one of N sampled answers, and how accuracy grows with N.

- self-consistency (Wang et al. 2023, arXiv 2203.11171): majority vote over the answers extracted with the GSM8K
  strict rule (`#### N`, lm-eval's `strict-match`); answers without one do not vote; ties go to the answer reached
  first (sample order). No valid answer at all: the first sample stands (and scores as it is).
- best-of-N with a reward model (Cobbe et al. 2021; Lightman et al. 2023 §3): the sample with the highest score,
  from an outcome reward model (ORM: one score per answer) or a process reward model (PRM: one score per step,
  aggregated by the min or the product of the step probabilities, Lightman et al. §3.1 use the product), among the
  samples that give an answer (`#### N`) when any does: unfinished samples cannot be right and otherwise win by
  having few steps to doubt.
- reward-weighted voting (Li et al. 2023): the answer whose samples' scores sum highest.
- accuracy at N is averaged over the n_max / N disjoint groups of N samples each problem has (every sample used
  once per N: an unbiased estimate of selection from N fresh samples, with less variance than one group).
- pass@k (Chen et al. 2021) from the same samples with the unbiased estimator of `evaluate/code.pass_at_k`: the
  oracle that picks a correct sample whenever one exists, the ceiling of every selection rule.

Steps of a mini-lab solution (`world/arithmetic.py`): one equation `a op b = c` per line, then `#### N`.
`step_labels` checks each line by recomputing it; in `gold` mode it must also be the problem's own equation k
(right arithmetic on the wrong numbers is a wrong step), in `arithmetic` mode recomputation alone decides. After the
first wrong step every later step is wrong (the solution is off track), so a PRM's min and the first error agree.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from mixtune.evaluate.gsm8k import INVALID, extract_strict, normalize_for_match

STEP = re.compile(r"^\s*(-?\d+)\s*([-+*/])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
FINAL = re.compile(r"^\s*####\s*(-?[0-9][0-9.,]*)\s*$")
LABEL_MODES = ("gold", "arithmetic")


# ---------------------------------------------------------------------------------------------- selection
def answer_key(completion: str) -> str | None:
    """The normalised strict-match answer of a completion, or None when it has no `#### N`."""
    pred = extract_strict(completion)
    return None if pred == INVALID else normalize_for_match(pred)


def majority_vote(completions: Sequence[str]) -> int:
    """Index of the sample self-consistency picks: the first sample holding the most frequent valid answer."""
    keys = [answer_key(c) for c in completions]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return 0
    top = max(counts.values())
    return next(i for i, k in enumerate(keys) if k is not None and counts[k] == top)


def best_of_n(scores: Sequence[float]) -> int:
    """Index of the highest score (the first of equals)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def pick_by_scores(scores: Sequence[Sequence[float]], completions: Sequence[Sequence[str]] | None = None):
    """A `selection_accuracy` picker: within the group, the sample with the highest score (best-of-N). With
    `completions`, only samples that give an answer (`#### N`) compete, when any does: a reward model otherwise
    favours unfinished answers (one confident step, no final answer: a high min-of-steps, and never right)."""
    def pick(p: int, idx: list[int]) -> int:
        if completions is not None:
            idx = [i for i in idx if answer_key(completions[p][i]) is not None] or idx
        return idx[best_of_n([scores[p][i] for i in idx])]
    return pick


def weighted_vote(completions: Sequence[str], scores: Sequence[float]) -> int:
    """Index of the first sample holding the answer with the largest summed score (reward-weighted majority vote,
    Li et al. 2023; Uesato et al. 2022); no valid answer: the first sample."""
    keys = [answer_key(c) for c in completions]
    totals: dict[str, float] = {}
    for k, x in zip(keys, scores):
        if k is not None:
            totals[k] = totals.get(k, 0.0) + x
    if not totals:
        return 0
    top = max(totals.values())
    return next(i for i, k in enumerate(keys) if k is not None and totals[k] == top)


def pick_by_weighted_vote(completions: Sequence[Sequence[str]], scores: Sequence[Sequence[float]]):
    """A `selection_accuracy` picker: reward-weighted majority vote within the group."""
    return lambda p, idx: idx[weighted_vote([completions[p][i] for i in idx], [scores[p][i] for i in idx])]


def pick_by_vote(completions: Sequence[Sequence[str]]):
    """A `selection_accuracy` picker: within the group, the majority-vote sample (self-consistency)."""
    return lambda p, idx: idx[majority_vote([completions[p][i] for i in idx])]


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """P(score of a random positive > score of a random negative), ties counting ½ (Mann-Whitney U / n₊n₋): how well
    a reward model ranks right answers above wrong ones; 0.5 is chance, NaN without both kinds."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    if not pos or not neg:
        return float("nan")
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def within_problem_auroc(scores: Sequence[Sequence[float]], correct: Sequence[Sequence[bool]]) -> float:
    """Mean over problems of the AUROC among that problem's own samples (problems with both right and wrong ones):
    what best-of-N needs. The pooled AUROC also rewards telling easy problems from hard ones, which selecting
    among one problem's samples never uses; NaN when no problem has both kinds."""
    per = [auroc(s, c) for s, c in zip(scores, correct) if any(c) and not all(c)]
    return sum(per) / len(per) if per else float("nan")


def groups_of(n_max: int, n: int) -> list[range]:
    """The n_max // n disjoint groups of n sample indices."""
    if n < 1 or n > n_max:
        raise ValueError(f"need 1 <= n <= n_max, got n={n}, n_max={n_max}")
    return [range(g * n, (g + 1) * n) for g in range(n_max // n)]


def selection_accuracy(correct: Sequence[Sequence[bool]], pick, n: int) -> float:
    """Mean over problems and over their disjoint groups of n samples of `correct[pick(group)]`.

    correct[p][i]: sample i of problem p is right; pick(p, indices) -> the chosen index among `indices`."""
    total, count = 0.0, 0
    for p, row in enumerate(correct):
        for group in groups_of(len(row), n):
            total += float(row[pick(p, list(group))])
            count += 1
    return total / max(count, 1)


def powers_of_two(n_max: int) -> list[int]:
    """1, 2, 4, ... up to n_max (n_max itself a power of two)."""
    if n_max < 1 or n_max & (n_max - 1):
        raise ValueError(f"n_max must be a power of two, got {n_max}")
    return [2**i for i in range(n_max.bit_length())]


# -------------------------------------------------------------------------------------------- step labels
def _apply(a: int, op: str, b: int) -> int | None:
    if op == "/":
        return a // b if b != 0 and a % b == 0 else None  # the mini-lab only divides exactly
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def parse_solution(text: str) -> list[str]:
    """The non-blank lines of a solution (each one step, the `#### N` line included)."""
    return [line.strip() for line in text.split("\n") if line.strip()]


def gold_equations(solution: str) -> tuple[list[tuple[int, str, int]], str | None]:
    """((a, op, b) of each equation line, the `#### N` answer) of a reference solution."""
    eqs, answer = [], None
    for line in parse_solution(solution):
        if m := STEP.match(line):
            eqs.append((int(m[1]), m[2], int(m[3])))
        elif m := FINAL.match(line):
            answer = normalize_for_match(m[1])
    return eqs, answer


def step_labels(solution: str, gold: str | None = None, mode: str = "gold") -> list[bool]:
    """One label per line of `solution` (see the module docstring); `gold` (the reference solution) is needed in
    `gold` mode."""
    if mode not in LABEL_MODES:
        raise ValueError(f"unknown step-label mode {mode!r}; valid: {', '.join(LABEL_MODES)}")
    if mode == "gold" and gold is None:
        raise ValueError("gold step labels need the reference solution")
    gold_eqs, gold_answer = gold_equations(gold) if gold else ([], None)
    labels, ok, last, n_eq = [], True, None, 0
    for line in parse_solution(solution):
        if ok and (m := STEP.match(line)):
            a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
            ok = _apply(a, op, b) == c and (mode == "arithmetic" or (n_eq < len(gold_eqs)
                                                                      and gold_eqs[n_eq] == (a, op, b)))
            last, n_eq = c, n_eq + 1
        elif ok and (m := FINAL.match(line)):
            value = normalize_for_match(m[1])
            if mode == "gold":
                ok = n_eq == len(gold_eqs) and value == gold_answer
            else:
                ok = last is not None and value == str(last)
        else:
            ok = False
        labels.append(ok)
    return labels
