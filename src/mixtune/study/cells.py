"""Cells of the study tables: `Summary` (mean, sample std, the per-run values and a t-based 95% interval) and
`Table` (key columns, value columns, rendered as text, Markdown or HTML), plus the number formats they use."""

from __future__ import annotations

import html
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}
"""Two-sided 95% Student-t quantiles t(0.975, df) (standard tables); a df between entries uses the smaller df's
value (a slightly wider interval), beyond 120 the normal 1.960."""


def t_quantile(df: int) -> float:
    """t(0.975, df), conservative between table entries."""
    if df > max(T_975):
        return 1.960
    return T_975[max(k for k in T_975 if k <= df)]


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (None when n < 2) of one cell's values over seeds (`values`, per run)."""

    mean: float
    std: float | None
    n: int
    values: tuple[float, ...] = ()

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary:
        vals = list(values)
        return cls(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals), tuple(vals))

    def ci95(self, low: float | None = 0.0, high: float | None = None) -> tuple[float, float] | None:
        """The t-based 95% interval of the mean, mean ± t(0.975, n-1)·s/√n, clipped to [low, high] (a rate's
        interval stays in [0, 1]); None for n < 2."""
        if self.std is None or self.n < 2:
            return None
        half = t_quantile(self.n - 1) * self.std / math.sqrt(self.n)
        lo, hi = self.mean - half, self.mean + half
        return (lo if low is None else max(low, lo)), (hi if high is None else min(high, hi))

    def __str__(self) -> str:
        spread = f" ± {self.std:.3f}" if self.std is not None else ""
        return f"{self.mean:.3f}{spread} (n={self.n})"


@dataclass
class Table:
    """A rendered-agnostic table: key columns (strings) then value columns (Summary or None for no data)."""

    title: str
    key_columns: list[str]
    value_columns: list[str]
    keys: list[tuple[str, ...]] = field(default_factory=list)
    cells: list[list[Summary | str | None]] = field(default_factory=list)
    note: str = ""
    """Shown under the title: which benchmark and metric each ability column reports."""

    def cell(self, key: tuple[str, ...], column: str) -> Summary | None:
        return self.cells[self.keys.index(key)][self.value_columns.index(column)]

    def _str_rows(self) -> list[list[str]]:
        return [list(k) + ["–" if c is None else str(c) for c in cells] for k, cells in zip(self.keys, self.cells)]

    def to_text(self) -> str:
        header = self.key_columns + self.value_columns
        body = self._str_rows()
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [self.title] + ([self.note] if self.note else []) + [fmt.format(*header),
                                                                       fmt.format(*("-" * w for w in widths))]
        return "\n".join(lines + [fmt.format(*r) for r in body])

    def to_markdown(self) -> str:
        header = self.key_columns + self.value_columns
        lines = [f"**{self.title}**" + (f" ({self.note})" if self.note else ""), "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in self._str_rows()])

    def to_html(self) -> str:
        esc = html.escape
        head = "".join(f"<th>{esc(c)}</th>" for c in self.key_columns + self.value_columns)
        body = []
        for row in self._str_rows():
            keys = "".join(f"<th scope='row'>{esc(v)}</th>" for v in row[: len(self.key_columns)])
            vals = "".join(f"<td>{esc(v)}</td>" for v in row[len(self.key_columns):])
            body.append(f"<tr>{keys}{vals}</tr>")
        note = f"<br><small>{esc(self.note)}</small>" if self.note else ""
        return (f"<table>\n<caption>{esc(self.title)}{note}</caption>\n<thead><tr>{head}</tr></thead>\n"
                f"<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>")


def fmt_fraction(x: float | None) -> str:
    """0.25 -> '1/4', 1.0 -> '1'; fractions that are not simple stay decimal."""
    if x is None:
        return ""
    frac = Fraction(x).limit_denominator(4096)
    return str(frac) if abs(float(frac) - x) < 1e-9 else f"{x:g}"


def fmt_count(n: float) -> str:
    """1234 -> '1234', 56789 -> '56.8k', 3300000 -> '3.30M'."""
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}k" if n >= 1e4 else f"{n:.0f}"
