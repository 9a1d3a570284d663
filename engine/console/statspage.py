"""The Statistics page's data, in one place: the programme's monthly indicators (SC.STAT) from the
statistics API of the journal (engine.journal.stats.statistics, the same table `pfi stats`
prints), with the integrator's column names and CSV format from statistics.yaml
(docs/statistics.md)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

NOT_AVAILABLE = "statistics not available: statistics.yaml is invalid (see pfi check) or the journal cannot be read"


@dataclass
class StatsTable:
    columns: list[str]
    rows: list[list]
    official_csv: str = ""  # the programme's CSV as `pfi stats --format csv` writes it


def statistics_table(access, first_month: str, last_month: str, config_root: Path | None = None) -> StatsTable | None:
    """The indicators from `first_month` to `last_month` (YYYY-MM); None when statistics.yaml is invalid."""
    from engine.journal.stats import statistics

    settings = _settings(config_root)
    if settings is None:
        return None
    table = statistics(access.read, first_month, last_month, None, settings)
    ids = [i for i, _ in table.columns]
    return StatsTable(
        [name for _, name in table.columns], [[row.get(i) for i in ids] for row in table.rows], table.as_csv()
    )


def _settings(config_root: Path | None):
    from engine.config.statistics import FILE_NAME, StatsSettingsError, load_settings
    from engine.stats.report import StatsSettings

    path = Path(config_root) / FILE_NAME if config_root is not None else None
    if path is None or not path.exists():
        return StatsSettings()
    try:
        return load_settings(path)
    except StatsSettingsError:
        return None


def as_csv(table: StatsTable) -> str:
    if table.official_csv:
        return table.official_csv
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
        if index < 2 or not values or not all(isinstance(v, (int, float)) for v in values) or not any(values):
            continue  # keys, rates not computable, and indicators all zero over the range: no chart
        top = max(max(values), 1)
        bar = width / len(values)
        bars = "".join(
            f'<rect x="{i * bar + 2:.1f}" y="{height - 20 - (v / top) * (height - 30):.1f}" width="{max(bar - 4, 1):.1f}"'
            f' height="{(v / top) * (height - 30):.1f}" class="bar"><title>{escape(str(r[0]))} {escape(str(r[1]))}:'
            f" {v}</title></rect>"
            for i, (v, r) in enumerate(zip(values, table.rows))
        )
        svg = (
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" class="chart" role="img"'
            f' aria-label="{escape(column)}">{bars}<text x="0" y="{height - 4}" class="axis">max {top}</text></svg>'
        )
        charts.append((column, svg))
    return charts
