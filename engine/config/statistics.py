"""`statistics.yaml` beside pfi.yaml: how `pfi stats` writes the programme statistics for an
integrator's template (column names and order), local site names mapped to national identifiers,
and the RIS's own figures (users able to consult the DMP). See docs/statistics.md."""

from __future__ import annotations

from pathlib import Path

from engine.stats.report import COLUMNS, StatsSettings

FILE_NAME = "statistics.yaml"


def statistics_problems(config_dir: Path) -> list[str]:
    """What `pfi check` reports of the configuration directory's statistics.yaml (none if absent)."""
    path = Path(config_dir) / FILE_NAME
    if not path.exists():
        return []
    try:
        load_settings(path)
    except StatsSettingsError as exc:
        return exc.problems
    return []


class StatsSettingsError(Exception):
    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def load_settings(path: Path) -> StatsSettings:
    """statistics.yaml; StatsSettingsError naming file:line:col of every problem."""
    from engine.config.yamlfile import YamlSyntaxError, load_yaml, position

    try:
        data = load_yaml(path)
    except YamlSyntaxError as exc:
        raise StatsSettingsError([f"{path}:{exc.position[0]}:{exc.position[1]}: {exc}"]) from exc
    except OSError as exc:
        raise StatsSettingsError([f"{path}: cannot read: {exc.strerror}"]) from exc
    data = data or {}
    problems: list[str] = []

    def where(node, key=None) -> str:
        line, col = position(node, key)
        return f"{path}:{line}:{col}"

    if not isinstance(data, dict):
        raise StatsSettingsError([f"{where(data)}: expected a mapping (columns, sites, ris_users_dmp, csv)"])
    for key in data:
        if key not in ("columns", "sites", "ris_users_dmp", "csv"):
            problems.append(f"{where(data, key)}: unknown key {key!r} (columns, sites, ris_users_dmp, csv)")
    settings = StatsSettings()
    if "columns" in data:
        settings.columns = _read_columns(data["columns"], where, problems)
    sites = data.get("sites") or {}
    settings.sites = {str(k): str(v) for k, v in sites.items()} if isinstance(sites, dict) else {}
    if not isinstance(sites, dict):
        problems.append(f"{where(data, 'sites')}: expected a mapping local site -> national site")
    settings.ris_users_dmp = _read_ris_users(data.get("ris_users_dmp") or {}, where, problems)
    csv_settings = data.get("csv") or {}
    settings.delimiter = str(csv_settings.get("delimiter", ","))
    settings.decimal = str(csv_settings.get("decimal", "."))
    if len(settings.delimiter) != 1:
        problems.append(f"{where(csv_settings, 'delimiter')}: the CSV delimiter is one character")
    if problems:
        raise StatsSettingsError(problems)
    return settings


def _read_columns(node, where, problems: list[str]) -> list[tuple[str, str]]:
    if not isinstance(node, list) or not node:
        problems.append(f"{where(node)}: columns is a list of column ids, each optionally `id: name`")
        return []
    columns = []
    for index, item in enumerate(node):
        column_id, name = (
            next(iter(item.items()))
            if isinstance(item, dict) and len(item) == 1
            else (item, item)
            if isinstance(item, str)
            else (None, None)
        )
        if column_id not in COLUMNS:
            problems.append(f"{where(node, index)}: unknown column {column_id!r} (known: {', '.join(COLUMNS)})")
            continue
        columns.append((str(column_id), str(name)))
    return columns


def _read_ris_users(node, where, problems: list[str]) -> dict:
    from engine.stats.months import parse_month

    if not isinstance(node, dict):
        problems.append(f"{where(node)}: ris_users_dmp maps a site to a number, or to {{YYYY-MM: number}}")
        return {}
    out: dict = {}
    for site, value in node.items():
        if isinstance(value, int) and not isinstance(value, bool):
            out[str(site)] = value
        elif isinstance(value, dict):
            try:
                out[str(site)] = {parse_month(str(m)): int(n) for m, n in value.items()}
            except (ValueError, TypeError) as exc:
                problems.append(f"{where(node, site)}: {exc}")
        else:
            problems.append(f"{where(node, site)}: expected a number or {{YYYY-MM: number}}")
    return out
