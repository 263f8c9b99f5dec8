"""Closed-book QA: exact match and token F1 after SQuAD v1.1 answer normalisation, max over several gold answers.

Our own code (METHODS §10), following the SQuAD v1.1 evaluation script (Rajpurkar et al. 2016), which the NQ-open
papers (Lee et al. 2019; Min et al. 2020 EfficientQA) also use: `normalize_answer` = lower-case, drop ASCII
punctuation, drop the articles a/an/the, collapse whitespace; EM = normalised strings equal; F1 = bag-of-tokens
overlap F1 (0 when no token is shared, so an empty prediction scores 0 F1 as in v1.1); both maxed over the golds.

Prompt: the question text alone as the user message (no instruction, no few-shot), because the mini-lab
knowledge SFT data asks bare questions; completion-style prompt "Question: ...\\nAnswer:". The prediction is the
first non-empty line of the completion, stripped (a chat model may add an explanation after the answer line).
"""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter
from pathlib import Path
from typing import Any

from mixtune.evaluate.base import BenchmarkDataError, Task, iter_jsonl, mean_of, user_messages

NORMALIZER = "squad_v1"
ANSWER_SPAN = "first non-empty line of the completion"
_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normaliser: lower-case, remove punctuation, remove articles, collapse whitespace (in that order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-level F1 between normalised prediction and gold (SQuAD v1.1: 0.0 when no common token)."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(pred_tokens), num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def answer_span(completion: str) -> str:
    """The predicted answer: the first non-empty line of the completion, stripped ("" if none)."""
    for line in completion.splitlines():
        if line.strip():
            return line.strip()
    return ""


def score_qa(completion: str, golds: list[str]) -> dict[str, Any]:
    """EM and F1 of one completion, each the max over `golds`; `passed` = EM."""
    prediction = answer_span(completion)
    em = max((exact_match_score(prediction, g) for g in golds), default=0.0)
    f1 = max((f1_score(prediction, g) for g in golds), default=0.0)
    result = "passed" if em else f"failed: answered {prediction!r} (f1 {f1:.2f}), gold {golds!r}"
    return {"passed": bool(em), "result": result, "exact_match": em, "f1": f1, "prediction": prediction}


class NQOpen(Task):
    """NQ-open dev (3,610 questions) from `<data_dir>/nq_open/NQ-open.dev.jsonl`; ids `nq_open/dev/<0-based line>`."""

    name = "nq_open"
    ability = "knowledge"
    metric_names = ("exact_match", "f1")
    primary_metric = "exact_match"
    id_prefix = "nq_open/dev/"
    needs_task_id = False

    def default_path(self) -> Path:
        return Path(self.data_dir) / "nq_open" / "NQ-open.dev.jsonl"

    def load(self) -> list[dict[str, Any]]:
        path = self.source_path()
        examples = []
        for i, obj in iter_jsonl(path):
            where = f"{path}:{i + 1}"
            task_id = obj.get("task_id") if self.needs_task_id else f"{self.id_prefix}{i}"
            if not isinstance(task_id, str):
                raise BenchmarkDataError(f"{where}: missing string 'task_id'")
            examples.append(make_qa_example(task_id, obj, where))
        return examples

    def score(self, example: dict[str, Any], completion: str) -> dict[str, Any]:
        return score_qa(completion, example["golds"])

    def summarize(self, scored: list[dict[str, Any]]) -> dict[str, Any]:
        """Mean `exact_match` and `f1` over all samples, `n`, and the normaliser used."""
        return {"exact_match": mean_of(scored, "exact_match"), "f1": mean_of(scored, "f1"), "n": len(scored),
                "normalizer": NORMALIZER, "answer_span": ANSWER_SPAN}


class MiniLabKnowledge(NQOpen):
    """Mini-lab knowledge questions `<world_dir>/bench/knowledge_test.jsonl` ({task_id, question, answer: [golds]})."""

    name = "minilab_knowledge"
    needs_task_id = True

    def default_path(self) -> Path:
        return Path(self.world_dir) / "bench" / "knowledge_test.jsonl"


def make_qa_example(task_id: str, obj: dict[str, Any], where: str) -> dict[str, Any]:
    """An example from a {question, answer} record; `answer` is a list of gold strings (a single string is allowed)."""
    question, answer = obj.get("question"), obj.get("answer")
    golds = [answer] if isinstance(answer, str) else answer
    if not isinstance(question, str) or not isinstance(golds, list) or not golds \
            or not all(isinstance(g, str) for g in golds):
        raise BenchmarkDataError(f"{where}: needs 'question' (string) and 'answer' (non-empty list of strings)")
    return {"task_id": task_id, "messages": user_messages(question), "prompt_text": f"Question: {question}\nAnswer:",
            "question": question, "answer": golds, "golds": golds}


# Fact completion: the stored knowledge itself, read without a question format. Physics of LMs 3.1: a small model
# can store every biography yet fail to *extract* it through QA for people it was not QA-tuned on; completing a
# biography sentence reads the stored fact directly, so it measures whether SFT kept pre-trained knowledge.
FACT_PROMPTS = {"birth_city": "{name} was born in", "university": "{name} studied at", "major": "{name} majored in",
                "employer": "{name} worked for", "work_city": "{name} worked in"}


class MiniLabFacts(NQOpen):
    """Completion of biography sentences (`<name> was born in` -> city) of the world's HELD-OUT people
    (`<world_dir>/world.json`, split != "train"): no SFT source of the mini-lab trains their facts (knowledge QA is
    about the train split only), so the score is retention of pre-trained knowledge, never re-learning. Ids
    `minilab_facts/<person>/<attribute>`. Generation is plain completion (no chat template); the answer is the text
    up to the first period, scored with the same EM/F1 as closed-book QA. `eval.limit` draws a seeded subset
    (`SUBSET_SEED`), the same items for the base and every run, not the first N (the file is grouped by person)."""

    name = "minilab_facts"
    completion_only = True
    stop = (".", "\n")
    SUBSET_SEED = 0

    def subset(self, limit: int | None) -> list[dict[str, Any]]:
        examples = self.examples()
        if not limit or limit >= len(examples):
            return examples
        keep = set(random.Random(f"{self.name}/{self.SUBSET_SEED}").sample(range(len(examples)), limit))
        return [ex for i, ex in enumerate(examples) if i in keep]

    def default_path(self) -> Path:
        return Path(self.world_dir) / "world.json"

    def load(self) -> list[dict[str, Any]]:
        path = self.source_path()
        try:
            people = json.loads(path.read_text())["people"]
        except (OSError, ValueError, KeyError) as e:
            raise BenchmarkDataError(f"{path}: needs a 'people' list (a mini-lab world.json): {e}") from None
        examples = []
        for person in people:
            if person.get("split") == "train":  # facts of people the knowledge SFT source asks about
                continue
            for attr, template in FACT_PROMPTS.items():
                if attr not in person:
                    continue
                prompt = template.format(name=person["name"])
                examples.append({"task_id": f"minilab_facts/{person['index']}/{attr}", "prompt_text": prompt,
                                 "messages": user_messages(prompt), "answer": [person[attr]],
                                 "golds": [person[attr]], "split": person.get("split", "")})
        return examples
