"""HumanEval+ / MBPP+ on the io path: evalplus's inputs, expected outputs from the canonical solution's own run.

Every base and plus input is deserialised here (evalplus `mbpp_deserialize_inputs`: JSON has no tuples, sets or
complex numbers), sent to the canonical solution running alone in the sandbox's calls mode, and its outputs become
the cases' expected values (cached per task, `code_io.plans`). A candidate is then compared with them here by
evalplus's rules (`code_cases.holds`, kind "diff": exact, else within atol; 1e-6 for float outputs when the file
gives 0), with evalplus's special oracles: HumanEval/32 must return a root (kind "poly"), MBPP's `_NOT_NONE`
functions are compared on "is not None" (reduced in the sandbox), `_SET_EQ` ones as sets, and Mbpp/164 / Mbpp/295
pass when every output matches the reference or every output is True / 0 (`ORACLES`, checked across the whole run
in `code_io.score_io`). Each input has its own time budget derived from the reference's time on it.
"""

import json

from mixtune.evaluate._plaindata import encode_value
from mixtune.evaluate.code_cases import holds, view_of
from mixtune.evaluate.code_plan import REFERENCE_SLACK, Plan, make_case, slack
from mixtune.evaluate.sandbox import Limits
from mixtune.evaluate.sandbox_io import run_calls

# MBPP+ input deserialisation (evalplus `mbpp_deserialize_inputs`): JSON has no tuples, sets or complex numbers.
MBPP_RULES = {
    "args": [2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630, 726, 740, 744,
             809],
    "nested": [63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780],
    "first_nested": [75, 413, 444, 753],
    "second": [106, 750],
    "sets": [115], "float_complex": [124], "complex": [252], "first_mixed": [278], "dict_values": [722],
    "first": [250, 405, 446, 617, 720, 763, 808, 307],
    "nested_args": [259, 401, 445],
    "all": [580, 615, 791],
}
MBPP_RULE_OF = {n: rule for rule, ids in MBPP_RULES.items() for n in ids}
NOT_NONE = ["check_str", "text_match_three", "text_starta_endb"]
SET_EQ = ["similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly", "larg_nnum",
          "intersection_array", "find_dissimilar", "Diff"]
SPECIAL = {"HumanEval/32": "poly", "Mbpp/164": "always_true", "Mbpp/295": "always_zero"}
ORACLES = {"always_true": True, "always_zero": 0}
"""Run-level oracles: a candidate passes if all its outputs match the reference, or all equal this value."""


def _tuples(x):
    return tuple(_tuples(i) for i in x) if isinstance(x, list) else x


def deserialize(args: list, rule: str) -> list:
    """One input's arguments as Python values (the same rules as the legacy harness's `_mt_deserialize`)."""
    if rule == "args":
        return [tuple(a) for a in args]
    if rule == "nested":
        return [[tuple(b) for b in a] for a in args]
    if rule == "first_nested":
        return [[tuple(b) for b in args[0]]] + args[1:]
    if rule == "second":
        return [args[0], tuple(args[1])] + args[2:]
    if rule == "first":
        return [tuple(args[0])] + args[1:]
    if rule == "nested_args":
        return [tuple(tuple(b) for b in a) for a in args]
    if rule == "sets":
        return [[set(i) if isinstance(i, list) and i else {} for i in args[0]]]
    if rule == "float_complex":
        return [float(args[0]), complex(args[1])]
    if rule == "complex":
        return [complex(args[0])]
    if rule == "first_mixed":
        return [tuple(tuple(i) if isinstance(i, list) else i for i in args[0])] + args[1:]
    if rule == "dict_values":
        return [{k: tuple(v) for k, v in args[0].items()}] + args[1:]
    if rule == "all":
        return list(_tuples(args))
    return args


def plus_plan(example: dict, limits: Limits) -> Plan:
    """Run the canonical solution on every input (sandboxed, calls mode); the io plan, or why there is none."""
    task_id, entry, mbpp = example["task_id"], example["entry_point"], example["format"] == "mbpp+"
    rule = MBPP_RULE_OF.get(int(task_id.split("/")[-1]), "") if mbpp else ""
    reduce = "not_none" if mbpp and entry in NOT_NONE else ""
    view = "set" if mbpp and entry in SET_EQ else ""
    special = SPECIAL.get(task_id, "")
    atol = float(example["atol"] or 0)
    inputs = list(example["base_input"] or []) + list(example["plus_input"] or [])
    args = [encode_value(list(deserialize(raw, rule))) for raw in inputs]
    kwargs = encode_value({})
    calls = [(json.dumps([a, kwargs] + ([reduce] if reduce else []), separators=(",", ":")) + "\n").encode()
             for a in args]
    refs = []

    def collect(k, result) -> bool:
        refs.append(result)
        return result.kind == "value"

    generous = slack(limits, REFERENCE_SLACK)
    run = run_calls(example["reference"], entry, calls, collect, generous, [generous.wall_s] * len(calls))
    if run.phase != "calls" or len(refs) != len(calls) or refs[-1].kind != "value":
        last = refs[-1] if refs else run.load
        why = f"{last.kind}: {last.detail}" if last else run.detail
        return Plan(None, f"reference run on input {len(refs)}: {run.phase}: {why}"[:300])
    kind = "poly" if special == "poly" else "diff"
    cases = []
    for i, (a, ref) in enumerate(zip(args, refs)):
        expected = view_of(view, ref.value)
        tol = {"atol": atol, "xs": inputs[i][0]} if kind == "poly" else atol
        if not holds(kind, view, ref.value, expected, tol):
            return Plan(None, f"input {i + 1}: the canonical solution fails its own oracle")
        cases.append(make_case(f"input {i + 1}", kind, view, a, kwargs, expected, tol, ref.seconds, 0, reduce))
    return Plan(tuple(cases), oracle=special if special in ORACLES else "")
