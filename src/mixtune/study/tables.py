"""Study tables from results rows (`ResultsDB.rows()`): strategy × ability, fraction × ability, stage by stage.

Every cell is mean ± sample standard deviation over seeds (n runs), of one main metric per benchmark
(`MAIN_METRIC`, overridable), taken at the end of a stage (step END_OF_STAGE; a stage scored only mid-way uses its
last step). Tables render as plain text (terminal), Markdown (README) and HTML (report page).

- strategy × ability: each run's FINAL stage (highest stage_index), grouped by strategy, setup, adapter, fraction.
- fraction × ability (DMT RQ1/RQ2): runs whose `setup` names a source kind: "single" (one ability's data, e.g.
  setup "single:math") or "mixed" (the same fraction of every ability). A single-source run counts only for the
  ability it trained, read from its setup or strategy name ("single:math", "math_only"); when no ability is named
  it counts for every ability it was scored on.
- stage by stage: every stage of every strategy, so forgetting (sequential training, DMT §4) shows as a drop; the
  study's base model (run `base`) is stage 0 of every strategy.

Rows carry the run's `protocol` (how steps were set: fixed epochs or matched steps), `steps` (optimizer steps) and
`tokens` (training tokens), summed over the run's stages (`annotate_rows`). A study with more than one protocol gets
a protocol key column in every table (the protocols side by side); with one, every title names it.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from typing import Any

from mixtune.results import END_OF_STAGE
from mixtune.study.base import BASE_RUN
from mixtune.study.cells import Summary, Table, fmt_count, fmt_fraction

ABILITIES = ("math", "code", "general", "knowledge")

# benchmark -> the metric its tables report (each task's `primary_metric` in mixtune.evaluate), by ability.
MAIN_METRIC: dict[str, str] = {
    "minilab_math": "strict",
    "minilab_code": "pass@1",
    "minilab_instruct": "prompt_level_strict",
    "minilab_knowledge": "exact_match",
    "minilab_facts": "exact_match",
    "gsm8k": "strict",
    "humaneval": "pass@1",
    "humaneval_plus": "pass@1",
    "mbpp": "pass@1",
    "mbpp_plus": "pass@1",
    "ifeval": "prompt_level_strict",
    "mt_bench": "score",
    "nq_open": "exact_match",
    "nq": "exact_match",
}

# When a benchmark is not in the map (or its metric is missing), the first of these that it reports is used.
ABILITY_METRICS: dict[str, tuple[str, ...]] = {
    "math": ("strict", "accuracy", "exact_match"),
    "code": ("pass@1",),
    "general": ("prompt_level_strict", "score", "accuracy"),
    "knowledge": ("exact_match", "f1", "accuracy"),
}

KEY_FIELDS = ("protocol", "base", "strategy", "setup", "adapter", "fraction")
JSON_KEYS = ("strategy", "fraction", "seed", "stage", "ability", "benchmark", "metric", "value", "run_id", "setup",
             "protocol", "steps", "tokens")

# --- selecting the rows a table is made of ----------------------------------------------------------------------


def choose_metrics(rows: list[dict], metric_map: dict[str, str] | None = None) -> dict[str, str]:
    """benchmark -> the metric reported for it: the map's entry if present, else the ability's first candidate."""
    metric_map = {**MAIN_METRIC, **(metric_map or {})}
    available: dict[str, list[str]] = {}
    ability_of: dict[str, str] = {}
    for r in rows:
        ms = available.setdefault(r["benchmark"], [])
        if r["metric"] not in ms:
            ms.append(r["metric"])
        ability_of.setdefault(r["benchmark"], r.get("ability") or "")
    chosen = {}
    for bench, ms in available.items():
        candidates = [metric_map[bench]] if bench in metric_map else []
        candidates += ABILITY_METRICS.get(ability_of[bench], ())
        pick = next((m for m in candidates if m in ms), ms[0] if len(ms) == 1 else None)
        if pick is not None:
            chosen[bench] = pick
    return chosen


def main_rows(rows: list[dict], metric_map: dict[str, str] | None = None) -> list[dict]:
    """Rows of each benchmark's main metric at the end of each stage (last step when no end-of-stage score)."""
    chosen = choose_metrics(rows, metric_map)
    picked = [r for r in rows if chosen.get(r["benchmark"]) == r["metric"] and r.get("value") is not None]
    last: dict[tuple, dict] = {}
    for r in picked:
        key = (r["run_id"], r["stage"], r["benchmark"])
        prev = last.get(key)
        rank = _step_rank(r["step"])
        if prev is None or rank >= _step_rank(prev["step"]):
            last[key] = r
    return [r for r in picked if last[(r["run_id"], r["stage"], r["benchmark"])] is r]


def is_base(r: dict) -> bool:
    """A row of a base model's scores (run `base`, or `base-b<seed>` when a study has several bases)."""
    return r.get("run_id") == BASE_RUN or r.get("setup") == BASE_RUN


def annotate_rows(rows: list[dict], totals: dict[str, dict], protocols: dict[str, str | None],
                  default_protocol: str | None = None) -> list[dict]:
    """Rows with the run's `protocol` (its own, else the study's; None for the base, which no protocol trained),
    `steps` and `tokens` (`ResultsDB.run_totals`: summed over the run's stages)."""
    out = []
    for r in rows:
        run = r["run_id"]
        protocol = None if run == BASE_RUN else (r.get("protocol") or protocols.get(run) or default_protocol)
        out.append({**r, "protocol": protocol, **{k: (totals.get(run) or {}).get(k) for k in ("steps", "tokens")}})
    return out


def protocols_of(rows: list[dict]) -> list[str]:
    """The protocols of the rows (the base has none), in order of appearance."""
    return list(dict.fromkeys(r["protocol"] for r in rows if r.get("protocol")))


def protocol_label(rows: list[dict]) -> str:
    """'; protocol: fixed epochs' for a one-protocol table (a several-protocol one has the protocol column)."""
    found = protocols_of(rows)
    return f"; protocol: {found[0].replace('_', ' ')}" if len(found) == 1 else ""


def _step_rank(step: int | None) -> float:
    return float("inf") if step is None or step == END_OF_STAGE else float(step)


def stage_order(rows: list[dict]) -> dict[str, list[str]]:
    """run_id -> its stage names in training order (stage_index, then first appearance for unrecorded stages)."""
    seen: dict[str, dict[str, tuple[float, int]]] = {}
    for i, r in enumerate(rows):
        stages = seen.setdefault(r["run_id"], {})
        if r["stage"] not in stages:
            idx = r.get("stage_index")
            stages[r["stage"]] = (float("inf") if idx is None else float(idx), i)
    return {run: sorted(st, key=st.__getitem__) for run, st in seen.items()}


def multi_stage_rows(rows: list[dict]) -> list[dict]:
    """Only the rows of runs scored after at least two stages (a single-stage run shows no change)."""
    order = stage_order(rows)
    return [r for r in rows if len(order[r["run_id"]]) > 1]


def final_rows(rows: list[dict]) -> list[dict]:
    """Only the rows of each run's last stage."""
    order = stage_order(rows)
    return [r for r in rows if order[r["run_id"]][-1] == r["stage"]]


def ability_columns(rows: list[dict]) -> list[tuple[str, str]]:
    """(ability, benchmark) pairs in ability order (math, code, general, knowledge, then others)."""
    pairs = {(r.get("ability") or "other", r["benchmark"]) for r in rows}
    rank = {a: i for i, a in enumerate(ABILITIES)}
    return sorted(pairs, key=lambda p: (rank.get(p[0], len(rank)), p[0], p[1]))


def column_labels(cols: list[tuple[str, str]], chosen: dict[str, str]) -> tuple[list[str], str]:
    """Short column labels (the ability, or ability:benchmark when an ability has several) and the note naming
    each column's benchmark and metric."""
    per_ability: dict[str, int] = {}
    for ability, _ in cols:
        per_ability[ability] = per_ability.get(ability, 0) + 1
    labels = [a if per_ability[a] == 1 else f"{a}:{b}" for a, b in cols]
    note = "metrics: " + ", ".join(f"{lab} = {b} {chosen.get(b, '')}".rstrip() for lab, (_, b) in zip(labels, cols))
    return labels, (note if cols else "")


def source_kind(setup: str | None, strategy: str | None) -> tuple[str | None, str | None]:
    """('single', trained ability or None) / ('mixed', None) / (None, None) for runs outside the fraction grid.

    A non-empty setup decides ("single", "single:math", "mixed"; "ratio:..." is outside the grid); the strategy name
    ("math_only") only when there is no setup. The trained ability of a single-source run is the one named in
    its setup or strategy ("math only"). "mixed_sequential" is a strategy (DMT §3), not a mixed-source run."""
    setup_tokens, strategy_tokens = (set(re.split(r"[^a-z0-9]+", (t or "").lower())) for t in (setup, strategy))
    tokens = setup_tokens if (setup or "").strip() else strategy_tokens
    if "mixed" in tokens and (tokens is setup_tokens or "sequential" not in tokens):
        return "mixed", None
    if "single" in tokens or "only" in tokens:
        named = [a for a in ABILITIES if a in setup_tokens] + [a for a in ABILITIES if a in strategy_tokens]
        return "single", (named[0] if named else None)
    return None, None


def varying_fields(rows: list[dict], fields: tuple[str, ...] = ("strategy", "adapter")) -> tuple[str, ...]:
    """The fields that take more than one value across rows."""
    return tuple(f for f in fields if len({r.get(f) for r in rows}) > 1)


def fraction_grid_rows(rows: list[dict]) -> list[dict]:
    """Rows of single/mixed-source runs, each tagged with its `_source` label; a single-source run keeps only the
    rows of the ability it trained.

    Labels: "single" and "mixed", or "mixed: <strategy>" when several strategies train on mixed sources (DMT
    strategies all mix every ability) and "... (<adapter>)" when adapters differ. Single-source runs are never
    split by strategy: their labels ("math only", "code only") differ by design."""
    kinds = {}
    for r in rows:
        kind, trained = source_kind(r.get("setup"), r.get("strategy"))
        if kind is not None and (trained is None or trained == r.get("ability")):
            kinds.setdefault(kind, []).append(r)
    kept = []
    for kind, group in sorted(kinds.items(), key=lambda kv: kv[0] != "single"):
        split = varying_fields(group, ("strategy", "adapter") if kind == "mixed" else ("adapter",))
        for r in group:
            strategy = f": {r.get('strategy')}" if "strategy" in split else ""
            adapter = f" ({r.get('adapter')})" if "adapter" in split else ""
            kept.append({**r, "_source": f"{kind}{strategy}{adapter}"})
    return kept


def aggregate(rows: list[dict], key_fn: Callable[[dict], tuple | None]) -> dict[tuple, Summary]:
    """(group key..., ability, benchmark) -> Summary over runs; a run with several values counts once (mean)."""
    per_run: dict[tuple, dict[str, list[float]]] = {}
    for r in rows:
        key = key_fn(r)
        if key is None:
            continue
        per_run.setdefault(key, {}).setdefault(r["run_id"], []).append(r["value"])
    return {k: Summary.of(statistics.fmean(v) for v in runs.values()) for k, runs in per_run.items()}


def key_fields(rows: list[dict], fields: tuple[str, ...] = KEY_FIELDS) -> tuple[str, ...]:
    """The key columns a table needs: the strategy, and each other field that takes more than one value over the
    runs (the base aside): no adapter column in a full fine-tuning study, no protocol column with one protocol."""
    runs = [r for r in rows if not is_base(r)] or rows
    return tuple(f for f in fields if f == "strategy" and any(r.get(f) for r in rows)
                 or len({r.get(f) for r in runs if r.get(f) not in (None, "")}) > 1)


def run_key(r: dict, fields: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(fmt_fraction(r.get(f)) if f == "fraction" else str(r.get(f) or "") for f in fields)


def _build(title: str, rows: list[dict], fields: tuple[str, ...], metric_map: dict[str, str] | None,
           extra: Callable[[dict], tuple[str, ...]] = lambda r: ()) -> Table:
    """One table: a row per distinct (fields + extra) key in order of appearance, a column per (ability, bench)."""
    chosen = choose_metrics(rows, metric_map)
    cols = ability_columns(rows)
    used = key_fields(rows, fields)

    def key_fn(r: dict) -> tuple:
        return (*run_key(r, used), *extra(r), r.get("ability") or "other", r["benchmark"])

    agg = aggregate(rows, key_fn)
    keys = sorted(dict.fromkeys(k[:-2] for k in agg), key=lambda k: k[used.index("strategy")] != BASE_RUN
                  if "strategy" in used else False)  # the base first
    extra_names = ["stage"] if rows and extra(rows[0]) else []
    labels, note = column_labels(cols, chosen)
    table = Table(title, list(used) + extra_names, labels, note=note)
    for key in keys:
        table.keys.append(key)
        table.cells.append([agg.get((*key, a, b)) for a, b in cols])
    return table


# --- the three tables ---------------------------------------------------------------------------------------------


def strategy_table(rows: list[dict], metric_map: dict[str, str] | None = None) -> Table:
    """Strategy × ability at each run's final stage, mean ± std over seeds, the base first; then each row's
    optimizer steps and training tokens (mean over its runs; min–max when they differ)."""
    rows = final_rows(main_rows(rows, metric_map))
    table = _build(f"Strategy × ability (final stage, mean ± std over seeds{protocol_label(rows)})", rows,
                   KEY_FIELDS, metric_map)
    if any(r.get("steps") is not None for r in rows):
        used = key_fields(rows)
        per_key: dict[tuple, dict[str, dict]] = {}
        for r in rows:
            per_key.setdefault(run_key(r, used), {})[r["run_id"]] = r
        table.value_columns += ["steps", "tokens"]
        for key, cells in zip(table.keys, table.cells):
            runs = per_key.get(key, {}).values()
            cells += [_count_cell([r.get("steps") for r in runs]), _count_cell([r.get("tokens") for r in runs])]
    return table


def _count_cell(values: list[int | None]) -> str | None:
    """'375', '370–380' (runs of a row differ), '1.2M'; None when not recorded."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    return fmt_count(lo) if lo == hi else f"{fmt_count(lo)}–{fmt_count(hi)}"


def with_base_stage(rows: list[dict]) -> list[dict]:
    """Rows of multi-stage runs, each strategy (key fields) preceded by the study's base as its stage 0 (the
    base's rows copied with the strategy's key fields, `_stage_pos` 0); `_stage_pos` is every row's position."""
    base = [r for r in rows if is_base(r)]
    multi = multi_stage_rows([r for r in rows if not is_base(r)])
    order = stage_order(multi)
    shift = 1 if base else 0
    out = [{**r, "_stage_pos": order[r["run_id"]].index(r["stage"]) + shift} for r in multi]
    groups = list(dict.fromkeys(tuple(r.get(f) for f in KEY_FIELDS) for r in multi))
    for group in groups:
        key = dict(zip(KEY_FIELDS, group))  # each strategy starts from its own base model (several bases: a column)
        out += [{**b, **key, "_stage_pos": 0} for b in base if b.get("base") == key.get("base")]
    return out


def stage_table(rows: list[dict], metric_map: dict[str, str] | None = None) -> Table:
    """Ability after every stage of every multi-stage run, from the base (stage 0) on: forgetting shows as a drop
    down a strategy's rows."""
    rows = with_base_stage(main_rows(rows, metric_map))
    rows = sorted(rows, key=lambda r: r["_stage_pos"])  # stable: grid order within a stage

    def stage_key(r: dict) -> tuple[str, ...]:
        return (f"{r['_stage_pos']}: {r['stage']}",)

    table = _build(f"Ability after each stage (mean ± std over seeds{protocol_label(rows)})", rows, KEY_FIELDS,
                   metric_map, stage_key)
    # Group a strategy's stages together: sort by the key columns' first appearance, then stage position.
    first = {k[:-1]: i for i, k in reversed(list(enumerate(table.keys)))}
    pairs = sorted(zip(table.keys, table.cells), key=lambda kc: (first[kc[0][:-1]], int(kc[0][-1].split(":")[0])))
    table.keys, table.cells = [k for k, _ in pairs], [c for _, c in pairs]
    return table


def fraction_table(rows: list[dict], metric_map: dict[str, str] | None = None) -> Table:
    """Fraction × ability for single-source vs mixed-source runs (DMT RQ1/RQ2); empty when the study has none.

    Rows: each fraction (largest first), then each source (single first, then the mixed strategies); a "single"
    cell holds the run that trained only that ability."""
    chosen = choose_metrics(rows, metric_map)
    kept = fraction_grid_rows(final_rows(main_rows(rows, metric_map)))
    if len({r.get("fraction") for r in kept}) < 2:  # one fraction: the strategy table already says it all
        kept = []
    cols = ability_columns(kept)
    by_protocol = len(protocols_of(kept)) > 1  # the protocols side by side
    agg = aggregate(kept, lambda r: ((r.get("protocol") or "",) if by_protocol else ()) + (
        fmt_fraction(r.get("fraction")), r["_source"], r.get("ability") or "other", r["benchmark"]))
    sources = list(dict.fromkeys(r["_source"] for r in kept))
    fractions = sorted({r.get("fraction") for r in kept if r.get("fraction") is not None}, reverse=True)
    protocols = protocols_of(kept) if by_protocol else [None]
    labels, note = column_labels(cols, chosen)
    table = Table(f"Fraction × ability, single vs mixed sources (final stage, mean ± std over seeds"
                  f"{protocol_label(kept)})", ["protocol"] * by_protocol + ["fraction", "sources"], labels, note=note)
    for protocol in protocols:
        head = (protocol,) if by_protocol else ()
        for f in map(fmt_fraction, fractions):
            for source in sources:
                cells = [agg.get((*head, f, source, a, b)) for a, b in cols]
                if any(c is not None for c in cells):
                    table.keys.append((*head, f, source))
                    table.cells.append(cells)
    return table


def json_rows(rows: list[dict]) -> list[dict[str, Any]]:
    """Score rows as plain dicts with the report's JSON keys (every metric, every stage and step)."""
    return [{k: r.get(k) for k in JSON_KEYS} for r in rows]
