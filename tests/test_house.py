"""The house: the import graph of src/mixtune (every import, module-level or inside a function) has no circle and no
arrow from a later pipeline floor into an earlier one (STYLE.md: world → data → model → train → evaluate →
study/report; train may call evaluate; the ground floor imports nothing above it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
GROUND = ("mixtune", "mixtune.config", "mixtune.runs", "mixtune.results", "mixtune.jsonl", "mixtune.cliutil",
          "mixtune.errors")
FLOORS = {"world": 1, "data": 2, "model": 3, "train": 4, "evaluate": 5, "study": 6, "analysis": 6, "serve": 7}
TOP = ("mixtune.cli", "mixtune.demo", "mixtune.__main__")
ALLOWED_UP = {("train", "evaluate")}  # "train may call evaluate" (a stage scores abilities; RL rewards reuse scorers)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def resolve(name: str) -> str | None:
    """The mixtune module a dotted import name refers to (the longest known prefix), else None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(mod: str) -> set[str]:
    tree = ast.parse(MODULES[mod].read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for name in names:
            if name.startswith("mixtune") and (target := resolve(name)) and target != mod:
                out.add(target)
    return out


GRAPH = {mod: imports_of(mod) for mod in MODULES}


def floor(mod: str) -> tuple[int, str]:
    if mod in TOP:
        return 99, "top"
    if any(mod == g or mod.startswith(g + ".") for g in GROUND if g != "mixtune") or mod == "mixtune":
        return 0, "ground"
    part = mod.split(".")[1]
    return FLOORS[part], part


def test_every_module_is_on_a_known_floor():
    unknown = [m for m in MODULES if m not in TOP and floor(m)[1] not in ("ground", *FLOORS)]
    assert not unknown


def test_no_import_points_backward():
    wrong = []
    for mod, targets in GRAPH.items():
        level, name = floor(mod)
        for target in targets:
            t_level, t_name = floor(target)
            if t_level > level and (name, t_name) not in ALLOWED_UP:
                wrong.append(f"{mod} ({name}) imports {target} ({t_name})")
    assert not wrong, "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    # a package's __init__ re-exporting its own submodules is not a circle between floors
    graph = {m: {t for t in ts if not (m.startswith(t + ".") and MODULES[t].name == "__init__.py")}
             for m, ts in GRAPH.items()}
    assert _cycles(graph) == []


def test_the_checks_can_fail():
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert floor("mixtune.evaluate.runner") > floor("mixtune.train.run")


@pytest.mark.parametrize("kind", ["data format", "chat template", "adapter", "strategy", "stage kind", "benchmark"])
def test_registry_names_live_once_and_are_checked(kind):
    from mixtune.config import check_name, registry_names

    names = registry_names(kind)
    assert names and check_name(kind, names[-1]) == names[-1]
    with pytest.raises(ValueError, match=f"unknown {kind} 'nope'; valid: .*{names[-1]}"):
        check_name(kind, "nope")
