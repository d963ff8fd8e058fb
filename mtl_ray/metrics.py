"""Per-task validation metrics over known labels only, in numpy.

Every value is a plain Python float/int or None so results go straight into JSON. A task whose
known labels hold a single class has no AUROC (None) — it is not an error, just undefined — and a
task with no known label has no metrics at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

THRESHOLD = 0.5


def task_metrics(probs: np.ndarray, targets: np.ndarray) -> dict:
    """AUROC, accuracy and F1 (positive class, threshold 0.5) of one task, and n_labeled.

    `probs` and `targets` are 1-D; NaN targets are unknown and left out. F1 is 0.0 when neither
    labels nor predictions hold a positive (scikit-learn's `zero_division=0`).
    """
    known = ~np.isnan(targets)
    y = targets[known].astype(np.int64)
    p = probs[known]
    n = int(y.size)
    if n == 0:
        return {"auroc": None, "accuracy": None, "f1": None, "n_labeled": 0}
    pred = (p >= THRESHOLD).astype(np.int64)
    true_pos = int(np.sum((pred == 1) & (y == 1)))
    predicted, actual = int(pred.sum()), int(y.sum())
    return {
        "auroc": auroc(y, p) if 0 < actual < n else None,
        "accuracy": float(np.mean(pred == y)),
        "f1": 2.0 * true_pos / (predicted + actual) if predicted + actual else 0.0,
        "n_labeled": n,
    }


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic: the chance that a random positive
    scores above a random negative, ties counting half (average ranks)."""
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    positives = int(y.sum())
    negatives = y.size - positives
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def evaluate(probs: np.ndarray, targets: np.ndarray, tasks: Sequence[str]) -> dict[str, dict]:
    """{task: {auroc, accuracy, f1, n_labeled}} from probabilities [N, T] and targets [N, T] (NaN = unknown)."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != targets.shape or probs.shape[1] != len(tasks):
        raise ValueError(
            f"probs {probs.shape} and targets {targets.shape} must both be [N, {len(tasks)}] for tasks {list(tasks)}"
        )
    return {task: task_metrics(probs[:, j], targets[:, j]) for j, task in enumerate(tasks)}


def mean_auroc(per_task: Mapping[str, Mapping]) -> float | None:
    """Mean AUROC over the tasks that have one; None if none has."""
    values = [m["auroc"] for m in per_task.values() if m["auroc"] is not None]
    return float(np.mean(values)) if values else None
