"""routes.yaml: what arrives where goes where (full step language: engine.routing)."""

from __future__ import annotations

from pathlib import Path

from engine.config.problems import Problems
from engine.config.yamlfile import YamlSyntaxError, load_yaml, position


def load_routes(path: Path, channels: dict, root: Path, problems: Problems) -> list:
    if not path.exists():
        return []
    try:
        tree = load_yaml(path)
    except YamlSyntaxError as exc:
        problems.add(path, exc.position, str(exc))
        return []
    if tree is None:
        return []
    routes = tree.get("routes") if isinstance(tree, dict) else None
    if not isinstance(routes, list):
        problems.add(path, position(tree), "routes.yaml must be a mapping with a `routes:` list")
        return []
    return list(routes)
