"""Arithmetic word problems (GSM8K style, 1-3 steps, integers) and arithmetic statements for pre-training.

A problem is a start (a count, or boxes × items per box), zero to two additions/subtractions, and optionally a final
fair share (exact division). The solution is one equation per step and `#### N`, e.g. "4 * 6 = 24\\n24 + 5 = 29\\n
#### 29": short and regular, because a ~1M-parameter model must learn it (DESIGN.md, "What a mini-lab needs").
A problem's `signature` is its equation list; held-out and training problems never share one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mixtune.world import pools

ITEMS = ("apples", "pens", "books", "marbles", "cards", "stamps", "shells", "coins", "cookies", "stickers",
         "eggs", "candles", "buttons", "flowers", "toys", "beads")
ADD_TEMPLATES = ("{name} buys {n} more {items}.", "{name} finds {n} more {items}.",
                 "{other} gives {name} {n} more {items}.", "{name} gets {n} more {items} as a gift.")
SUB_TEMPLATES = ("{name} gives {n} {items} to {other}.", "{name} loses {n} {items}.", "{name} sells {n} {items}.",
                 "{name} uses {n} {items}.")
START_TEMPLATES = ("{name} has {a} {items}.", "{name} has {a} {items} at home.", "{name} starts with {a} {items}.")
PRODUCT_TEMPLATES = ("{name} has {a} boxes with {b} {items} in each box.",
                     "{name} buys {a} bags of {items} with {b} {items} in each bag.")
ASK_TOTAL = "How many {items} does {name} have now?"
ASK_SHARE = "{name} shares the {items} equally among {d} friends. How many {items} does each friend get?"


@dataclass(frozen=True)
class MathProblem:
    """A word problem; `signature` = its equations ((a, op, b), ...), the key of train/test disjointness."""

    question: str
    solution: str
    answer: int
    signature: tuple[tuple[int, str, int], ...]

    @property
    def gsm8k_answer(self) -> str:
        """The GSM8K `answer` field: the solution ending in `#### N`."""
        return self.solution


def _apply(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]


def _equations(rng: random.Random) -> tuple[list[tuple[int, str, int]], int, bool]:
    """Draw the equations of a 1-3 step problem: (equations, start value, starts with a product?)."""
    while True:
        product = rng.random() < 0.35
        n_addsub = rng.randint(0, 2)
        share = rng.random() < 0.3
        if not 1 <= product + n_addsub + share <= 3:
            continue
        eqs: list[tuple[int, str, int]] = []
        value = rng.randint(2, 60)
        if product:
            a, b = rng.randint(2, 9), rng.randint(2, 12)
            eqs.append((a, "*", b))
            value = a * b
        start = value
        for _ in range(n_addsub):
            if rng.random() < 0.5 or value < 3:
                n = rng.randint(1, 50)
                eqs.append((value, "+", n))
            else:
                n = rng.randint(1, value - 1)
                eqs.append((value, "-", n))
            value = _apply(*eqs[-1])
        if share:
            divisors = [d for d in range(2, 10) if value % d == 0]
            if not divisors:
                continue
            eqs.append((value, "/", rng.choice(divisors)))
        return eqs, start, product


def make_problem(rng: random.Random) -> MathProblem:
    """One random word problem with its equation-per-line solution."""
    eqs, start, product = _equations(rng)
    name = rng.choice(pools.FIRST_NAMES_FEMALE + pools.FIRST_NAMES_MALE)
    other = rng.choice([n for n in pools.FIRST_NAMES_FEMALE + pools.FIRST_NAMES_MALE if n != name])
    items = rng.choice(ITEMS)
    fill = {"name": name, "other": other, "items": items}
    if product:
        parts = [rng.choice(PRODUCT_TEMPLATES).format(a=eqs[0][0], b=eqs[0][2], **fill)]
        rest = eqs[1:]
    else:
        parts = [rng.choice(START_TEMPLATES).format(a=start, **fill)]
        rest = eqs
    for a, op, b in rest:
        if op == "+":
            parts.append(rng.choice(ADD_TEMPLATES).format(n=b, **fill))
        elif op == "-":
            parts.append(rng.choice(SUB_TEMPLATES).format(n=b, **fill))
    if eqs[-1][1] == "/":
        parts.append(ASK_SHARE.format(d=eqs[-1][2], **fill))
    else:
        parts.append(ASK_TOTAL.format(**fill))
    answer = _apply(*eqs[-1])
    lines = [f"{a} {op} {b} = {_apply(a, op, b)}" for a, op, b in eqs]
    solution = "\n".join(lines + [f"#### {answer}"])
    return MathProblem(question=" ".join(parts), solution=solution, answer=answer, signature=tuple(eqs))


def make_problems(n: int, rng: random.Random, exclude: set | None = None) -> list[MathProblem]:
    """`n` problems with distinct signatures, none of them in `exclude`.

    Raises RuntimeError if the generator keeps repeating (n far beyond the problem space).
    """
    taken = set(exclude or ())
    out: list[MathProblem] = []
    misses = 0
    while len(out) < n:
        p = make_problem(rng)
        if p.signature in taken:
            misses += 1
            if misses > 50 * n + 1000:
                raise RuntimeError(f"cannot draw {n} distinct math problems")
            continue
        taken.add(p.signature)
        out.append(p)
    return out


def arithmetic_statement(rng: random.Random) -> str:
    """A pre-training document: one to three equations, in symbols or words ("17 + 25 = 42.")."""
    eqs, _, _ = _equations(rng)
    if rng.random() < 0.25:
        a, op, b = eqs[0]
        word = {"+": "sum", "-": "difference", "*": "product", "/": "quotient"}[op]
        return f"The {word} of {a} and {b} is {_apply(a, op, b)}."
    text = [f"{a} {op} {b} = {_apply(a, op, b)}." for a, op, b in eqs]
    return " ".join(text) if rng.random() < 0.5 else "\n".join(text)
