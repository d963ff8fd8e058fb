"""Masked binary cross-entropy for multi-task labels where NaN means "unknown".

Torch's BCE has no ignore_index, and NaN targets poison a loss even when multiplied by a zero
mask, so unknown targets are replaced before the loss and their terms removed with `torch.where`.
That keeps the loss and its gradient finite, with exactly zero gradient on unknown entries, even
when a whole task column or the whole batch is unknown. Denominators are clamped to 1 so an empty
count yields 0 rather than 0/0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mtl_ray.errors import UserError

REDUCTIONS = ("seed", "labeled", "per_task", "sqrt")


def _masked_terms(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise float32 BCE [m, T] with unknown entries set to 0, and the known mask [m, T]."""
    if logits.dim() != 2 or logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must both be [m, T]")
    targets = targets.to(device=logits.device, dtype=torch.float32)
    known = ~torch.isnan(targets)
    safe_targets = torch.where(known, targets, torch.zeros_like(targets))
    bce = F.binary_cross_entropy_with_logits(logits.float(), safe_targets, reduction="none")
    return torch.where(known, bce, torch.zeros_like(bce)), known


def _weights(task_weights: Sequence[float] | torch.Tensor | None, num_tasks: int, device: torch.device) -> torch.Tensor:
    """Task weights as a float32 tensor [T] on `device` (all ones when none are given)."""
    if task_weights is None:
        return torch.ones(num_tasks, device=device)
    weights = torch.as_tensor(task_weights, dtype=torch.float32, device=device)
    if weights.shape != (num_tasks,):
        raise UserError(f"task weights: expected {num_tasks} values (one per task), got shape {tuple(weights.shape)}")
    return weights


def task_terms(logits: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
    """Each task's additive share of the masked loss → [T], so that for any weights w
    `masked_bce(logits, targets, w, reduction) == (w * task_terms(logits, targets, reduction)).sum()`.

    Task j's term is the sum of its known BCE terms divided by the reduction's denominator: the
    batch size m ("seed"), the number of known entries in the batch ("labeled"), task j's own
    number of known labels nⱼ ("per_task"), or √(m·nⱼ) ("sqrt": the same as "seed" for a fully
    labeled task, while a task labeled on a fraction f of the rows weighs 1/√f times more than under
    "seed" — enough that a label-starved task shapes the shared trunk, without the 1/f of
    "per_task", whose noisy few-label gradient drowns the other tasks). A task with no known label
    gets 0 with zero gradient.
    Weighting methods (`mtl_ray.weighting`) combine these terms.
    """
    if reduction not in REDUCTIONS:
        raise UserError(f"loss reduction {reduction!r}: expected one of {', '.join(REDUCTIONS)}")
    bce, known = _masked_terms(logits, targets)
    sums = bce.sum(dim=0)
    if reduction == "seed":
        return sums / max(bce.shape[0], 1)
    if reduction == "labeled":
        return sums / known.sum().clamp_min(1)
    if reduction == "sqrt":
        return sums / (known.sum(dim=0).clamp_min(1) * bce.shape[0]).sqrt()
    return sums / known.sum(dim=0).clamp_min(1)


@dataclass(frozen=True)
class BatchLosses:
    """One batch's mean BCE over each task's known labels and how many there were, both [T] and
    detached: how far a task has come, whatever the loss reduction weighs its term by (a task
    labeled on 5 % of the rows has one to seven labels in a batch of 32)."""

    mean: torch.Tensor
    counts: torch.Tensor


def batch_losses(logits: torch.Tensor, targets: torch.Tensor) -> BatchLosses:
    """`BatchLosses` of `logits` [m, T] against `targets` [m, T] (NaN = unknown); 0 for a task with no
    known label."""
    bce, known = _masked_terms(logits.detach(), targets)
    counts = known.sum(dim=0)
    return BatchLosses(bce.sum(dim=0) / counts.clamp_min(1), counts)


def known_tasks(targets: torch.Tensor) -> torch.Tensor:
    """Bool [T]: whether each task has at least one known (non-NaN) label in `targets` [m, T]."""
    return ~torch.isnan(targets).all(dim=0)


def per_task_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the known labels of each task → [T]; 0 for a task with no known label."""
    return task_terms(logits, targets, reduction="per_task")


def masked_bce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    task_weights: Sequence[float] | torch.Tensor | None = None,
    reduction: str = "seed",
) -> torch.Tensor:
    """Weighted BCE over known labels, reduced to a scalar.

    `logits` [m, T]; `targets` float [m, T] with NaN = unknown; `task_weights` [T] (default 1).
    Reductions (w = weight, sums over known (i, j) only):
    - "seed": Σ wⱼ·BCEᵢⱼ / m — the multi-task formulation; tasks count by how many labels they have.
    - "labeled": Σ wⱼ·BCEᵢⱼ / number of known entries.
    - "per_task": Σⱼ wⱼ · (mean over known i of BCEᵢⱼ) — every task counts equally; a task with no
      known label contributes 0.
    The result is float32 whatever the logits' dtype (e.g. bf16 under autocast). `reduction`
    defaults to the seed's J, as the published API says; training passes `TrainConfig.loss_reduction`.
    """
    terms = task_terms(logits, targets, reduction)
    return (terms * _weights(task_weights, terms.shape[0], terms.device)).sum()
