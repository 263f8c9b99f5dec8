"""Mini-lab preference pairs: for each prompt a chosen answer that is right and a rejected one that is wrong in a way
the ability's own scorer detects.

- math: the worked solution vs the same solution with one wrong step (the error carried through the later steps, so
  the final answer is wrong too) or with right steps and a wrong final answer (GSM8K strict-match fails);
- code: the canonical body vs a mutant (a parameter changed, a primitive swapped for another of its kind, or a step
  dropped) that fails the hidden tests. The check runs our own generated programs in-process with `exec`
  (`codetasks.passes`): never model output, which only ever runs in the evaluation sandbox; tests/test_world.py
  runs both answers through the sandbox as well;
- instructions: the constructive response that follows every instruction vs a response built on the same topic with
  one instruction inverted (relation flipped, bullet count off by one) or left out, kept only when the IFEval-rule
  self-check (`ifcheck.follows`) says it breaks at least one instruction.

Prompts are drawn with their own seeded generators and exclude the held-out benchmarks' keys (math: equations;
code: primitives + parameters; instructions: base request + instruction ids), like the SFT sources.
"""

from __future__ import annotations

import random
from typing import Any

from mixtune.world import arithmetic, codetasks, ifcheck, instruct
from mixtune.world.arithmetic import MathProblem

DELTAS = tuple(d for d in range(-9, 10) if d)
RELATIONS = {"at least": "less than", "less than": "at least"}


def _record(domain: str, file: str, i: int, prompt: str, chosen: str, rejected: str, flaw: str,
            **extra: Any) -> dict[str, Any]:
    """A pair record of the data contract (docs/CONTRACTS.md); id `minilab/<file>/train/<i>`."""
    return {"id": f"minilab/{file}/train/{i}", "source": f"minilab/{file}", "ability": "preference",
            "task_type": 0, "domain": domain, "flaw": flaw, "messages": [{"role": "user", "content": prompt}],
            "chosen": chosen, "rejected": rejected, "weight": 1.0, **extra}


# --------------------------------------------------------------------------------------------------------- math
def _apply(a: int, op: str, b: int) -> int | None:
    """The step's result, None when it leaves the problem space (negative, inexact division)."""
    if op == "/" and a % b:
        return None
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    return value if value >= 0 else None


def wrong_step(problem: MathProblem, rng: random.Random) -> str | None:
    """The solution with step k's result off by a small delta and every later step computed from it; None when no
    delta keeps the later steps valid (exact divisions, no negatives)."""
    eqs = list(problem.signature)
    k = rng.randrange(len(eqs))
    a, op, b = eqs[k]
    value = _apply(a, op, b)
    for delta in rng.sample(DELTAS, len(DELTAS)):
        wrong = value + delta
        if wrong < 0:
            continue
        lines, current = [f"{a} {op} {b} = {wrong}"], wrong
        for _, later_op, later_b in eqs[k + 1:]:
            nxt = _apply(current, later_op, later_b)
            if nxt is None:
                break
            lines.append(f"{current} {later_op} {later_b} = {nxt}")
            current = nxt
        else:
            head = [f"{x} {o} {y} = {_apply(x, o, y)}" for x, o, y in eqs[:k]]
            return "\n".join(head + lines + [f"#### {current}"])
    return None


def wrong_answer(problem: MathProblem, rng: random.Random) -> str:
    """The right steps, then a wrong number after ####."""
    candidates = [problem.answer + d for d in DELTAS if problem.answer + d >= 0]
    steps = problem.solution.rsplit("\n", 1)[0]
    return f"{steps}\n#### {rng.choice(candidates)}"


def math_pairs(n: int, rng: random.Random, exclude: set) -> list[dict]:
    """`n` math pairs on problems whose signatures are not in `exclude`."""
    out = []
    for i, p in enumerate(arithmetic.make_problems(n, rng, exclude)):
        rejected, flaw = (wrong_step(p, rng), "wrong step") if rng.random() < 0.5 else (None, "")
        if rejected is None:
            rejected, flaw = wrong_answer(p, rng), "wrong final answer"
        out.append(_record("math", "preference_math", i, p.question, p.solution, rejected, flaw, answer=str(p.answer)))
    return out


# --------------------------------------------------------------------------------------------------------- code
def _mutants(key: tuple, rng: random.Random) -> list[tuple[tuple, str]]:
    """Candidate wrong chains (key, what changed), in a seeded order."""
    out = []
    for k, (name, param) in enumerate(key):
        prim = codetasks.BY_NAME[name]
        out += [(key[:k] + ((name, p),) + key[k + 1:], f"parameter of {name} changed") for p in prim.params
                if p != param]
        out += [(key[:k] + ((other.name, rng.choice(other.params)),) + key[k + 1:], f"{name} replaced by {other.name}")
                for other in codetasks.PRIMITIVES if other.kind == prim.kind and other.name != name]
        if k < len(key) - 1:
            out.append((key[:k] + key[k + 1:], f"step {name} dropped"))
    rng.shuffle(out)
    return out


def failing_body(task: codetasks.CodeTask, rng: random.Random, tries: int = 30) -> tuple[str, str] | None:
    """(body, flaw) of a mutant that fails the task's tests, or None. Runs our own generated programs in-process."""
    for key, flaw in _mutants(task.key, rng)[:tries]:
        body = codetasks.body_of(key)
        if body != task.completion and not codetasks.passes(task.prompt + body, task.test, task.entry_point):
            return body, flaw
    return None


def code_pairs(n: int, rng: random.Random, exclude: set) -> list[dict]:
    """`n` code pairs on tasks whose keys are not in `exclude`; the chosen body passes, the rejected one fails."""
    out: list[dict] = []
    taken = set(exclude)
    while len(out) < n:
        for task in codetasks.make_tasks(n - len(out), rng, taken):
            taken.add(task.key)
            found = failing_body(task, rng)
            if found is None:  # every mutant we tried still passes: the tests do not pin this chain down; skip it
                continue
            assert codetasks.passes(task.program, task.test, task.entry_point), task.entry_point
            out.append(_record("code", "preference_code", len(out), task.prompt, task.completion, found[0],
                               found[1], tests=task.test, entry_point=task.entry_point))
    return out


# ------------------------------------------------------------------------------------------------- instructions
def _inverted(spec: dict[str, dict], iid: str) -> dict[str, dict]:
    """The instructions with `iid` turned into its opposite (relation flipped, bullets off by one) or left out."""
    spec = dict(spec)
    kw = spec.pop(iid)
    if "relation" in kw:
        spec[iid] = {**kw, "relation": RELATIONS[kw["relation"]]}
    elif "num_bullets" in kw:
        spec[iid] = {**kw, "num_bullets": kw["num_bullets"] + 1}
    return spec


def violating_response(ex: instruct.InstructExample, rng: random.Random, tries: int = 20) -> tuple[str, str] | None:
    """(response, flaw) on the example's topic that breaks at least one of its instructions, or None."""
    spec = dict(zip(ex.instruction_ids, ex.kwargs))
    for _ in range(tries):
        iid = rng.choice(ex.instruction_ids)
        text = instruct.build_response(rng, ex.topic, _inverted(spec, iid))
        verdicts = ifcheck.follows(text, list(ex.instruction_ids), list(ex.kwargs))
        if not all(verdicts):
            return text, "violates " + ", ".join(i for i, ok in zip(ex.instruction_ids, verdicts) if not ok)
    return None


def instruct_pairs(n: int, rng: random.Random, exclude: set) -> list[dict]:
    """`n` instruction pairs on prompts whose keys are not in `exclude`."""
    out: list[dict] = []
    prompts: set[str] = set()
    while len(out) < n:
        ex = instruct.make_example(rng, exclude)
        found = None if ex.prompt in prompts else violating_response(ex, rng)
        if found is None:
            continue
        prompts.add(ex.prompt)
        out.append(_record("general", "preference_instruct", len(out), ex.prompt, ex.response, found[0], found[1],
                           instruction_ids=list(ex.instruction_ids), kwargs=list(ex.kwargs)))
    return out
