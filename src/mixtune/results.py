"""The results database (ground floor): one SQLite file per study (`runs/<study>/results.sqlite`).

Tables (one row per (run, stage, benchmark, metric) in `scores`):
- `runs(run_id PK, study, strategy, fraction, seed, setup, adapter, config_json, status, started_at, finished_at,
  protocol, base)`: `protocol` is the study protocol the run was trained under (matched_steps / fixed_epochs),
  `base` names the base model (e.g. `base-mini-b1` when a study pre-trains several bases).
- `stages(run_id, stage_index, stage_name, n_examples, n_tokens, steps, wall_s, PK(run_id, stage_name))`
- `metrics(run_id, stage, step, name, value)`: training curves (loss, lr, tokens_per_s ...), appended; a stage's
  end-of-stage metrics (`set_metrics`) replace earlier rows of the same (run, stage, step, name).
- `scores(run_id, stage, step, benchmark, ability, metric, value, text, PK(run_id, stage, step, benchmark, metric))`

Choices:
- `step` is never NULL (SQLite treats NULLs as distinct in a primary key, so re-scoring would duplicate rows):
  `END_OF_STAGE = -1` marks the score taken at the end of a stage; mid-stage evaluations use the optimizer step.
- A summary value that is not a finite number (a string such as a judge model name, or NaN) is kept in the `text`
  column with `value` NULL, so nothing is lost; `rows()` returns only numeric scores unless asked otherwise.
- WAL mode plus a busy timeout and a retry on "database is locked" lets a couple of grid workers (separate
  processes) write to one study file at the same time. Every write is its own short transaction.

sqlite3 from the standard library: no ORM is needed for four tables.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from typing_extensions import Self

DB_NAME = "results.sqlite"
"""File name of a study's results database inside its folder."""
END_OF_STAGE = -1
STATUSES = ("pending", "running", "finished", "failed")
RUN_FIELDS = ("study", "strategy", "fraction", "seed", "setup", "adapter", "config_json", "status",
              "started_at", "finished_at", "protocol", "base")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, study TEXT, strategy TEXT, fraction REAL, seed INTEGER, setup TEXT, adapter TEXT,
    config_json TEXT, status TEXT, started_at TEXT, finished_at TEXT, protocol TEXT, base TEXT);
CREATE TABLE IF NOT EXISTS stages (
    run_id TEXT NOT NULL, stage_index INTEGER, stage_name TEXT NOT NULL, n_examples INTEGER, n_tokens INTEGER,
    steps INTEGER, wall_s REAL, PRIMARY KEY (run_id, stage_name));
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL, stage TEXT, step INTEGER, name TEXT NOT NULL, value REAL);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics (run_id, stage, name);
CREATE TABLE IF NOT EXISTS scores (
    run_id TEXT NOT NULL, stage TEXT NOT NULL, step INTEGER NOT NULL, benchmark TEXT NOT NULL, ability TEXT,
    metric TEXT NOT NULL, value REAL, text TEXT, PRIMARY KEY (run_id, stage, step, benchmark, metric));
"""

T = TypeVar("T")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class ResultsDB:
    """Read and write one study's results file. Usable as a context manager; `close()` when done."""

    def __init__(self, path: str | Path, timeout_s: float = 30.0, retries: int = 8):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retries = retries
        self.conn = sqlite3.connect(str(self.path), timeout=timeout_s)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        self._retry(lambda: self.conn.execute("PRAGMA journal_mode = WAL").fetchone())
        self._retry(lambda: self.conn.executescript(_SCHEMA))
        self._migrate()

    def _migrate(self) -> None:
        """Add the columns newer versions write to a database made by an older one."""
        have = {r["name"] for r in self.conn.execute("PRAGMA table_info(runs)")}
        for column in ("protocol", "base"):
            if column not in have:
                self._write(f"ALTER TABLE runs ADD COLUMN {column} TEXT")

    # --- plumbing -------------------------------------------------------------------------------------------------

    def _retry(self, fn: Callable[[], T]) -> T:
        """Run `fn`, retrying with back-off when another process holds the write lock past the busy timeout."""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e) or attempt == self.retries:
                    raise
                time.sleep(min(0.05 * 2**attempt, 2.0))
        raise AssertionError("unreachable")

    def _write(self, sql: str, params: tuple | list = ()) -> None:
        def run() -> None:
            with self.conn:  # one transaction: commit, or roll back on error
                self.conn.execute(sql, params)

        self._retry(run)

    def _write_many(self, sql: str, seq: list[tuple]) -> None:
        def run() -> None:
            with self.conn:
                self.conn.executemany(sql, seq)

        self._retry(run)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- runs -----------------------------------------------------------------------------------------------------

    def upsert_run(self, run_id: str, **fields: Any) -> None:
        """Insert the run or update only the given fields. `config_json` may be a dict (stored as JSON)."""
        unknown = sorted(set(fields) - set(RUN_FIELDS))
        if unknown:
            raise ValueError(f"unknown run fields {unknown}; valid fields: {', '.join(RUN_FIELDS)}")
        if "status" in fields:
            _check_status(fields["status"])
        if isinstance(fields.get("config_json"), (dict, list)):
            fields["config_json"] = json.dumps(fields["config_json"], sort_keys=True)
        cols = ["run_id", *fields]
        update = ", ".join(f"{c} = excluded.{c}" for c in fields) or "run_id = run_id"
        sql = (f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
               f"ON CONFLICT(run_id) DO UPDATE SET {update}")
        self._write(sql, [run_id, *fields.values()])

    def set_status(self, run_id: str, status: str) -> None:
        """Set a run's status; `running` stamps started_at, `finished`/`failed` stamp finished_at."""
        _check_status(status)
        fields: dict[str, Any] = {"status": status}
        if status == "running":
            fields["started_at"] = _now()
        elif status in ("finished", "failed"):
            fields["finished_at"] = _now()
        self.upsert_run(run_id, **fields)

    def finished_runs(self, study: str) -> set[str]:
        """Run ids of a study that finished: a resumed grid skips these."""
        cur = self.conn.execute("SELECT run_id FROM runs WHERE study = ? AND status = 'finished'", (study,))
        return {r["run_id"] for r in cur}

    def runs(self, study: str | None = None) -> list[dict[str, Any]]:
        """All run rows (of one study when given), ordered by run_id."""
        where, params = ("WHERE study = ?", (study,)) if study is not None else ("", ())
        return [dict(r) for r in self.conn.execute(f"SELECT * FROM runs {where} ORDER BY run_id", params)]

    # --- stages, metrics, scores ----------------------------------------------------------------------------------

    def add_stage(self, run_id: str, stage_index: int, stage_name: str, n_examples: int | None = None,
                  n_tokens: int | None = None, steps: int | None = None, wall_s: float | None = None) -> None:
        """Record (or replace) one stage of a run; `stage_index` orders stages (0 may be the base model)."""
        self._write("INSERT OR REPLACE INTO stages VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (run_id, stage_index, stage_name, n_examples, n_tokens, steps, wall_s))

    def stages(self, run_id: str) -> list[dict[str, Any]]:
        cur = self.conn.execute("SELECT * FROM stages WHERE run_id = ? ORDER BY stage_index", (run_id,))
        return [dict(r) for r in cur]

    def run_totals(self) -> dict[str, dict[str, int | None]]:
        """run_id -> {"steps", "tokens"}: optimizer steps and training tokens (`n_tokens`) summed over the run's
        recorded stages (None when no stage recorded them)."""
        cur = self.conn.execute("SELECT run_id, SUM(steps) AS steps, SUM(n_tokens) AS tokens FROM stages "
                                "GROUP BY run_id")
        return {r["run_id"]: {"steps": r["steps"], "tokens": r["tokens"]} for r in cur}

    def add_metric(self, run_id: str, stage: str, step: int, name: str, value: float) -> None:
        """Append one training metric value (e.g. loss at a step)."""
        self._write("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)", (run_id, stage, step, name, float(value)))

    def add_metrics(self, run_id: str, stage: str, step: int, values: dict[str, float]) -> None:
        """Append several metrics of one step in one transaction."""
        self._write_many("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)",
                         [(run_id, stage, step, k, float(v)) for k, v in values.items()])

    def set_metrics(self, run_id: str, stage: str, step: int, values: dict[str, float]) -> None:
        """Record several metrics of one step, replacing earlier values of the same (run, stage, step, name): what a
        stage reports at its end, which a resumed or retried run records again."""
        def run() -> None:
            with self.conn:
                self.conn.executemany("DELETE FROM metrics WHERE run_id = ? AND stage = ? AND step = ? AND name = ?",
                                      [(run_id, stage, step, k) for k in values])
                self.conn.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)",
                                      [(run_id, stage, step, k, float(v)) for k, v in values.items()])

        self._retry(run)

    def metrics(self, run_id: str, name: str | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM metrics WHERE run_id = ?", [run_id]
        if name is not None:
            sql, params = sql + " AND name = ?", [run_id, name]
        return [dict(r) for r in self.conn.execute(sql + " ORDER BY rowid", params)]

    def add_scores(self, run_id: str, stage: str, benchmark: str, ability: str,
                   scores: dict[str, float | int | str], step: int | None = None) -> None:
        """Store a benchmark summary (`Task.summarize` output): one row per metric, replacing earlier values.

        `step=None` means the end of the stage (stored as END_OF_STAGE). Bools and ints become floats; strings and
        non-finite numbers go to the `text` column with a NULL value.
        """
        step = END_OF_STAGE if step is None else int(step)
        rows = []
        for metric, raw in scores.items():
            value, text = _split_value(raw)
            rows.append((run_id, stage, step, benchmark, ability, metric, value, text))
        self._write_many("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def rows(self, study: str | None = None, numeric_only: bool = True) -> list[dict[str, Any]]:
        """Score rows joined with their run (strategy, fraction, seed, setup, adapter) and stage index.

        Keys: run_id, study, strategy, fraction, seed, setup, adapter, protocol, base, stage, stage_index (None when
        the stage was not recorded with `add_stage`), step, benchmark, ability, metric, value, text. Ordered by
        insertion.
        """
        sql = """
            SELECT s.run_id, r.study, r.strategy, r.fraction, r.seed, r.setup, r.adapter, r.protocol, r.base,
                   s.stage, g.stage_index,
                   s.step, s.benchmark, s.ability, s.metric, s.value, s.text
            FROM scores s
            LEFT JOIN runs r ON r.run_id = s.run_id
            LEFT JOIN stages g ON g.run_id = s.run_id AND g.stage_name = s.stage"""
        conds, params = [], []
        if study is not None:
            conds.append("r.study = ?")
            params.append(study)
        if numeric_only:
            conds.append("s.value IS NOT NULL")
        if conds:
            sql += " WHERE " + " AND ".join(conds)
        return [dict(r) for r in self.conn.execute(sql + " ORDER BY s.rowid", params)]


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; valid statuses: {', '.join(STATUSES)}")


def _split_value(raw: Any) -> tuple[float | None, str | None]:
    """(value, text) for one summary entry: finite numbers are values, everything else is kept as text."""
    if isinstance(raw, (bool, int, float)) and not isinstance(raw, str):
        value = float(raw)
        return (value, None) if math.isfinite(value) else (None, repr(value))
    return None, str(raw)
