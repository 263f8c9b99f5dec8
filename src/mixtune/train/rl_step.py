"""What the `ppo` and `grpo` loops share: the stage's prompts and CCCS curriculum (`setup_rl`), one rollout with its
rewards and FGO masks (`collect`), the metrics a stage reports (`summarize`) and its end (`finish_stage`).

Reward failures (`RewardResult.failed`: the sandbox failed, an endpoint was down, a sample had nothing to score
against) are counted every step (`reward_failures`) and, by `rl.failed_reward`, kept at reward 0 (`zero`) or
dropped from the update (`drop`: the sample carries no loss and is left out of its group's statistics).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mixtune.config import RecipeError
from mixtune.runs import atomic_write_json
from mixtune.train.rewards import Reward, RewardResult, make_reward, safe_call, task_kind
from mixtune.train.rollout import (
    RLPrompt,
    RolloutBackend,
    RolloutClock,
    Sample,
    encode_prompt,
    make_backend,
    rl_prompts,
    rollout_seed,
)
from mixtune.train.stages import StageContext, StageResult
from mixtune.train.stepcoder import CCCSSchedule, cccs_prefixes, fgo_token_mask, given_prefix

SUMMARY_WINDOW = 10
"""RL steps averaged into the stage's summary metrics (first and last window)."""


@dataclass
class RLSetup:
    """The stage's prompts, their CCCS prefixes (longest first; () for none), the curriculum, reward, generator."""

    prompts: list[RLPrompt]
    prefixes: list[tuple[str, ...]]
    schedule: CCCSSchedule | None
    reward: Reward
    backend: RolloutBackend
    stop: list[str]
    dropped: dict[str, list[str]]
    ptx_examples: list[dict] = field(default_factory=list)
    clock: RolloutClock = field(default_factory=RolloutClock)


def setup_rl(ctx: StageContext) -> RLSetup:
    """Prompts from the stage's examples (the PPO-ptx source's examples are kept apart), CCCS prefixes from the
    reference answers of code prompts, the reward of `rl.rewards` and the rollout backend. A stage whose prompts a
    task reward cannot score fails here, naming the examples."""
    from mixtune.data.templates import stop_strings
    from mixtune.evaluate.generate import end_token_ids

    recipe, rl = ctx.recipe, ctx.recipe.rl
    ptx = [ex for ex in ctx.examples if rl.ptx_source and ex.get("source") == rl.ptx_source]
    ptx_ids = {id(ex) for ex in ptx}
    prompts, dropped = rl_prompts([ex for ex in ctx.examples if id(ex) not in ptx_ids])
    if not prompts:
        raise RecipeError(f"stage {ctx.name} ({ctx.kind}): no RL prompt among its {len(ctx.examples)} examples "
                          f"(a prompt is a record with a user turn)")
    if any(spec.kind == "task" for spec in rl.rewards):
        unscorable = [str(p.example.get("id")) for p in prompts if task_kind(p.example) is None]
        if unscorable:
            raise RecipeError(f"stage {ctx.name}: the task reward needs an answer, tests + entry_point or "
                              f"instruction_ids on every prompt; {len(unscorable)} have none (first: "
                              f"{unscorable[0]}); use another reward (rl.rewards) or other sources")
    prefixes = [cccs_prefixes(_user_text(p), p.reference, rl.cccs_split)
                if rl.cccs and p.reference and task_kind(p.example) == "code" else () for p in prompts]
    schedule = (CCCSSchedule(rl.cccs_schedule, rl.cccs_every, rl.cccs_threshold, max(map(len, prefixes)))
                if rl.cccs else None)
    # end-of-turn tokens already end a row (`end_token_ids`); as stop strings they would only add a decode per step
    ends = {ctx.tokenizer.convert_ids_to_tokens(i) for i in end_token_ids(ctx.model, ctx.tokenizer)}
    stop = [s for s in [*stop_strings(recipe.data.template, ctx.tokenizer), *rl.stop] if s not in ends]
    if recipe.train.bf16 and rl.old_logprobs == "rollout":
        ctx.log(f"stage {ctx.name}: π_old comes from sampling in the weights' dtype but the update runs under bf16 "
                f"autocast, so the first ratio is not exactly 1; rl.old_logprobs=recompute makes them agree")
    return RLSetup(prompts, prefixes, schedule, make_reward(recipe, trace_lines=rl.fgo),
                   make_backend(rl.backend, ctx.model, ctx.tokenizer, rl), stop, dropped, ptx)


def _user_text(prompt: RLPrompt) -> str:
    return next((m["content"] for m in reversed(prompt.messages) if m["role"] == "user"), "")


@dataclass
class Collected:
    """One RL step's rollouts: the samples (n per prompt, grouped), each one's example, scored answer (CCCS prefix
    + generated text) and reward, whether it enters the update, and its FGO token mask (None: every token)."""

    samples: list[Sample]
    examples: list[dict]
    completions: list[str]
    results: list[RewardResult]
    kept: list[bool]
    token_keep: list[list[bool] | None]
    rollout_tokens_per_s: float

    @property
    def rewards(self) -> list[float]:
        return [r.value for r in self.results]

    @property
    def pass_rate(self) -> float | None:
        verdicts = [r.passed for r in self.results if r.passed is not None]
        return sum(verdicts) / len(verdicts) if verdicts else None


def collect(setup: RLSetup, ctx: StageContext, picked: list[int], step: int) -> Collected:
    """Sample `rl.n_samples` answers for each picked prompt (seeded by the step), reward them, mask them (FGO)."""
    recipe, rl = ctx.recipe, ctx.recipe.rl
    stage = setup.schedule.stage if setup.schedule else 0
    given = [given_prefix(setup.prefixes[i], stage) for i in picked]
    ids = [encode_prompt(setup.prompts[i], ctx.tokenizer, recipe.data.template, recipe.data.system_prompt, g)
           for i, g in zip(picked, given)]
    setup.backend.sync(ctx.model)
    setup.clock.start()
    samples = setup.backend.sample(ids, n=rl.n_samples, max_new_tokens=rl.max_new_tokens,
                                   temperature=rl.temperature, top_p=rl.top_p, stop=setup.stop,
                                   seed=rollout_seed(recipe.train.seed, step))
    rate = setup.clock.stop(samples)
    examples = [setup.prompts[picked[s.prompt]].example for s in samples]
    completions = [given[s.prompt] + s.text for s in samples]
    results = safe_call(setup.reward, examples, completions)
    kept = [not (r.failed and rl.failed_reward == "drop") for r in results]
    token_keep = [fgo_token_mask(ex, text, len(given[s.prompt]), s.token_ids, r.info, ctx.tokenizer)
                  if rl.fgo and task_kind(ex) == "code" else None
                  for ex, text, s, r in zip(examples, completions, samples, results)]
    return Collected(samples, examples, completions, results, kept, token_keep, rate)


def rollout_metrics(c: Collected) -> dict[str, float]:
    """The per-step numbers every RL stage logs about its rollouts."""
    values = c.rewards
    mean = sum(values) / len(values)
    kept_tokens = [sum(k) / max(len(k), 1) for k in c.token_keep if k is not None]
    out = {"reward_mean": mean, "reward_std": (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5,
           "response_length": sum(len(s.token_ids) for s in c.samples) / len(c.samples),
           "reward_failures": float(sum(r.failed for r in c.results)),
           "dropped_samples": float(sum(not k for k in c.kept)),
           "rollout_tokens_per_s": c.rollout_tokens_per_s}
    if c.pass_rate is not None:
        out["pass_rate"] = c.pass_rate
    if kept_tokens:
        out["fgo_kept"] = sum(kept_tokens) / len(kept_tokens)
    return out


def summarize(history: list[dict[str, float]]) -> dict[str, float]:
    """StageResult.metrics: each logged number averaged over the last SUMMARY_WINDOW steps (`rl/<name>`), plus the
    first window's reward (`rl/reward_mean_first`) so the table shows whether the reward rose."""
    if not history:
        return {}
    last, first = history[-SUMMARY_WINDOW:], history[:SUMMARY_WINDOW]
    keys = sorted({k for row in last for k in row})
    out = {f"rl/{k}": sum(row[k] for row in last if k in row) / sum(k in row for row in last) for k in keys}
    out["rl/reward_mean_first"] = sum(row["reward_mean"] for row in first) / len(first)
    return out


def finish_stage(ctx: StageContext, setup: RLSetup, history: list[dict[str, float]], step: int, total_steps: int,
                 log, wall_s: float) -> StageResult:
    """The end of an RL stage: its StageResult (metrics summarised over the steps' history); when every step ran, the
    wall time and rates, the stage's last metrics row and its stage.json (a stage stopped early writes none)."""
    result = StageResult(ctx.name, ctx.kind, step, step >= total_steps, len(setup.prompts),
                         train_loss=history[-1]["loss"] if history else None, metrics=summarize(history),
                         dropped=setup.dropped)
    if not result.finished:
        return result
    result.wall_s = wall_s
    result.tokens_per_s = result.metrics.get("rl/update_tokens_per_s", 0.0)
    result.metrics["rl/rollout_tokens_per_s_stage"] = setup.clock.rate()
    log.log(step, stage_done=ctx.name)
    log.close()
    atomic_write_json(ctx.folder / "stage.json", result.record())
    return result
