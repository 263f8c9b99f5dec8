"""Assertion tests -> recorded test cases (with `ast`), and the comparison rule of each case.

A benchmark test such as HumanEval's `def check(candidate): assert candidate([1, 2]) == 3` or MBPP's
`assert f(1) == 2` is rewritten so that every convertible assertion becomes a call
`_mt_case(fn, line, kind, view, args, kwargs, expected, tol)`; the rewritten test then runs, with the canonical
solution, in a sandboxed *reference run* (`code_io.py`), which records for each case the arguments, the test's
own expected value and the canonical solution's output. The candidate later gets only the arguments.

Convertible assertions (X is `candidate(...)`, optionally wrapped in one of `VIEWS`, e.g. `set(f(...))`; the other
side must not mention the candidate):
    X == v, v == X, X != v, X is True/False/None, X is not ..., X (truthy), not X (falsy),
    abs(X - v) < t / <= t (also math.fabs, either order inside), math.isclose(X, v, rel_tol=..., abs_tol=...).
Other statements of the test (imports, assignments, loops around assertions, helper functions) are kept and run in
the reference run; assertion messages are dropped (they only run once an assertion has failed). A test that uses the candidate any other way (an assignment from it, a nested call, an assert
that does not call it) is not converted: `Conversion.reason` says why, and the task keeps the legacy harness.
"""

import ast
import math
from typing import Any

from mixtune.evaluate._plaindata import _unflooded

VIEWS = ("set", "frozenset", "sorted", "tuple", "list")
KINDS = ("eq", "ne", "is", "is_not", "truthy", "falsy", "abs_lt", "abs_le", "isclose", "diff", "poly")


class NotConvertible(ValueError):
    """The test uses the candidate in a way that cannot be turned into (arguments, expected value) cases."""


def _is_call_of(node: ast.AST, name: str) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name


def _mentions(node: ast.AST, name: str) -> int:
    return sum(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node))


def _candidate(node: ast.AST, name: str) -> tuple[str, ast.Call] | None:
    """(view, call) when `node` is `name(...)` or `VIEW(name(...))` and the arguments do not mention `name`."""
    view = ""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in VIEWS
            and len(node.args) == 1 and not node.keywords and _is_call_of(node.args[0], name)):
        view, node = node.func.id, node.args[0]
    if not _is_call_of(node, name):
        return None
    if sum(_mentions(a, name) for a in [*node.args, *node.keywords]):
        return None
    return view, node


def _abs_operand(node: ast.AST) -> ast.AST | None:
    """X - v inside abs(...) or math.fabs(...)."""
    if not (isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords):
        return None
    func = node.func
    is_abs = (isinstance(func, ast.Name) and func.id == "abs") or (
        isinstance(func, ast.Attribute) and func.attr == "fabs" and isinstance(func.value, ast.Name)
        and func.value.id == "math")
    return node.args[0] if is_abs and isinstance(node.args[0], ast.BinOp) and isinstance(
        node.args[0].op, ast.Sub) else None


def _one_side(a: ast.AST, b: ast.AST, name: str) -> tuple[str, ast.Call, ast.AST] | None:
    """(view, candidate call, other side) when exactly one of `a`, `b` is the candidate call."""
    for x, other in ((a, b), (b, a)):
        found = _candidate(x, name)
        if found and not _mentions(other, name):
            return found[0], found[1], other
    return None


def _parts(test: ast.AST, name: str) -> tuple[str, str, ast.Call, ast.AST, ast.AST] | None:
    """(kind, view, call, expected, tol) of a convertible assertion test, else None."""
    none = ast.Constant(None)
    found = _candidate(test, name)
    if found:
        return "truthy", found[0], found[1], none, none
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and (found := _candidate(test.operand, name)):
        return "falsy", found[0], found[1], none, none
    if isinstance(test, ast.Call) and isinstance(test.func, ast.Attribute) and test.func.attr == "isclose" \
            and len(test.args) == 2 and (side := _one_side(*test.args, name)) \
            and all(k.arg in ("rel_tol", "abs_tol") and not _mentions(k.value, name) for k in test.keywords):
        tol = ast.Dict([ast.Constant(k.arg) for k in test.keywords], [k.value for k in test.keywords])
        return "isclose", side[0], side[1], side[2], tol
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    op, left, right = test.ops[0], test.left, test.comparators[0]
    if isinstance(op, (ast.Eq, ast.NotEq)) and (side := _one_side(left, right, name)):
        return ("eq" if isinstance(op, ast.Eq) else "ne"), side[0], side[1], side[2], none
    if isinstance(op, (ast.Is, ast.IsNot)) and isinstance(right, ast.Constant) \
            and type(right.value) in (bool, type(None)) and (found := _candidate(left, name)):
        return ("is" if isinstance(op, ast.Is) else "is_not"), found[0], found[1], right, none
    diff = _abs_operand(left)
    if isinstance(op, (ast.Lt, ast.LtE)) and diff is not None and not _mentions(right, name) \
            and (side := _one_side(diff.left, diff.right, name)):
        return ("abs_lt" if isinstance(op, ast.Lt) else "abs_le"), side[0], side[1], side[2], right
    return None


def _case_call(fn: str, line: int, parts: tuple[str, str, ast.Call, ast.AST, ast.AST]) -> ast.Expr:
    kind, view, call, expected, tol = parts
    args = ast.Tuple([*call.args], ast.Load())
    kwargs = ast.Dict([ast.Constant(k.arg) if k.arg else None for k in call.keywords],
                      [k.value for k in call.keywords])
    node = ast.Call(ast.Name("_mt_case", ast.Load()),
                    [ast.Name(fn, ast.Load()), ast.Constant(line), ast.Constant(kind), ast.Constant(view), args,
                     kwargs, expected, tol], [])
    return ast.Expr(node)


class _Rewriter(ast.NodeTransformer):
    """Replaces the convertible assertions about `name`; counts them and notes the first one it cannot take."""

    def __init__(self, name: str) -> None:
        self.name, self.converted, self.problem = name, 0, ""

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        if not _mentions(node.test, self.name):
            if not (isinstance(node.test, ast.Constant) and node.test.value):
                self.problem = self.problem or f"line {node.lineno}: an assertion that does not call the candidate"
            return node
        parts = _parts(node.test, self.name)
        if parts is None:
            self.problem = self.problem or f"line {node.lineno}: `{ast.unparse(node.test)[:80]}` is not convertible"
            return node
        self.converted += 1
        return ast.copy_location(_case_call(self.name, node.lineno, parts), node)


def rewrite(tree: ast.AST, name: str, scope: list[ast.stmt]) -> str:
    """Rewrite the assertions in `scope` (statements of `tree`) in place; '' or the reason it cannot be done."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            node.msg = None  # evaluated only once the assertion has failed (HumanEval/77 calls the candidate there)
    uses = sum(_mentions(stmt, name) for stmt in scope)
    rewriter = _Rewriter(name)
    scope[:] = [rewriter.visit(stmt) for stmt in scope]
    if rewriter.problem:
        return rewriter.problem
    if not rewriter.converted:
        return "no assertion calls the candidate"
    if uses != rewriter.converted:
        return "the candidate is used outside the converted assertions"
    ast.fix_missing_locations(tree)
    return ""


def humaneval_reference(prompt: str, solution: str, test: str, entry: str) -> tuple[str, str]:
    """(reference program, reason) for a HumanEval-format task (`def check(candidate)`); reason '' if converted."""
    try:
        tree = ast.parse(test)
    except SyntaxError as exc:
        return "", f"test does not parse: {exc}"
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check" and n.args.args]
    if len(checks) != 1:
        return "", "no single `def check(candidate)`"
    check = checks[0]
    name = check.args.args[0].arg
    reason = rewrite(tree, name, check.body)
    if reason:
        return "", reason
    return f"{prompt}{solution}\n\n{ast.unparse(tree)}\n\ncheck({entry})\n", ""


def mbpp_reference(solution: str, test_imports: list[str], test_list: list[str], entry: str) -> tuple[str, str]:
    """(reference program, reason) for an MBPP task (top-level asserts calling `entry`)."""
    try:
        tree = ast.parse("\n".join([*test_imports, *test_list]))
    except SyntaxError as exc:
        return "", f"test does not parse: {exc}"
    reason = rewrite(tree, entry, tree.body)
    if reason:
        return "", reason
    return f"{solution}\n\n{ast.unparse(tree)}\n", ""


def view_of(view: str, out: Any) -> Any:
    """The test's wrapper (set(...), sorted(...), ...) applied to plain data; sets guarded against hash flooding."""
    if view in ("set", "frozenset"):
        return (set if view == "set" else frozenset)(_unflooded(list(out)))
    return {"": lambda x: x, "sorted": sorted, "tuple": tuple, "list": list}[view](out)


def _is_floats(x: Any) -> bool:
    return type(x) is float or (type(x) in (list, tuple) and len(x) > 0 and all(type(i) is float for i in x))


def _close(out: Any, exp: Any, atol: float) -> bool:
    """evalplus's approximate equality: recursive over lists/tuples, |out - exp| <= atol + 1e-7 |exp| for numbers."""
    if isinstance(exp, (list, tuple)):
        return isinstance(out, (list, tuple)) and len(out) == len(exp) and all(
            _close(o, e, atol) for o, e in zip(out, exp))
    if isinstance(out, (int, float)) and isinstance(exp, (int, float)):
        if math.isnan(exp) or math.isnan(out):
            return math.isnan(exp) and math.isnan(out)
        return out == exp or abs(out - exp) <= atol + 1e-7 * abs(exp)
    return out == exp


def _diff(value: Any, expected: Any, atol: float) -> bool:
    """The differential rule (evalplus): exact, else within atol (1e-6 for float outputs when atol is 0)."""
    if value == expected:
        return True
    tol = atol if atol or not _is_floats(expected) else 1e-6
    return bool(tol) and _close(value, expected, tol)


def holds(kind: str, view: str, out: Any, expected: Any, tol: Any) -> bool:
    """Whether a case's assertion holds for the candidate's output `out` (plain data, decoded in this process).

    Same rule as the assertion it came from; any error while applying it (a wrong type, say) means it does not.
    """
    try:
        value = view_of(view, out)
        if kind in _RULES:
            return bool(_RULES[kind](value, expected, tol))
    except (TypeError, ValueError, OverflowError, ZeroDivisionError, RecursionError, MemoryError):
        return False
    raise ValueError(f"unknown case kind {kind!r}; known: {', '.join(KINDS)}")


def _poly(value: Any, expected: Any, tol: dict) -> bool:
    """HumanEval/32: the output must be a root of the input polynomial (and match the reference as "diff")."""
    root = sum(c * math.pow(value, j) for j, c in enumerate(tol["xs"]))
    return abs(root) <= tol["atol"] and _diff(value, expected, tol["atol"])


_RULES = {
    "eq": lambda v, e, t: v == e,
    "ne": lambda v, e, t: v != e,
    "is": lambda v, e, t: v is e,
    "is_not": lambda v, e, t: v is not e,
    "truthy": lambda v, e, t: bool(v),
    "falsy": lambda v, e, t: not v,
    "abs_lt": lambda v, e, t: abs(v - e) < t,
    "abs_le": lambda v, e, t: abs(v - e) <= t,
    "isclose": lambda v, e, t: math.isclose(v, e, **t),
    "diff": _diff,
    "poly": _poly,
}
