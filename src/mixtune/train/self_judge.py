"""The model as its own judge (Self-Rewarding LMs, Yuan et al. 2024, arXiv 2401.10020; METHODS.md §6): the additive
5-point LLM-as-a-Judge prompt, score parsing, judging sampled answers several times, best-vs-worst pairs, the judge's
agreement with the ability scorers, and evaluation-fine-tuning (EFT) data that teaches the judge.

- `JUDGE_PROMPT`: the paper's Figure 2 prompt; the judgement ends with "Score: <points>", parsed by
  `Score: ([0-9.]+)` (the last match; no match, a non-number or a value outside [0, 5] is invalid and counted).
- Judging: each answer is judged `judge_samples` times (sampled, T = 0.7, top-p 0.9 as its answers); its score is
  the mean of the valid judgements (None when none is valid). Pairs: highest vs lowest mean score per prompt
  (`train/pairs.best_vs_worst`); all-equal scores (or equal texts) are ties, skipped and counted; a prompt with
  fewer than two judged answers gives no pair (counted).
- Agreement with the ability scorers (the mini-lab's true quality of an answer: GSM8K rule, sandboxed tests,
  IFEval checkers): pairwise accuracy over the answer pairs of one prompt whose true quality differs (judge order
  agrees 1, judge tie 1/2, else 0) and Spearman's ρ over all judged answers.
- EFT (the paper's seed judge data, there human-ranked Open Assistant answers): SFT records whose prompt is the judge
  prompt on (instruction, answer) and whose answer is a short justification ending in "Score: <round(5·q)>", from
  answers with known quality q ∈ [0, 1] (`eft_records`). `python -m mixtune.train.self_judge eft` builds them from
  the mini-lab preference pairs (chosen and rejected, each scored by its ability's scorer) and writes a disjoint
  set of held-back prompts for the self-rewarding stage.
"""

from __future__ import annotations

import argparse
import random
import re
from collections.abc import Sequence
from pathlib import Path

from mixtune.evaluate.generate import GenerationBackend
from mixtune.train.pairs import ability_of, best_vs_worst, has_scorer, prompt_of, sample_answers, score_by_ability

JUDGE_PROMPT = """Review the user's question and the corresponding response using the additive 5-point scoring system \
described below. Points are accumulated based on the satisfaction of each criterion:
- Add 1 point if the response is relevant and provides some information related to the user's inquiry, even if it \
is incomplete or contains some irrelevant content.
- Add another point if the response addresses a substantial portion of the user's question, but does not completely \
resolve the query or provide a direct answer.
- Award a third point if the response answers the basic elements of the user's question in a useful way, regardless \
of whether it seems to have been written by an AI Assistant or if it has elements typically found in blogs or search \
results.
- Grant a fourth point if the response is clearly written from an AI Assistant's perspective, addressing the user's \
question directly and comprehensively, and is well-organized and helpful, even if there is slight room for \
improvement in clarity, conciseness or focus.
- Bestow a fifth point for a response that is impeccably tailored to the user's question by an AI Assistant, without \
extraneous information, reflecting expert knowledge, and demonstrating a high-quality, engaging, and insightful \
answer.

User: {instruction}
<response>{response}</response>

After examining the user's instruction and the response:
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: "Score: <total points>"

Remember to assess from the AI Assistant perspective, utilizing web search knowledge as necessary. To evaluate the \
response in alignment with this additive scoring model, we'll systematically attribute points based on the outlined \
criteria."""
"""The LLM-as-a-Judge prompt of Yuan et al. 2024, Figure 2 ({instruction}, {response} filled in one pass)."""

SCORE = re.compile(r"Score: ([0-9.]+)")
MAX_POINTS = 5.0


def judge_conversation(prompt: Sequence[dict], response: str) -> list[dict]:
    """The judge prompt on the prompt's last user turn and `response`, as one user message. The values are inserted
    verbatim in one pass (braces or a placeholder's name inside them stay as they are)."""
    instruction = next(m["content"] for m in reversed(prompt) if m["role"] == "user")
    values = {"instruction": instruction, "response": response}
    text = re.sub(r"\{(instruction|response)\}", lambda m: values[m.group(1)], JUDGE_PROMPT)
    return [{"role": "user", "content": text}]


def parse_score(judgement: str) -> float | None:
    """The points of a judgement: the last `Score: <number>`; None when there is none, it is not a number, or it
    lies outside [0, 5]."""
    found = SCORE.findall(judgement)
    if not found:
        return None
    try:
        value = float(found[-1].rstrip("."))  # "Score: 4." ends a sentence
    except ValueError:
        return None
    return value if 0.0 <= value <= MAX_POINTS else None


def judge_answers(backend: GenerationBackend, prompts: Sequence[list[dict]], answers: Sequence[Sequence[str]],
                  samples: int, **sampling) -> tuple[list[list[float | None]], dict[str, int]]:
    """Judge every answer `samples` times (one generation call); (mean valid score per answer or None, counts:
    judgements, invalid judgements, answers without a valid judgement)."""
    conversations = [judge_conversation(p, a) for p, group in zip(prompts, answers) for a in group]
    texts = sample_answers(backend, conversations, samples, **sampling) if conversations else []
    parsed = [[parse_score(t) for t in group] for group in texts]
    means = [(sum(v) / len(v)) if (v := [s for s in group if s is not None]) else None for group in parsed]
    flat = iter(means)
    scores = [[next(flat) for _ in group] for group in answers]
    invalid = sum(s is None for group in parsed for s in group)
    return scores, {"judgements": len(conversations) * samples, "invalid_judgements": invalid,
                    "unjudged_answers": sum(m is None for m in means)}


def self_reward_pairs(examples: list[dict], answers: list[list[str]], scores: list[list[float | None]],
                      tag: str) -> tuple[list[dict], dict[str, int]]:
    """Best vs worst judged answer per prompt (ids `<example id>/<tag>`); (pairs, counts: ties, too_few_judged)."""
    pairs, ties, too_few = [], 0, 0
    for ex, group, group_scores in zip(examples, answers, scores):
        judged = [(a, s) for a, s in zip(group, group_scores) if s is not None]
        if len(judged) < 2:
            too_few += 1
            continue
        pair = best_vs_worst(ex, [a for a, _ in judged], [s for _, s in judged])
        if pair is None:
            ties += 1
            continue
        pairs.append({**pair, "id": f"{ex['id']}/{tag}"})
    return pairs, {"ties": ties, "too_few_judged": too_few}


# ------------------------------------------------------------------------------------ agreement with the scorers
def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's ρ (Pearson correlation of the tie-averaged ranks); None when either side is constant."""
    rx, ry = ranks(x), ranks(y)
    n = len(rx)
    if n < 2:
        return None
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5 if vx and vy else None


def agreement(judge: list[list[float | None]], truth: list[list[float]]) -> dict[str, float]:
    """How well judge scores order answers as the scorers do: `pairwise_accuracy` over within-prompt answer pairs
    whose true quality differs (both judged), `spearman` over every judged answer, and the counts behind them."""
    credit, n_pairs = 0.0, 0
    for js, ts in zip(judge, truth):
        for i in range(len(ts)):
            for j in range(i + 1, len(ts)):
                if ts[i] == ts[j] or js[i] is None or js[j] is None:
                    continue
                n_pairs += 1
                credit += 0.5 if js[i] == js[j] else float((js[i] > js[j]) == (ts[i] > ts[j]))
    flat = [(j, t) for js, ts in zip(judge, truth) for j, t in zip(js, ts) if j is not None]
    out: dict[str, float] = {"pairs": n_pairs, "answers": len(flat)}
    if n_pairs:
        out["pairwise_accuracy"] = credit / n_pairs
    rho = spearman([j for j, _ in flat], [t for _, t in flat]) if flat else None
    if rho is not None:
        out["spearman"] = rho
    return out


def judged_agreement(backend: GenerationBackend, examples: list[dict], n: int, samples: int, seed: int, *,
                     max_new_tokens: int, judge_max_new_tokens: int, **sampling) -> dict[str, float]:
    """Sample `n` answers per example, judge them and score them with the ability scorers: `agreement` (examples
    without a scorer are left out)."""
    examples = [ex for ex in examples if has_scorer(ex)]
    if not examples:
        return {}
    prompts = [prompt_of(ex) for ex in examples]
    answers = sample_answers(backend, prompts, n, seed=seed, max_new_tokens=max_new_tokens, **sampling)
    scores, _ = judge_answers(backend, prompts, answers, samples, seed=seed + 1, max_new_tokens=judge_max_new_tokens,
                              **sampling)
    return agreement(scores, score_by_ability(examples, answers))


# --------------------------------------------------------------------------------------------------------- EFT
def justification(example: dict, quality: float) -> str:
    """A short reason for the score, from what the ability's scorer found."""
    ability = ability_of(example)
    if ability == "math":
        return ("The response works through the problem step by step and reaches the correct final answer."
                if quality >= 1 else "The response attempts the problem, but its final answer is wrong.")
    if ability == "code":
        return ("The function does what the docstring asks and passes the tests." if quality >= 1 else
                "The function does not do what the docstring asks: it fails the tests.")
    n = len(example.get("instruction_ids", ())) or 1
    return f"The response is on topic and follows {round(quality * n)} of the {n} instructions of the request."


def eft_record(example: dict, answer: str, quality: float, index: int, source: str = "eft") -> dict:
    """One EFT chat: the judge prompt on (the example's prompt, answer) → justification + "Score: round(5q)"."""
    points = round(MAX_POINTS * quality)
    judged = f"{justification(example, quality)}\nScore: {points}"
    return {"id": f"{source}/{example['id']}/{index}", "source": source, "ability": "general", "task_type": 0,
            "messages": [*judge_conversation(prompt_of(example), answer),
                         {"role": "assistant", "content": judged}]}


def eft_records(examples: list[dict], answers: list[list[str]], qualities: list[list[float]],
                source: str = "eft") -> list[dict]:
    """EFT records from answers with known quality q ∈ [0, 1] (sampled answers and their scorer results, or the
    two answers of a pair), one per answer."""
    return [eft_record(ex, a, q, k, source) for ex, group, qs in zip(examples, answers, qualities)
            for k, (a, q) in enumerate(zip(group, qs))]


def eft_from_pairs(pairs: list[dict], source: str = "eft") -> list[dict]:
    """EFT records from preference pairs carrying their scorer fields: chosen and rejected, each scored."""
    answers = [[p["chosen"], p["rejected"]] for p in pairs]
    return eft_records(pairs, answers, score_by_ability(pairs, answers), source)


def prompt_record(pair: dict) -> dict:
    """A chat for the self-rewarding stage from a pair: its prompt, the chosen answer as the reference, its scorer
    fields (held-out prompts need them for the judge's agreement)."""
    keep = {k: pair[k] for k in ("answer", "tests", "entry_point", "instruction_ids", "kwargs") if k in pair}
    return {"id": pair["id"], "ability": ability_of(pair), "task_type": 0,
            "messages": [*pair["messages"], {"role": "assistant", "content": pair["chosen"]}], **keep}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m mixtune.train.self_judge eft --world DIR --out DIR`: EFT records and self-rewarding prompts."""
    from mixtune.data.formats import read_examples
    from mixtune.runs import write_jsonl

    parser = argparse.ArgumentParser(prog="python -m mixtune.train.self_judge", description=main.__doc__)
    parser.add_argument("what", choices=["eft"])
    parser.add_argument("--world", default="runs/world-mini", help="mini-lab world folder (its sft/preference_*)")
    parser.add_argument("--out", required=True, help="writes eft.jsonl and prompts.jsonl here")
    parser.add_argument("--eft", type=int, default=100, help="pairs per domain turned into EFT records (2 each)")
    parser.add_argument("--prompts", type=int, default=100, help="other pairs per domain kept as new prompts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    eft, prompts = [], []
    for name in ("preference_math", "preference_code", "preference_instruct"):
        pairs = read_examples(Path(args.world) / "sft" / f"{name}.jsonl", format="pairs", source=name).examples
        random.Random(f"{args.seed}:{name}").shuffle(pairs)
        if args.eft + args.prompts > len(pairs):
            print(f"{name}: {len(pairs)} pairs, fewer than --eft + --prompts = {args.eft + args.prompts}")
            return 2
        eft += eft_from_pairs(pairs[:args.eft])
        prompts += [prompt_record(p) for p in pairs[args.eft:args.eft + args.prompts]]
    out = Path(args.out)
    write_jsonl(out / "eft.jsonl", eft)
    write_jsonl(out / "prompts.jsonl", prompts)
    print(f"{len(eft)} EFT records -> {out / 'eft.jsonl'}; {len(prompts)} held-back prompts -> {out / 'prompts.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
