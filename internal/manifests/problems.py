"""Validation problems: every error names the file and the field path."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    file: str
    path: str  # e.g. "spec.container.env[2].name"; empty for whole-file problems
    message: str

    def __str__(self) -> str:
        text = (
            f"{self.file}: {self.path}: {self.message}"
            if self.path
            else f"{self.file}: {self.message}"
        )
        return printable(text)


_MAX_LINE = 1000


def printable(text: str) -> str:
    """One printable line: control characters escaped (a value may hold a newline or a
    terminal escape), very long lines shortened."""
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text):
        text = "".join(
            f"\\x{ord(c):02x}" if ord(c) < 32 or 127 <= ord(c) < 160 else c for c in text
        )
    if len(text) > _MAX_LINE:
        text = text[: _MAX_LINE - 3] + "..."
    return text


class ValidationError(ValueError):
    """One or more problems, reported together (one per line)."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def join_path(base: str, name: str) -> str:
    return f"{base}.{name}" if base else name


def index_path(base: str, index: int) -> str:
    return f"{base}[{index}]"


def key_path(base: str, key: str) -> str:
    if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key):
        return join_path(base, key)
    escaped = key.replace("\\", "\\\\").replace('"', '\\"')
    return f'{base}["{escaped}"]'


class Reporter:
    """Collects problems for one file; remembers which paths the file actually wrote."""

    def __init__(self, file: str, present: frozenset[str] = frozenset()) -> None:
        self.file = file
        self.present = present
        self.problems: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.file, path, message))

    def written(self, path: str) -> bool:
        return path in self.present
