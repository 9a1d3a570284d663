"""YAML loading that remembers where every value came from (1-based line and column)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class YamlSyntaxError(Exception):
    def __init__(self, line: int, col: int, message: str):
        super().__init__(message)
        self.position = (line, col)


def load_yaml(path: Path):
    yaml = YAML(typ="rt")
    try:
        return yaml.load(Path(path).read_text(encoding="utf-8"))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlSyntaxError(line, col, f"YAML syntax: {exc.problem or exc.context}") from exc


def position(node, key=None) -> tuple[int, int]:
    """Where `node[key]` (or `node` itself) is written; (1, 1) when unknown."""
    try:
        if key is not None and isinstance(node, CommentedMap) and key in node:
            line, col = (
                node.lc.value(key) if not isinstance(node[key], (CommentedMap, CommentedSeq)) else node.lc.key(key)
            )
            return line + 1, col + 1
        if key is not None and isinstance(node, CommentedSeq) and isinstance(key, int) and key < len(node):
            line, col = node.lc.item(key)
            return line + 1, col + 1
        return node.lc.line + 1, node.lc.col + 1
    except (AttributeError, TypeError, KeyError, IndexError):
        return 1, 1


def locate(root, loc: tuple) -> tuple[int, int]:
    """Position of a pydantic error location path inside the YAML tree (deepest known node)."""
    node, pos = root, position(root)
    for key in loc:
        if isinstance(node, CommentedMap) and key in node:
            pos, node = position(node, key), node[key]
        elif isinstance(node, CommentedSeq) and isinstance(key, int) and key < len(node):
            pos, node = position(node, key), node[key]
        else:
            break
    return pos


class MissingVariable(Exception):
    pass


def expand_env(value, environ=None):
    """Replace ${VAR} and ${VAR:-default} in strings, recursively; unknown variables raise."""
    environ = os.environ if environ is None else environ
    if isinstance(value, str):

        def sub(match):
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise MissingVariable(f"environment variable {name} is not set")

        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, environ) for v in value]
    return value
