"""The study table of what the preference stages report besides ability scores (`StageResult.metrics`, stored in
the results database's `metrics` table): held-out pair accuracy of reward models and DPO's implicit reward, the AI
labeller's agreement and position bias, the pairs each SPIN / self-rewarding iteration made, the share of correct
self-generated answers, and the self-judge's agreement with the ability scorers. A reward-model run has no ability
score at all, so this table is where it shows.

One row per (strategy, stage, metric), mean ± std over the runs (seeds) of the strategy; each run's value is the
stage's last recorded one.
"""

from __future__ import annotations

import re
from pathlib import Path

from mixtune.results import ResultsDB
from mixtune.study.cells import Summary, Table

REPORTED = (
    r"eval/[^/]+/rewards?/accuracy",
    r"labeller/(agreement_with_data|position_disagreement|first_position_wins|invalid)",
    r"iter\d+/(pairs|ties|generated_correct|answers_correct|invalid_rate)",
    r"iter\d+/judge/(train|heldout)/(pairwise_accuracy|spearman)",
)
"""Metric names the table shows (full matches), in this order."""


def _rank(name: str) -> tuple[int, str] | None:
    """(pattern index, name) of a reported metric, None for the others."""
    for i, pattern in enumerate(REPORTED):
        if re.fullmatch(pattern, name):
            return i, name
    return None


def stage_metrics_table(db_path: str | Path) -> Table:
    """The table above from a study's results database (empty when no stage reported such a metric)."""
    table = Table("Preference stages: held-out accuracy, labeller, iterations (mean ± std over seeds)",
                  ["strategy", "stage", "metric"], ["value"],
                  note="eval/<source>/reward(s)/accuracy: held-out pairs ranked right by the reward model (reward) or "
                       "by DPO's implicit reward (rewards); iter<t>/: SPIN and self-rewarding iterations")
    if not Path(db_path).exists():
        return table
    with ResultsDB(db_path) as db:
        runs = {r["run_id"]: r for r in db.runs()}
        values: dict[tuple[str, str, str], dict[str, float]] = {}
        for run_id, run in runs.items():
            last: dict[tuple[str, str], tuple[int, float]] = {}
            for m in db.metrics(run_id):
                if _rank(m["name"]) is not None and m["step"] >= last.get((m["stage"], m["name"]), (-1, 0.0))[0]:
                    last[(m["stage"], m["name"])] = (m["step"], m["value"])
            for (stage, name), (_, value) in last.items():
                values.setdefault((run["strategy"] or run_id, stage, name), {})[run_id] = value
    order = {run["strategy"] or run_id: i for i, (run_id, run) in enumerate(runs.items())}
    for key in sorted(values, key=lambda k: (order.get(k[0], 0), k[1], _rank(k[2]))):
        table.keys.append(key)
        table.cells.append([Summary.of(values[key].values())])
    return table
