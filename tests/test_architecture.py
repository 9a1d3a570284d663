"""The engine's shape, asserted from its imports: no cycle between its packages (every import,
function-level ones included), and no SQL outside engine/journal/."""

import ast
import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "engine"
SQL = re.compile(
    r"\b(SELECT\s+.+\s+FROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX))\b", re.I
)


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if parts[0] == "engine" and len(parts) > 1 else ""


def imported_modules(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in ENGINE.rglob("*.py"):
        me = unit(".".join(path.relative_to(ENGINE.parent).with_suffix("").parts))
        if not me or me == "__init__":
            continue
        targets = {unit(m) for m in imported_modules(ast.parse(path.read_text(encoding="utf-8")))}
        graph.setdefault(me, set()).update(t for t in targets if t and t != me)
    return graph


def test_no_import_cycle_between_engine_packages():
    try:
        order = list(TopologicalSorter(package_graph()).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle between engine packages: {exc.args[1]}") from None
    assert order.index("journal") < order.index("routing") < order.index("service")
    assert order.index("config") < order.index("connectors") < order.index("routing")


#: databases that are not the journal: the simulators' own stores, the MSSanté mailbox's state file
OWN_DATABASES = ("sim", "mss/store.py")


def test_no_sql_outside_the_journal():
    def journal_or_own(path: Path) -> bool:
        rel = path.relative_to(ENGINE).as_posix()
        return rel.startswith("journal/") or any(rel.startswith(own) for own in OWN_DATABASES)

    hits = [
        f"{path.relative_to(ENGINE.parent)}:{number}"
        for path in ENGINE.rglob("*.py")
        if not journal_or_own(path)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if SQL.search(line)
    ]
    assert hits == []
