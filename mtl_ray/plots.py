"""PNG plots for `mtl-ray compare`: metric bars, validation curves, task-weight trajectories."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from mtl_ray.compare import METRIC, CompareResult


def comparison_plots(result: CompareResult, directory: str) -> list[str]:
    """Write the three plots into `directory` (created if needed); returns their paths."""
    os.makedirs(directory, exist_ok=True)
    return [_bars(result, directory), _curves(result, directory), _weights(result, directory)]


def _save(fig, directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _value(v: float | None) -> float:
    return float("nan") if v is None else v


def _bars(result: CompareResult, directory: str) -> str:
    """Per-task validation AUROC: multi-task vs single-task (and the shuffle control)."""
    sides = [("multi-task", result.mtl.val), ("single-task", {t: r.val[t] for t, r in result.stl.items()})]
    if result.control is not None:
        sides.append(("shuffle control", result.control.val))
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(result.tasks), 3.6))
    width = 0.8 / len(sides)
    for k, (label, val) in enumerate(sides):
        xs = [i + (k - (len(sides) - 1) / 2) * width for i in range(len(result.tasks))]
        ax.bar(xs, [_value(val[t][METRIC]) for t in result.tasks], width, label=label)
    ax.set_xticks(range(len(result.tasks)), result.tasks, rotation=30, ha="right")
    ax.set_ylabel(f"validation {METRIC}")
    ax.set_ylim(0.4, 1.0)
    dm = result.delta_m_pct
    ax.set_title(f"Δm = {dm:+.1f} %" if dm is not None else "Δm: no metric")
    ax.legend(fontsize=8)
    return _save(fig, directory, "metrics.png")


def _curves(result: CompareResult, directory: str) -> str:
    """Validation AUROC per epoch, per task: multi-task solid, single-task dashed."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, t in enumerate(result.tasks):
        colour = f"C{i % 10}"
        for run, style in ((result.mtl, "-"), (result.stl[t], "--")):
            epochs = [h["epoch"] for h in run.history]
            ax.plot(epochs, [_value(h["val"][t][METRIC]) for h in run.history], style, color=colour, label=f"{t} ({'mtl' if run is result.mtl else 'stl'})")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"validation {METRIC}")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, directory, "curves.png")


def _weights(result: CompareResult, directory: str) -> str:
    """The multi-task run's per-task weights per epoch (flat for equal/static weighting)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    epochs = [h["epoch"] for h in result.mtl.history]
    for t in result.tasks:
        ax.plot(epochs, [h["task_weights"][t] for h in result.mtl.history], marker="o", label=t)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("task weight")
    ax.legend(fontsize=7)
    return _save(fig, directory, "task_weights.png")
