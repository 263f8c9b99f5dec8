"""One self-rewarding stage (Yuan et al. 2024, arXiv 2401.10020; METHODS.md §6): the model writes answers to new
prompts, judges them itself, and is trained by DPO on its own best-vs-worst answers, for several iterations.

The `self_reward` stage kind (`train/stages.py`). Its sources hold the prompts (chats, whose answers are not used, or
pairs). Iterations t = 0..T−1 (`preference.self_reward_iterations`), M_t the model as iteration t starts:

    sample     N = 4 answers per prompt from M_t (T = 0.7, top-p 0.9: `preference.self_reward_*`)
    judge      M_t judges each answer 3 times (`preference.judge_samples`) with the additive 5-point prompt of the
               paper's Figure 2 (`train/self_judge.py`); the score is the mean of the parsable judgements
    pair       highest vs lowest score per prompt; ties skipped and counted (`self_judge.self_reward_pairs`)
    train      DPO from M_t with reference M_t, β = 0.1 (`train/dpo.run_stage` through `train/iterations.py`);
               M_{t+1} is the result (an iteration without a single pair leaves the model as it is, reported)

The judge's agreement with the ability scorers (GSM8K rule, sandboxed tests, IFEval checkers: the true quality of an
answer) is measured every iteration on the training prompts' own sampled answers and on up to
`preference.judge_eval_prompts` held-out prompts (the sources' eval_count examples), as pairwise accuracy and
Spearman ρ (`iter<t>/judge/{train,heldout}/...` in StageResult.metrics and metrics.jsonl). The judge learns to judge
from EFT records mixed into SFT (`self_judge.eft_records`; `python -m mixtune.train.self_judge eft`).
"""

from __future__ import annotations

import time

from mixtune.evaluate.generate import HFBackend
from mixtune.train import iterations
from mixtune.train.pairs import has_scorer, prompt_of, sample_answers, score_by_ability
from mixtune.train.self_judge import agreement, judge_answers, judged_agreement, self_reward_pairs
from mixtune.train.spin import iteration_seed
from mixtune.train.stages import StageContext, StageResult


def make_backend(ctx: StageContext):
    """The generator and judge of an iteration: the model being trained, as it is now (M_t)."""
    return HFBackend(ctx.model, ctx.tokenizer, ctx.recipe.data.template, batch_size=ctx.recipe.eval.batch_size,
                     progress=False)


def heldout_prompts(ctx: StageContext) -> list[dict]:
    """Up to `preference.judge_eval_prompts` held-out examples of the stage's own sources that have a scorer."""
    sources = {ex.get("source") for ex in ctx.examples}
    held = [ex for name, exs in ctx.eval_sets.items() if name in sources for ex in exs if has_scorer(ex)]
    return held[:ctx.recipe.preference.judge_eval_prompts]


def judge_iteration(ctx: StageContext, examples: list[dict], held: list[dict], t: int) -> tuple[list[dict], dict]:
    """Sample, judge and pair with the model as it is (M_t); (pairs, counts with the judge's agreement)."""
    pref = ctx.recipe.preference
    seed = iteration_seed(ctx.recipe.train.seed, t)
    sampling = {"temperature": pref.self_reward_temperature, "top_p": pref.self_reward_top_p}
    lengths = {"max_new_tokens": pref.max_new_tokens, "judge_max_new_tokens": pref.judge_max_new_tokens}
    backend = make_backend(ctx)
    prompts = [prompt_of(ex) for ex in examples]
    answers = sample_answers(backend, prompts, pref.self_reward_samples, seed=seed, max_new_tokens=pref.max_new_tokens,
                             **sampling)
    scores, judged = judge_answers(backend, prompts, answers, pref.judge_samples, seed=seed + 1,
                                   max_new_tokens=pref.judge_max_new_tokens, **sampling)
    pairs, paired = self_reward_pairs(examples, answers, scores, tag=f"sr{t}")
    counts = {"prompts": len(examples), "pairs": len(pairs), **paired, **judged,
              "invalid_rate": judged["invalid_judgements"] / max(judged["judgements"], 1)}
    scorable = [i for i, ex in enumerate(examples) if has_scorer(ex)]
    if scorable:  # the judge on its own training answers vs the scorers' verdicts on them
        truth = score_by_ability([examples[i] for i in scorable], [answers[i] for i in scorable])
        counts.update({f"judge/train/{k}": v for k, v in agreement([scores[i] for i in scorable], truth).items()})
        counts["answers_correct"] = sum(map(sum, truth)) / max(sum(map(len, truth)), 1)
    if held:
        counts.update({f"judge/heldout/{k}": v for k, v in judged_agreement(
            backend, held, pref.self_reward_samples, pref.judge_samples, seed + 2, **lengths, **sampling).items()})
    ctx.log(f"stage {ctx.name}: iteration {t}: {len(pairs)} pairs from {len(examples)} prompts, {paired['ties']} "
            f"ties, {judged['invalid_judgements']}/{judged['judgements']} judgements unparsable" +
            "".join(f", {k} {counts[k]:.3f}" for k in ("judge/train/pairwise_accuracy",
                                                      "judge/heldout/pairwise_accuracy") if k in counts))
    return pairs, counts


def run_stage(ctx: StageContext) -> StageResult:
    """Train T self-rewarding iterations in place on `ctx.model` (prompts from `ctx.examples`); each iteration's
    pairs, judge statistics, DPO checkpoints and end weights go to `ctx.folder/iter-<t>/`."""
    # ---- setup
    t0 = time.perf_counter()
    pref = ctx.recipe.preference
    total = pref.self_reward_iterations
    examples = [ex for ex in ctx.examples if prompt_of(ex)]
    if not examples:
        raise ValueError(f"stage {ctx.name} (self_reward): no prompt to answer")
    held = heldout_prompts(ctx)
    ctx.log(f"stage {ctx.name}: self-rewarding, {total} iterations over {len(examples)} prompts, "
            f"{pref.self_reward_samples} answers each, {pref.judge_samples} judgements per answer, "
            f"{len(held)} held-out prompts for the judge's agreement")
    start = iterations.resume_point(ctx, total)
    optimizer_state = ctx.optimizer_state if start == 0 else None
    # ---- loop over iterations: sample and judge (M_t) → best vs worst → DPO with reference M_t
    for t in range(start, total):
        if ctx.stop_at_step is not None and iterations.steps_before(ctx, t) >= ctx.stop_at_step:
            return StageResult(ctx.name, ctx.kind, iterations.steps_before(ctx, t), False)
        pairs, _ = iterations.iteration_pairs(ctx, t, lambda i: judge_iteration(ctx, examples, held, i))
        if not pairs:
            iterations.skip_iteration(ctx, t, "no pair: every prompt tied or had fewer than two judged answers")
            continue
        result = iterations.train_iteration(ctx, t, total, pairs, optimizer_state)
        if not result.finished:
            return StageResult(ctx.name, ctx.kind, iterations.steps_before(ctx, t) + result.steps, False)
        optimizer_state = result.optimizer_state
    # ---- the stage's result (every iteration's metrics; the run saves the weights and scores the abilities)
    result = iterations.stage_result(ctx, total, time.perf_counter() - t0, {}, {})
    result.optimizer_state = optimizer_state
    return result
