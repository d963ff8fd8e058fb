"""What every command returns, and the plain-text pieces of its summary.

Each command's API function returns a `Result`: `to_json()` is its `--json` summary, `render()` the
lines a person reads, `exit_code` what the CLI exits with, and `problems` the one-line errors it
prints on stderr when that code is not 0. The CLI (`mtl_ray.cli.app.run`) knows nothing else about
a command's result.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any


class Result(ABC):
    """Base of the dataclasses commands return. `to_json` defaults to the fields, with nested
    results and dataclasses turned into their JSON too; `exit_code` to 0, `problems` to none."""

    def to_json(self) -> dict:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @abstractmethod
    def render(self) -> str:
        """The human summary, printed on stdout (stderr with `--json -`)."""

    @property
    def exit_code(self) -> int:
        return 0

    problems: tuple[str, ...] = ()
    """One-line errors printed on stderr when `exit_code` is not 0 (a field or property in results that have some)."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, Result):
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def number(value: float | None, fmt: str = ".3f") -> str:
    """`value` formatted, or '-' when there is none (e.g. AUROC of a one-class task)."""
    return "-" if value is None else format(value, fmt)


def plural(n: int, noun: str) -> str:
    """'1 shard', '3 shards'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a table: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    return [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in [head] + rows
    ]
