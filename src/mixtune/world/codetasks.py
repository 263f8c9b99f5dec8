"""Python function tasks in HumanEval format, built by composing 2-3 parameterised primitives.

Templated one-step tasks whose families appear in pre-training saturate at 100% (DESIGN.md), so a task chains
primitives ("keep the even numbers, then square each, then return the sum") and pre-training only sees single
primitives. Each primitive is a docstring phrase, one line of code and a Python reference function; hidden tests
are computed with the reference functions and every canonical solution is checked against its own tests.
A task's `key` (primitive names + parameters) is the key of train/test disjointness.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LETTERS = "abcdeilmnorstu"


@dataclass(frozen=True)
class Primitive:
    """One step: `kind` is list/list_reduce/str/str_reduce; `doc` and `code` are format strings of `p`."""

    name: str
    kind: str
    doc: str
    code: str
    fn: Callable[[Any, Any], Any]
    params: tuple = (None,)


PRIMITIVES: tuple[Primitive, ...] = (
    Primitive("even", "list", "keep only the even numbers", "[x for x in nums if x % 2 == 0]",
              lambda v, p: [x for x in v if x % 2 == 0]),
    Primitive("odd", "list", "keep only the odd numbers", "[x for x in nums if x % 2 == 1]",
              lambda v, p: [x for x in v if x % 2 == 1]),
    Primitive("above", "list", "keep only the numbers greater than {p}", "[x for x in nums if x > {p}]",
              lambda v, p: [x for x in v if x > p], tuple(range(1, 10))),
    Primitive("add", "list", "add {p} to each number", "[x + {p} for x in nums]",
              lambda v, p: [x + p for x in v], tuple(range(1, 10))),
    Primitive("times", "list", "multiply each number by {p}", "[x * {p} for x in nums]",
              lambda v, p: [x * p for x in v], (2, 3, 4, 5)),
    Primitive("square", "list", "square each number", "[x * x for x in nums]", lambda v, p: [x * x for x in v]),
    Primitive("reverse", "list", "reverse the list", "nums[::-1]", lambda v, p: v[::-1]),
    Primitive("sort", "list", "sort the numbers in ascending order", "sorted(nums)", lambda v, p: sorted(v)),
    Primitive("first", "list", "keep only the first {p} numbers", "nums[:{p}]", lambda v, p: v[:p], (2, 3, 4)),
    Primitive("total", "list_reduce", "return the sum", "sum(nums)", lambda v, p: sum(v)),
    Primitive("largest", "list_reduce", "return the largest number (0 if there is none)", "max(nums, default=0)",
              lambda v, p: max(v, default=0)),
    Primitive("size", "list_reduce", "return how many numbers are left", "len(nums)", lambda v, p: len(v)),
    Primitive("flip", "str", "reverse the string", "s[::-1]", lambda v, p: v[::-1]),
    Primitive("upper", "str", "uppercase every character", "s.upper()", lambda v, p: v.upper()),
    Primitive("alternate", "str", "uppercase every second character (the 2nd, the 4th, ...)",
              '"".join(c.upper() if i % 2 == 1 else c for i, c in enumerate(s))',
              lambda v, p: "".join(c.upper() if i % 2 == 1 else c for i, c in enumerate(v))),
    Primitive("swap", "str", "replace every {p[0]} with {p[1]}", 's.replace("{p[0]}", "{p[1]}")',
              lambda v, p: v.replace(p[0], p[1]), tuple((a, b) for a in "aeio" for b in "xyz")),
    Primitive("drop", "str", "remove every {p}", 's.replace("{p}", "")', lambda v, p: v.replace(p, ""),
              tuple("aeiolnrst")),
    Primitive("double", "str", "repeat every character twice", '"".join(c + c for c in s)',
              lambda v, p: "".join(c + c for c in v)),
    Primitive("length", "str_reduce", "return the length", "len(s)", lambda v, p: len(v)),
    Primitive("tally", "str_reduce", "return how many times {p} appears", 's.count("{p}")',
              lambda v, p: v.count(p), tuple("aeiolnrst")),
)
BY_NAME = {p.name: p for p in PRIMITIVES}
# Primitive names build entry points, so none may shadow a builtin the code lines call (sum, max, len, sorted).
# The first of a pair makes the second pointless or always empty (the string parameters are lowercase letters).
CONFLICTS = {("even", "odd"), ("odd", "even"), ("sort", "reverse"), ("upper", "alternate"), ("alternate", "upper"),
             ("upper", "swap"), ("upper", "drop"), ("upper", "tally")}


@dataclass(frozen=True)
class CodeTask:
    """A HumanEval-format task; `completion` is the canonical body (indented, newline-terminated)."""

    key: tuple
    entry_point: str
    prompt: str
    completion: str
    test: str

    @property
    def program(self) -> str:
        """prompt + completion: the whole canonical function."""
        return self.prompt + self.completion


def _draw_steps(rng: random.Random, n_steps: int) -> list[tuple[Primitive, Any]]:
    """A type-consistent chain of `n_steps` (primitive, parameter) pairs without repeats or conflicts."""
    domain = rng.choice(("list", "list", "str"))
    while True:
        reduce_last = rng.random() < 0.5
        maps = [p for p in PRIMITIVES if p.kind == domain]
        names = [p.name for p in rng.sample(maps, n_steps - reduce_last)]
        if reduce_last:
            names.append(rng.choice([p.name for p in PRIMITIVES if p.kind == domain + "_reduce"]))
        if any(pair in CONFLICTS for pair in itertools.pairwise(names)):
            continue
        return [(BY_NAME[n], rng.choice(BY_NAME[n].params)) for n in names]


def _docstring(steps: list[tuple[Primitive, Any]]) -> str:
    phrases = [prim.doc.format(p=param) for prim, param in steps]
    text = ", then ".join(phrases)
    if steps[-1][0].kind in ("list", "str"):
        text += ", and return the result"
    return text[0].upper() + text[1:] + "."


def _domain(steps: list[tuple[Primitive, Any]]) -> str:
    """"list" or "str": the input type of the chain."""
    return steps[0][0].kind.split("_")[0]


def _signature(entry: str, steps: list[tuple[Primitive, Any]]) -> str:
    arg = "nums: list[int]" if _domain(steps) == "list" else "s: str"
    last = steps[-1][0].kind
    ret = {"list": "list[int]", "str": "str"}.get(last, "int")
    return f"def {entry}({arg}) -> {ret}:"


def _body(steps: list[tuple[Primitive, Any]]) -> str:
    var = "nums" if _domain(steps) == "list" else "s"
    lines = [f"    {var} = {prim.code.format(p=param)}" for prim, param in steps[:-1]]
    prim, param = steps[-1]
    lines.append(f"    return {prim.code.format(p=param)}")
    return "\n".join(lines) + "\n"


def body_of(key: tuple) -> str:
    """The function body of a chain given as a task key ((primitive name, parameter), ...)."""
    return _body([(BY_NAME[name], param) for name, param in key])


def _random_input(rng: random.Random, domain: str) -> Any:
    if domain == "list":
        return [rng.randint(0, 20) for _ in range(rng.randint(3, 7))]
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(4, 9)))


def _run(steps: list[tuple[Primitive, Any]], value: Any) -> Any:
    for prim, param in steps:
        value = prim.fn(value, param)
    return value


def _tests(rng: random.Random, steps: list[tuple[Primitive, Any]], n: int = 4) -> str | None:
    """`def check(candidate)` with `n` asserts on distinct inputs, not all with the same output.

    None when 50 draws all gave one output (a chain that is nearly constant makes a useless task).
    """
    domain = _domain(steps)
    for _ in range(50):
        inputs = []
        while len(inputs) < n:
            x = _random_input(rng, domain)
            if x not in inputs:
                inputs.append(x)
        outputs = [_run(steps, x) for x in inputs]
        if len({repr(o) for o in outputs}) > 1:
            break
    else:
        return None
    lines = [f"    assert candidate({x!r}) == {y!r}" for x, y in zip(inputs, outputs)]
    return "def check(candidate):\n" + "\n".join(lines) + "\n"


def build_task(steps: list[tuple[Primitive, Any]], rng: random.Random) -> CodeTask | None:
    """The HumanEval task of a chain of steps, hidden tests drawn from `rng`; None if no test can tell inputs apart."""
    entry = "_".join(prim.name for prim, _ in steps)
    prompt = f'{_signature(entry, steps)}\n    """{_docstring(steps)}"""\n'
    key = tuple((prim.name, param) for prim, param in steps)
    test = _tests(rng, steps)
    if test is None:
        return None
    return CodeTask(key=key, entry_point=entry, prompt=prompt, completion=_body(steps), test=test)


def make_tasks(n: int, rng: random.Random, exclude: set | None = None) -> list[CodeTask]:
    """`n` tasks of 2-3 composed primitives with distinct keys, none in `exclude`."""
    taken = set(exclude or ())
    out: list[CodeTask] = []
    misses = 0
    while len(out) < n:
        steps = _draw_steps(rng, rng.choice((2, 2, 3)))
        key = tuple((prim.name, param) for prim, param in steps)
        task = None if key in taken else build_task(steps, rng)
        if task is None:
            misses += 1
            if misses > 50 * n + 1000:
                raise RuntimeError(f"cannot draw {n} distinct code tasks")
            continue
        taken.add(key)
        out.append(task)
    return out


def snippet(rng: random.Random) -> str:
    """A pre-training document: one primitive as a function, sometimes with an example assert."""
    prim = rng.choice(PRIMITIVES)
    steps = [(prim, rng.choice(prim.params))]
    if prim.kind.endswith("_reduce"):  # a reducer alone takes the raw input
        text = prim.doc.format(p=steps[0][1])
    else:
        text = prim.doc.format(p=steps[0][1]) + " and return the result"
    entry = prim.name if rng.random() < 0.5 else f"{prim.name}_{rng.choice(('values', 'items', 'it', 'all'))}"
    code = f'{_signature(entry, steps)}\n    """{text[0].upper() + text[1:]}."""\n{_body(steps)}'
    if rng.random() < 0.5:
        x = _random_input(rng, _domain(steps))
        code += f"\n\nassert {entry}({x!r}) == {_run(steps, x)!r}\n"
    return code


def passes(program: str, test: str, entry_point: str) -> bool:
    """Run our own trusted program against its tests in a fresh namespace (no sandbox: never model output)."""
    namespace: dict[str, Any] = {}
    try:
        source = program + "\n" + test + f"\ncheck({entry_point})\n"
        exec(compile(source, "<task>", "exec"), namespace)  # noqa: S102 -- our own generated programs only
    except Exception:  # noqa: BLE001 -- a failing assert or any error both mean "does not pass"
        return False
    return True
