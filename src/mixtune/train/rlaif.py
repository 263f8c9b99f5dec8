"""One RLAIF stage (Lee et al. 2023, arXiv 2309.00267; METHODS.md §6): an AI labeller labels the stage's preference
pairs with soft, position-debiased preferences, then a reward model trains on those labels with cross-entropy.

The `rlaif` stage kind (`train/stages.py`); its sources hold preference pairs (their chosen/rejected orientation is
only a naming: the labeller decides, and its agreement with the data's orientation is reported).

    label      the labeller (`preference.labeller`: a local model or run folder; or `labeller_url` +
               `labeller_model`: an OpenAI-compatible endpoint with logprobs) reads each pair in both orders;
               label = P(chosen preferred) from its probabilities of "1"/"2" after "Preferred Response=",
               renormalised over the two and averaged over the orders (`evaluate/labeller.py`). Pairs it gives
               neither token are dropped and counted. The labelled pairs are saved (`labelled_pairs.jsonl`), so a
               resume trains on the same labels without asking the labeller again
    train      the reward stage itself (`train/reward.run_stage`) with `preference.soft_label` on: the soft-label
               loss −[p log σ(r_w − r_l) + (1−p) log σ(r_l − r_w)] (`train/losses.soft_pairwise_loss`)

Reported besides the reward stage's metrics (`labeller/...`): labelled and invalid pairs, the position bias
(`position_disagreement`: the two orders prefer different answers; `first_position_wins`), the labels' agreement
with the data's orientation and their mean. The held-out accuracy (`eval/<source>/reward/accuracy`) is measured on
the sources' eval_count pairs with their own labels, not the labeller's: how well the AI-labelled reward model
ranks pairs whose preference is known.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

from mixtune.evaluate.labeller import load_labeller, soft_preferences
from mixtune.jsonl import read_jsonl
from mixtune.runs import atomic_write_json, write_jsonl
from mixtune.train import engine, reward
from mixtune.train.stages import StageContext, StageResult

LABELLED = "labelled_pairs.jsonl"
LABELS = "labels.json"
INVALID = "labeller gave neither 1 nor 2 any probability"

output_model = reward.output_model
"""The stage leaves a reward model (the run rebuilds it on resume and from the study's cache)."""


def make_labeller(ctx: StageContext):
    """The stage's AI labeller (tests replace this with a scripted one)."""
    return load_labeller(ctx.recipe.preference)


def label_pairs(labeller, pairs: list[dict]) -> tuple[list[dict], dict]:
    """(the pairs the labeller labelled, each with `label` = P(chosen preferred); statistics incl. the ids of the
    pairs it could not label)."""
    labels, stats = soft_preferences(labeller, pairs)
    labelled = [{**p, "label": label} for p, label in zip(pairs, labels) if label is not None]
    return labelled, {**stats, "invalid_ids": [p["id"] for p, label in zip(pairs, labels) if label is None]}


def labelled_pairs(ctx: StageContext) -> tuple[list[dict], dict]:
    """The stage's labelled pairs: read from its folder when a previous attempt saved them, else labelled now."""
    path, stats_path = ctx.folder / LABELLED, ctx.folder / LABELS
    if path.exists() and stats_path.exists():
        ctx.log(f"stage {ctx.name}: labels read from {path} (the labeller is not asked again)")
        return read_jsonl(path, what="labelled pairs"), json.loads(stats_path.read_text())
    pairs = [ex for ex in ctx.examples if "chosen" in ex and "rejected" in ex]
    labeller = make_labeller(ctx)
    try:
        t0 = time.perf_counter()
        labelled, stats = label_pairs(labeller, pairs)
        stats["label_s"] = round(time.perf_counter() - t0, 1)
    finally:
        if hasattr(labeller, "close"):
            labeller.close()
    if engine.dist_setup().is_main:
        ctx.folder.mkdir(parents=True, exist_ok=True)
        write_jsonl(path, labelled)
        atomic_write_json(stats_path, stats)  # written last: the labels file is complete when this exists
    return labelled, stats


def run_stage(ctx: StageContext) -> StageResult:
    """Label `ctx.examples` (pairs) with the AI labeller, then train a reward model from `ctx.model` on the soft
    labels; the result carries the reward model (`StageResult.model`)."""
    # ---- setup: the labels (once)
    t0 = time.perf_counter()
    labelled, stats = labelled_pairs(ctx)
    numbers = {f"labeller/{k}": v for k, v in stats.items() if isinstance(v, (int, float))}
    ctx.log(f"stage {ctx.name}: {stats['labelled']} of {stats['pairs']} pairs labelled" + "".join(
        f", {k.split('/')[1]} {numbers[k]:.3f}" for k in ("labeller/position_disagreement",
                                                         "labeller/agreement_with_data") if k in numbers))
    if not labelled:
        raise ValueError(f"stage {ctx.name} (rlaif): the labeller labelled none of {stats['pairs']} pairs (it gave "
                         f"the tokens 1 and 2 no probability); check the labeller and its prompt")
    # ---- train: the reward stage on the soft labels
    pref = ctx.recipe.preference.model_copy(update={"soft_label": True})
    result = reward.run_stage(replace(ctx, recipe=ctx.recipe.model_copy(update={"preference": pref}),
                                      examples=labelled))
    result.kind = ctx.kind
    result.metrics.update(numbers)
    result.dropped = {**result.dropped, **({INVALID: stats["invalid_ids"]} if stats["invalid_ids"] else {})}
    result.wall_s = time.perf_counter() - t0
    if engine.dist_setup().is_main:
        atomic_write_json(ctx.folder / "stage.json", result.record())
    return result
