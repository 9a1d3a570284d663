"""The Statistics page's data, in one place: the programme's monthly indicators come from the
statistics API (`engine.stats`, issue 13) when this engine has it; otherwise the page says
"statistics not available". Wiring contract for `engine.stats`: a function
`monthly_table(access, first_month, last_month)` returning (column names, rows), the first
columns naming the month and site, the others numbers (docs/console.md)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

NOT_AVAILABLE = "statistics not available: this engine has no statistics module (engine.stats)"


@dataclass
class StatsTable:
    columns: list[str]
    rows: list[list]


def statistics_table(access, first_month: str, last_month: str) -> StatsTable | None:
    """The indicators from `first_month` to `last_month` (YYYY-MM), or None without engine.stats."""
    try:
        from engine import stats  # noqa: F401 - optional: the statistics work may not be merged
    except ImportError:
        return None
    table = getattr(stats, "monthly_table", None)
    if table is None:
        return None
    columns, rows = table(access, first_month, last_month)
    return StatsTable(list(columns), [list(r) for r in rows])


def as_csv(table: StatsTable) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(table.columns)
    writer.writerows(table.rows)
    return out.getvalue()


def bar_charts(table: StatsTable, width: int = 640, height: int = 160) -> list[tuple[str, str]]:
    """(column, SVG) per numeric column: one bar per row, drawn here (no script, no library)."""
    from html import escape

    charts = []
    for index, column in enumerate(table.columns):
        values = [r[index] for r in table.rows]
        if index < 2 or not values or not all(isinstance(v, (int, float)) for v in values):
            continue
        top = max(max(values), 1)
        bar = width / len(values)
        bars = "".join(
            f'<rect x="{i * bar + 2:.1f}" y="{height - 20 - (v / top) * (height - 30):.1f}" width="{max(bar - 4, 1):.1f}"'
            f' height="{(v / top) * (height - 30):.1f}" class="bar"><title>{escape(str(r[0]))} {escape(str(r[1]))}:'
            f' {v}</title></rect>' for i, (v, r) in enumerate(zip(values, table.rows)))
        svg = (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" class="chart" role="img"'
               f' aria-label="{escape(column)}">{bars}<text x="0" y="{height - 4}" class="axis">max {top}</text></svg>')
        charts.append((column, svg))
    return charts
