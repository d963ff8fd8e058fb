"""Per-task validation metrics over known labels only, in NumPy.

The same values as scikit-learn's `roc_auc_score`, `accuracy_score` and `f1_score` (tests hold them
to it), without importing scikit-learn: that import took 1.7 of the 4.3 s it took a Ray Train
worker to import its loop, in every worker of every run.

Every value is a plain Python float/int or None so results go straight into JSON. A task whose
known labels hold a single class has no AUROC (None) — it is not an error, just undefined — and a
task with no known label has no metrics at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

THRESHOLD = 0.5
METRIC = "auroc"
"""The metric every comparison, gate and search ranks by (higher is better)."""


def task_metrics(probs: np.ndarray, targets: np.ndarray) -> dict:
    """AUROC, accuracy and F1 (positive class, threshold 0.5) of one task, and n_labeled.

    `probs` and `targets` are 1-D; NaN targets are unknown and left out. F1 is 0.0 when neither
    labels nor predictions hold a positive (`zero_division=0`). Probabilities that are not finite
    (a diverged model) give no scores and a `nonfinite` count instead.
    """
    known = ~np.isnan(targets)
    y = targets[known].astype(np.int64)
    p = probs[known]
    n = int(y.size)
    if n == 0:
        return {"auroc": None, "accuracy": None, "f1": None, "n_labeled": 0}
    nonfinite = int((~np.isfinite(p)).sum())
    if nonfinite:  # a diverged model: no score, and the count that says why
        return {"auroc": None, "accuracy": None, "f1": None, "n_labeled": n, "nonfinite": nonfinite}
    pred = (p >= THRESHOLD).astype(np.int64)
    positives = int(y.sum())
    hits = int((pred & y).sum())
    predicted = int(pred.sum())
    return {
        "auroc": auroc(y, p) if 0 < positives < n else None,
        "accuracy": float((pred == y).mean()),
        "f1": 2 * hits / (positives + predicted) if positives + predicted else 0.0,
        "n_labeled": n,
    }


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    """The area under the ROC curve of 0/1 labels `y` (both classes present) scored `p`: the
    Mann-Whitney U of the positives' ranks, tied scores sharing their mean rank (a tie counts 1/2)."""
    _, where, counts = np.unique(p, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[where]
    positive = y == 1
    n_pos = int(positive.sum())
    n_neg = y.size - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


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


def best_epoch(history: Sequence[Mapping]) -> Mapping | None:
    """The epoch of `history` (entries with "mean_auroc") with the highest validation mean AUROC, the
    earliest of equals; None when no epoch has one."""
    scored = [h for h in history if h.get("mean_auroc") is not None]
    return max(scored, key=lambda h: h["mean_auroc"]) if scored else None


def patience_spent(history: Sequence[Mapping], patience: int | None) -> bool:
    """Early stopping: `patience` epochs have gone by since the best one (never, with None)."""
    best = best_epoch(history)
    return patience is not None and best is not None and history[-1]["epoch"] - best["epoch"] >= patience
