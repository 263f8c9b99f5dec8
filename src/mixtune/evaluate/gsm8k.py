"""GSM8K scored with lm-evaluation-harness's rules (task `gsm8k`, metadata version 3.0), and the mini-lab math set.

Our own code for their rules (METHODS §10), written from lm_eval/tasks/gsm8k/gsm8k.yaml and
lm_eval/filters/extraction.py (`RegexFilter`) and lm_eval/api/metrics.py (`exact_match_hf_evaluate`):

- strict-match: the first match of `#### (\\-?[0-9\\.\\,]+)` (group 1), stripped; no match -> "[invalid]".
- flexible-extract: `findall` of `(-?[$0-9.,]{2,})|(-?[0-9]+)`, the LAST match (group_select -1), its first
  non-empty group, stripped; no match -> "[invalid]".
- exact_match on the filtered prediction against the *whole* reference answer, both processed the same way:
  `re.sub` each of `,`  `\\$`  `(?s).*#### `  `\\.$` (in that order) with "", then lower-case (ignore_case true,
  ignore_punctuation false), then string equality. So "#### 1,000" in the reference becomes "1000", and a
  prediction "$1,000." becomes "1000".

Only the scoring is lm-eval's; the prompt is ours (chat: the bare question; completion-style: lm-eval's
"Question: ...\\nAnswer:" without few-shot examples), so numbers are comparable in rule, not in prompting.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mixtune.evaluate.base import BenchmarkDataError, Task, iter_jsonl, mean_of, user_messages

RULE = "lm-eval gsm8k strict-match / flexible-extract"
INVALID = "[invalid]"
STRICT_PATTERN = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
# exact_match's regexes_to_ignore, applied in this order to prediction and reference alike.
REGEXES_TO_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")


def regex_filter(text: str, pattern: re.Pattern[str], group_select: int = 0, fallback: str = INVALID) -> str:
    """lm-eval's `RegexFilter` on one response: pick match `group_select` of `findall`, first non-empty group."""
    matches = pattern.findall(text)
    if not matches:
        return fallback
    match = matches[group_select]
    if isinstance(match, tuple):  # several groups: findall gives a tuple; take the first group that matched
        groups = [g for g in match if g]
        if not groups:
            return fallback
        match = groups[0]
    return match.strip()


def extract_strict(completion: str) -> str:
    """strict-match filter: the number after the first "#### ", or "[invalid]"."""
    return regex_filter(completion, STRICT_PATTERN, group_select=0)


def extract_flexible(completion: str) -> str:
    """flexible-extract filter: the last number-like span in the completion, or "[invalid]"."""
    return regex_filter(completion, FLEXIBLE_PATTERN, group_select=-1)


def normalize_for_match(text: str) -> str:
    """exact_match's preprocessing (regexes_to_ignore, then ignore_case), applied to prediction and reference."""
    for pattern in REGEXES_TO_IGNORE:
        text = re.sub(pattern, "", text)
    # lm-eval compares numpy unicode arrays, which drop trailing NUL characters; do the same to agree exactly.
    return text.lower().rstrip("\x00")


def exact_match(prediction: str, reference: str) -> bool:
    """lm-eval gsm8k exact_match: equal strings after `normalize_for_match` on both sides."""
    return normalize_for_match(prediction) == normalize_for_match(reference)


def score_gsm8k(completion: str, reference: str) -> dict[str, Any]:
    """Both lm-eval filters on one completion against a reference answer ("... #### N").

    Returns `passed` (= strict), `result` text, `strict`, `flexible` (bools) and the two extracted strings.
    """
    strict_pred, flexible_pred = extract_strict(completion), extract_flexible(completion)
    strict, flexible = exact_match(strict_pred, reference), exact_match(flexible_pred, reference)
    gold = normalize_for_match(reference)
    if strict:
        result = "passed"
    elif strict_pred == INVALID:
        result = f"failed: no '#### N' answer (flexible {flexible_pred!r}, gold {gold!r})"
    else:
        result = f"failed: answered {strict_pred!r}, gold {gold!r}"
    return {"passed": strict, "result": result, "strict": strict, "flexible": flexible,
            "strict_pred": strict_pred, "flexible_pred": flexible_pred}


class GSM8K(Task):
    """GSM8K test set (1,319 problems) from `<data_dir>/gsm8k/test.jsonl`; ids `gsm8k/test/<0-based line>`."""

    name = "gsm8k"
    ability = "math"
    metric_names = ("strict", "flexible")
    primary_metric = "strict"
    id_prefix = "gsm8k/test/"

    def default_path(self) -> Path:
        return Path(self.data_dir) / "gsm8k" / "test.jsonl"

    def load(self) -> list[dict[str, Any]]:
        path = self.source_path()
        return [self.make_example(f"{self.id_prefix}{i}", obj, f"{path}:{i + 1}")
                for i, obj in iter_jsonl(path)]

    @staticmethod
    def make_example(task_id: str, obj: dict[str, Any], where: str) -> dict[str, Any]:
        """An example from a {question, answer} record; `answer` is the full reference ("... #### N")."""
        if not isinstance(obj.get("question"), str) or not isinstance(obj.get("answer"), str):
            raise BenchmarkDataError(f"{where}: needs string fields 'question' and 'answer'")
        question = obj["question"]
        return {"task_id": task_id, "messages": user_messages(question),
                "prompt_text": f"Question: {question}\nAnswer:", "question": question, "answer": obj["answer"],
                "gold": normalize_for_match(obj["answer"])}

    def score(self, example: dict[str, Any], completion: str) -> dict[str, Any]:
        return score_gsm8k(completion, example["answer"])

    def summarize(self, scored: list[dict[str, Any]]) -> dict[str, Any]:
        """`strict` and `flexible` accuracy over all samples, `n`, and the rule used."""
        return {"strict": mean_of(scored, "strict"), "flexible": mean_of(scored, "flexible"),
                "n": len(scored), "rule": RULE}


class MiniLabMath(GSM8K):
    """Mini-lab math test set `<world_dir>/bench/math_test.jsonl` ({task_id, question, answer "... #### N"})."""

    name = "minilab_math"

    def default_path(self) -> Path:
        return Path(self.world_dir) / "bench" / "math_test.jsonl"

    def load(self) -> list[dict[str, Any]]:
        path = self.source_path()
        examples = []
        for i, obj in iter_jsonl(path):
            if not isinstance(obj.get("task_id"), str):
                raise BenchmarkDataError(f"{path}:{i + 1}: missing string 'task_id'")
            examples.append(self.make_example(obj["task_id"], obj, f"{path}:{i + 1}"))
        return examples
