"""Plain-text summaries for the CLI: aligned tables and optional numbers."""

from __future__ import annotations


def number(value: float | None, fmt: str = ".3f") -> str:
    """`value` formatted, or '-' when there is none (e.g. AUROC of a one-class task)."""
    return "-" if value is None else format(value, fmt)


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a table: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    return [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in [head] + rows
    ]
