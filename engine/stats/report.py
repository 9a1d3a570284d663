"""The monthly indicators built from the counters: columns, rates, and the table, CSV and JSON
that `pfi stats` writes (and the operator console shows).

Columns are sums of measures (engine/stats/outcomes.py) or ratios of two of them, one row per
(month, site, document type). An integrator renames and reorders them, maps local site names to
national identifiers and gives the RIS's own figures (users able to consult the DMP) in
`statistics.yaml` (engine/config/statistics.py; docs/statistics.md).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field

from engine.stats.facts import IDENTITY_STATUSES


@dataclass(frozen=True)
class Column:
    id: str
    label: str  # the default header, and the table's line label
    measures: tuple[str, ...] = ()  # summed
    over: str = ""  # a rate: sum of `measures` / `over`, in percent


def _columns() -> list[Column]:
    identity = [Column(f"identity_{s}", f"identities: {s}", (f"identity_{s}",)) for s in IDENTITY_STATUSES]
    rates = [
        Column(f"identity_{s}_rate", f"identities: {s} (%)", (f"identity_{s}",), "identities")
        for s in IDENTITY_STATUSES
        if s != "unknown"
    ]
    mss = []
    for audience, label in (("ps", "professionals"), ("patient", "patient (Mon espace santé)")):
        mss += [
            Column(f"mss_{audience}_requested", f"MSSanté {label}: requested", (f"mss_{audience}_requested",)),
            Column(f"mss_{audience}_succeeded", f"MSSanté {label}: sent", (f"mss_{audience}_sent",)),
            Column(f"mss_{audience}_failed", f"MSSanté {label}: failed", (f"mss_{audience}_failed",)),
            Column(f"mss_{audience}_not_sent", f"MSSanté {label}: not sent", (f"mss_{audience}_not_sent",)),
        ]
    return [
        Column("month", "month"),
        Column("site", "site"),
        Column("doc_type", "document type"),
        Column("reports_received", "reports received", ("received",)),
        Column("identities", "identities", ("identities",)),
        *identity,
        *rates,
        Column("consent_consultation", "consent to DMP consultation", ("consent_consultation",)),
        Column("consent_consultation_rate", "consent to DMP consultation (%)", ("consent_consultation",), "identities"),
        Column("non_opposition_feeding", "non-opposition to DMP feeding", ("non_opposition_feeding",)),
        Column(
            "non_opposition_feeding_rate",
            "non-opposition to DMP feeding (%)",
            ("non_opposition_feeding",),
            "identities",
        ),
        Column("dmp_requested", "DMP: requested", ("dmp_requested",)),
        Column("dmp_succeeded", "DMP: succeeded", ("dmp_ok", "dmp_ok_invisible")),
        Column("dmp_succeeded_invisible", "DMP: succeeded, invisible to the patient", ("dmp_ok_invisible",)),
        Column("dmp_failed", "DMP: failed", ("dmp_failed",)),
        Column("dmp_no_dmp", "DMP: refused, the patient has no DMP", ("dmp_no_dmp",)),
        Column("dmp_not_sent", "DMP: not sent (withdrawn, superseded, cancelled)", ("dmp_not_sent",)),
        *mss,
        Column("mss_integrated", "MSSanté mailbox: integrated into the RIS", ("mss_in_integrated",)),
        Column("mss_integration_failed", "MSSanté mailbox: integration failed", ("mss_in_failed",)),
        Column("ris_users_dmp", "RIS users able to consult the DMP"),
    ]


COLUMNS: dict[str, Column] = {c.id: c for c in _columns()}
KEYS = ("month", "site", "doc_type")


@dataclass
class StatsSettings:
    """The integrator's mapping (statistics.yaml): CSV/JSON columns as (id, name), site aliases,
    the RIS's figures, CSV delimiter and decimal mark."""

    columns: list[tuple[str, str]] = field(default_factory=lambda: [(c.id, c.id) for c in COLUMNS.values()])
    sites: dict[str, str] = field(default_factory=dict)
    ris_users_dmp: dict[str, object] = field(default_factory=dict)  # site -> n, or {month: n}
    delimiter: str = ","
    decimal: str = "."

    def ris_users(self, site: str, month: str):
        value = self.ris_users_dmp.get(site)
        if isinstance(value, dict):
            return value.get(month)
        return value


@dataclass
class StatsTable:
    first: str
    last: str
    site: str | None
    columns: list[tuple[str, str]]  # (id, name) in output order
    rows: list[dict]  # column id -> value (int, float rate, str key, or None)
    settings: StatsSettings = field(default_factory=StatsSettings)

    def as_json(self) -> str:
        return json.dumps(
            {
                "from": self.first,
                "to": self.last,
                "site": self.site,
                "columns": [{"id": i, "name": n} for i, n in self.columns],
                "rows": [{i: row.get(i) for i, _ in self.columns} for row in self.rows],
            },
            ensure_ascii=False,
            indent=1,
        )

    def as_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, delimiter=self.settings.delimiter, lineterminator="\r\n")
        writer.writerow([name for _, name in self.columns])
        for row in self.rows:
            writer.writerow([_text(row.get(i), self.settings.decimal) for i, _ in self.columns])
        return out.getvalue()

    def as_text(self) -> str:
        """Readable: per site and document type, one line per indicator, one column per month."""
        if not self.rows:
            return f"no statistics from {self.first} to {self.last}" + (f" for site {self.site}" if self.site else "")
        blocks = []
        groups: dict[tuple, list[dict]] = {}
        for row in self.rows:
            groups.setdefault((row["site"], row["doc_type"]), []).append(row)
        for (site, doc_type), rows in groups.items():
            months = [r["month"] for r in rows]
            lines = [[f"site {site or '(unknown)'}, {doc_type}"] + months]
            for column in COLUMNS.values():
                if column.id in KEYS:
                    continue
                values = [_text(r.get(column.id), ".") for r in rows]
                if any(v not in ("", "0", "0.0") for v in values):
                    lines.append([("  " if column.over else "") + column.label] + values)
            width = max(len(line[0]) for line in lines)
            cells = [max(len(v) for v in column) for column in zip(*[line[1:] for line in lines])]
            blocks.append(
                "\n".join(
                    line[0].ljust(width) + "".join(f"  {v:>{w}}" for v, w in zip(line[1:], cells)) for line in lines
                )
            )
        return "\n\n".join(blocks)


def _text(value, decimal: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.1f}".replace(".", decimal)
    return str(value)


def site_matches(site: str, wanted: str) -> bool:
    """`--site 300017985` matches FINESS:300017985; `--site FINESS:300017985` only that one."""
    wanted = wanted.strip()
    return site == wanted or (":" not in wanted and site.split(":", 1)[-1] == wanted)


def build_table(counter_rows, first: str, last: str, site: str | None, settings: StatsSettings) -> StatsTable:
    """Rows of (month, site, doc_type) from counter rows (month, site, doc_type, measure, value)."""
    cells: dict[tuple, dict[str, int]] = {}
    for month, cell_site, doc_type, measure, value in counter_rows:
        cell_site = settings.sites.get(cell_site, cell_site)
        if site is not None and not site_matches(cell_site, site):
            continue
        measures = cells.setdefault((month, cell_site, doc_type), {})
        measures[measure] = measures.get(measure, 0) + value
    rows = [_row(key, measures, settings) for key, measures in sorted(cells.items())]
    return StatsTable(first, last, site, list(settings.columns), rows, settings)


def _row(key: tuple, measures: dict[str, int], settings: StatsSettings) -> dict:
    row: dict = dict(zip(KEYS, key))
    for column in COLUMNS.values():
        if column.id in KEYS:
            continue
        if column.id == "ris_users_dmp":
            row[column.id] = settings.ris_users(row["site"], row["month"])
            continue
        total = sum(measures.get(m, 0) for m in column.measures)
        if column.over:
            over = measures.get(column.over, 0)
            row[column.id] = round(100.0 * total / over, 1) if over else None
        else:
            row[column.id] = total
    return row
