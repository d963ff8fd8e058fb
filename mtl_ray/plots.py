"""PNG plots from plain numbers: grouped bars and line curves.

Callers (`compare`, and any command that writes figures) turn their results into series here, so
this module knows nothing about them. matplotlib is imported with this module: import it lazily.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
from matplotlib.ticker import MaxNLocator  # noqa: E402


@dataclass(frozen=True)
class Line:
    """One curve: its legend label, points, and matplotlib style ("-", "--", ...) and colour."""

    label: str
    x: Sequence[float]
    y: Sequence[float | None]
    style: str = "-"
    colour: str | None = None
    marker: str | None = None


def _values(values: Sequence[float | None]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bars(
    path: str,
    categories: Sequence[str],
    series: dict[str, Sequence[float | None]],
    *,
    ylabel: str,
    title: str = "",
    ylim: tuple[float, float] | None = None,
) -> str:
    """Grouped bars: one group per category, one bar per series (None = missing)."""
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(categories), 3.6))
    width = 0.8 / max(len(series), 1)
    for k, (label, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(categories))]
        ax.bar(xs, _values(values), width, label=label)
    ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def curves(
    path: str,
    lines: Sequence[Line],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    integer_x: bool = True,
    log_x: bool = False,
) -> str:
    """Line curves (None = missing point)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for line in lines:
        ax.plot(list(line.x), _values(line.y), line.style, color=line.colour, marker=line.marker, label=line.label)
    ax.set_xlabel(xlabel)
    if log_x:
        ax.set_xscale("log")
    elif integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)
