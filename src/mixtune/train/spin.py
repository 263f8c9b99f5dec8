"""One SPIN stage: self-play fine-tuning (Chen et al. 2024, arXiv 2401.01335; METHODS.md §6).

The `spin` stage kind (`train/stages.py`). Its sources are SFT chats: the prompt is the turns before the last
assistant turn, y_real that assistant turn. Iterations t = 0..T−1 (`preference.spin_iterations`), each:

    sample     y_gen ~ θ_t for every prompt, temperature 1 (`preference.spin_temperature`; `train/pairs.py`)
    pair       chosen = y_real, rejected = y_gen (a y_gen identical to y_real gives no pair: skipped, counted)
    train      SPIN's DPO-form loss — logistic ℓ(x) = log(1 + e^{−x}), i.e. `preference.loss: sigmoid`, or
               `hinge` — with λ = β = 0.1 (`preference.beta`) and reference θ_t, on the pairs of iterations t and
               t−1 (the paper's data mix: the synthetic data of the current and the previous iteration);
               θ_{t+1} is the result

The DPO stage of an iteration is `train/dpo.run_stage` itself (`train/iterations.py`: per-iteration folders, the
pairs saved once, the model at each iteration's end saved, resume at the iteration and step a kill stopped at), so
the reference log-probs are θ_t's, computed once per pair at the iteration's start. When the SFT chats carry what
their ability's scorer needs (`answer`, `tests`, `instruction_ids`), the share of y_gen that the scorer accepts is
reported per iteration (`iter<t>/generated_correct`): how close θ_t's own answers already are to the data's.
"""

from __future__ import annotations

import time

from mixtune.config import Recipe
from mixtune.evaluate.generate import HFBackend
from mixtune.train import iterations
from mixtune.train.pairs import has_scorer, prompt_of, sample_answers, score_by_ability
from mixtune.train.stages import StageContext, StageResult

SCORER_FIELDS = ("answer", "tests", "entry_point", "instruction_ids", "kwargs")
"""Fields of an SFT chat kept on its pairs (what the ability scorer of the prompt needs)."""
IDENTICAL = "y_gen identical to y_real: no pair"


def iteration_seed(seed: int, t: int) -> int:
    """The sampling seed of iteration t: different per iteration, the same on a rerun."""
    return 1000 * seed + t


def spin_pairs(chats: list[dict], generated: list[str], t: int) -> tuple[list[dict], list[str]]:
    """(pairs chosen = y_real, rejected = y_gen, ids of chats whose y_gen equals y_real) of iteration t."""
    pairs, identical = [], []
    for ex, y_gen in zip(chats, generated):
        y_real = ex["messages"][-1]["content"]
        if y_gen.strip() == y_real.strip():
            identical.append(ex["id"])
            continue
        pairs.append({"id": f"{ex['id']}/spin{t}", "source": ex.get("source", ""), "ability": "preference",
                      "task_type": 0, "messages": prompt_of(ex), "chosen": y_real, "rejected": y_gen,
                      "weight": 1.0, "iteration": t, **{k: ex[k] for k in SCORER_FIELDS if k in ex}})
    return pairs, identical


def training_pairs(current: list[dict], previous: list[dict] | None) -> list[dict]:
    """What iteration t trains on: its own pairs and those of iteration t−1 (none before iteration 0)."""
    return [*(previous or []), *current]


def generated_correct(chats: list[dict], generated: list[str]) -> float | None:
    """Mean scorer result of y_gen over the chats whose ability has a scorer (None when none has)."""
    scored = [i for i, ex in enumerate(chats) if has_scorer(ex)]
    if not scored:
        return None
    scores = score_by_ability([chats[i] for i in scored], [[generated[i]] for i in scored])
    return sum(s[0] for s in scores) / len(scores)


def sample_iteration(ctx: StageContext, chats: list[dict], t: int) -> tuple[list[dict], dict]:
    """Sample y_gen from the model as it is (θ_t) for every chat's prompt; (pairs, counts)."""
    recipe: Recipe = ctx.recipe
    pref = recipe.preference
    backend = HFBackend(ctx.model, ctx.tokenizer, recipe.data.template, batch_size=recipe.eval.batch_size,
                        progress=False)
    generated = [group[0] for group in sample_answers(
        backend, [prompt_of(ex) for ex in chats], 1, temperature=pref.spin_temperature,
        max_new_tokens=pref.max_new_tokens, seed=iteration_seed(recipe.train.seed, t))]
    pairs, identical = spin_pairs(chats, generated, t)
    counts = {"prompts": len(chats), "pairs": len(pairs), "identical": len(identical), "identical_ids": identical}
    correct = generated_correct(chats, generated)
    if correct is not None:
        counts["generated_correct"] = correct
    ctx.log(f"stage {ctx.name}: iteration {t}: {len(pairs)} pairs from {len(chats)} prompts ({len(identical)} "
            f"y_gen identical to y_real)" + (f", y_gen correct {correct:.3f}" if correct is not None else ""))
    return pairs, counts


def run_stage(ctx: StageContext) -> StageResult:
    """Train T SPIN iterations in place on `ctx.model` (SFT chats in `ctx.examples`); each iteration's pairs,
    DPO checkpoints and end weights go to `ctx.folder/iter-<t>/`."""
    # ---- setup
    t0 = time.perf_counter()
    total = ctx.recipe.preference.spin_iterations
    chats = [ex for ex in ctx.examples if ex["messages"] and ex["messages"][-1]["role"] == "assistant"]
    if not chats:
        raise ValueError(f"stage {ctx.name} (spin): no SFT chat ending with an assistant answer to learn from")
    ctx.log(f"stage {ctx.name}: SPIN, {total} iterations over {len(chats)} SFT prompts, loss "
            f"{ctx.recipe.preference.loss}, beta {ctx.recipe.preference.beta}")
    start = iterations.resume_point(ctx, total)  # loads θ_start when earlier iterations finished
    optimizer_state = ctx.optimizer_state if start == 0 else None
    # ---- loop over iterations: sample (θ_t) → pairs → DPO with reference θ_t
    for t in range(start, total):
        if ctx.stop_at_step is not None and iterations.steps_before(ctx, t) >= ctx.stop_at_step:
            return StageResult(ctx.name, ctx.kind, iterations.steps_before(ctx, t), False)
        current, _ = iterations.iteration_pairs(ctx, t, lambda i: sample_iteration(ctx, chats, i))
        previous = iterations.saved_pairs(ctx, t - 1) if t > 0 else None
        result = iterations.train_iteration(ctx, t, total, training_pairs(current, previous), optimizer_state)
        if not result.finished:
            return StageResult(ctx.name, ctx.kind, iterations.steps_before(ctx, t) + result.steps, False)
        optimizer_state = result.optimizer_state
    # ---- the stage's result (every iteration's metrics; the run saves the weights and scores the abilities)
    identical = [i for t in range(total) for i in iterations.generation(ctx, t).get("identical_ids", [])]
    result = iterations.stage_result(ctx, total, time.perf_counter() - t0, {}, {IDENTICAL: identical})
    result.optimizer_state = optimizer_state
    return result
