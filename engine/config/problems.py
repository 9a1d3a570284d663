"""Configuration problems reported as `file:line:col: message`, all at once."""

from __future__ import annotations

from pathlib import Path
from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


@dataclass
class Problems:
    items: list[Problem] = field(default_factory=list)

    def add(self, file: str | Path, position: tuple[int, int], message: str) -> None:
        self.items.append(Problem(str(file), position[0], position[1], message))

    def __bool__(self) -> bool:
        return bool(self.items)

    def sorted(self) -> list[Problem]:
        return sorted(set(self.items))
