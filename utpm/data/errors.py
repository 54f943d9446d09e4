"""How the data layer reports problems: one clear message naming file, line and problem."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class DataError(ValueError):
    """A file that cannot be used. The message names the file, the line (when known) and the problem."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


@dataclass
class LoadReport:
    """Warnings gathered while loading a usable data set (rows dropped, items without tags, ...)."""

    warnings: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
