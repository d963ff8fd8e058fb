"""Task weighting: how the per-task loss terms become one update, selected by name.

Every method is a `Weighting` module. Per batch the train loop passes it the per-task terms from
`losses.task_terms`, which tasks have a known label (`losses.known_tasks`) and the tasks' mean losses
over their known labels (`losses.batch_losses`, for methods that follow each task's training rate);
`backward` runs the backward pass(es) and leaves gradients in `.grad`. A task with no known label
in the batch is masked out: it contributes no gradient, no regulariser and no state update.

Optimizer: `weighting.parameters()` is exactly what the main optimizer must also train (only
`uncertainty`'s log-variances; put them in a group without weight decay, which would pull them
toward 0). State a method updates itself (GradNorm's weights, DWA's loss history) lives in buffers,
so `state_dict()` checkpoints everything and `.to(device)` moves it.

DDP: `reduce_mean` (default identity; the train loop gives `step.mean_over_workers`) averages a tensor
over workers. Every method passes whatever decides its weights through it, in the same calls on
every worker, so all workers hold the same weights; the weighting's own parameter gradients go
through it too, since DDP does not see them. Methods with `manipulates_gradients` (gradnorm,
pcgrad) take several backward passes per batch, so the loop runs forward and `backward` under DDP
`no_sync()` and all-reduces the model's gradients afterwards.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from mtl_ray.errors import UserError
from mtl_ray.model.losses import BatchLosses, batch_losses, known_tasks, task_terms

ReduceMean = Callable[[torch.Tensor], torch.Tensor]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def known_only(terms: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """`terms` with unknown tasks' entries replaced by 0 (`where`, so even a NaN cannot leak)."""
    return torch.where(known.to(terms.device), terms, torch.zeros_like(terms))


def trainable(params) -> list[nn.Parameter]:
    return [p for p in params if p.requires_grad]


def flat_grads(loss: torch.Tensor, params: list[nn.Parameter]) -> torch.Tensor:
    """d loss / d params, flattened and concatenated (zeros for parameters it does not reach)."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1).float() for p, g in zip(params, grads, strict=True)]
    )


def task_grads(terms: torch.Tensor, known: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor:
    """Each known task's gradient of its term on `inputs` (parameters, or a representation in the
    graph), flattened → [T, P]; rows of tasks without a known label stay 0."""
    grads = torch.zeros(terms.shape[0], sum(t.numel() for t in inputs), device=terms.device)
    for k in known.nonzero().flatten().tolist():
        grads[k] = flat_grads(terms[k], inputs)
    return grads


def add_grads(params: list[nn.Parameter], flat: torch.Tensor) -> None:
    """Add the flat gradient `flat` [P] to `.grad` of `params`, in their order and dtypes."""
    for p, g in zip(params, flat.split([p.numel() for p in params]), strict=True):
        g = g.view(p.shape).to(p.dtype)
        if p.grad is None:
            p.grad = torch.empty_like(p).copy_(g)
        else:
            p.grad.add_(g)


class Weighting(nn.Module):
    """Base class: combines per-task loss terms [T] into gradients. Subclasses set `name` and
    override `current_weights` (plus `loss` when the objective is more than a weighted sum of
    the terms), or `backward` itself when they need more than one backward pass."""

    name: ClassVar[str]
    manipulates_gradients: ClassVar[bool] = False
    uses_features: ClassVar[bool] = False
    """Whether `backward` reads the trunk's output of the batch (`MultiTaskNet.features`), which the
    train step then asks the model to keep."""
    needs_losses_after_step: ClassVar[bool] = False
    """Whether the train step, after the optimizer's step, evaluates the batch again and passes its
    losses to `after_step`."""
    per_task_parameters: ClassVar[tuple[str, ...]] = ()
    """Config parameters that hold one value per task (a group's weighting takes its tasks' values)."""

    def __init__(self, num_tasks: int, reduce_mean: ReduceMean | None = None) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be at least 1, got {num_tasks}")
        self.num_tasks = num_tasks
        self.reduce_mean: ReduceMean = reduce_mean or _identity

    @classmethod
    def parameter_names(cls) -> list[str]:
        """The method's config parameters: its constructor's keywords after the common ones."""
        names = list(inspect.signature(cls.__init__).parameters)
        return [n for n in names if n not in ("self", "num_tasks", "reduce_mean")]

    def current_weights(self) -> torch.Tensor:
        """Per-task multipliers [T] of the task terms in the objective."""
        return torch.ones(self.num_tasks)

    def weights(self) -> list[float]:
        """Current per-task weights, for logging."""
        return self.current_weights().detach().cpu().tolist()

    def loss(self, terms: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """The scalar objective over the known tasks."""
        return (self.current_weights().to(terms.device) * known_only(terms, known)).sum()

    def backward(self, terms: torch.Tensor, known: torch.Tensor, model: nn.Module, losses: BatchLosses) -> torch.Tensor:
        """Back-propagate the objective into `.grad` of `model`'s and this module's parameters.

        `terms` [T] from `losses.task_terms`, `known` bool [T] from `losses.known_tasks`, `losses` from
        `losses.batch_losses`. Returns the objective, detached, for logging.
        """
        total = self.loss(terms, known)
        total.backward()
        self._reduce_parameter_grads()
        return total.detach()

    def backward_batch(
        self, model: nn.Module, logits: torch.Tensor, labels: torch.Tensor, reduction: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`backward` on a batch's logits [m, T] and labels [m, T] (NaN = unknown) under the loss
        `reduction`: the train step's entry. Returns the objective and the task terms [T], detached."""
        terms = task_terms(logits, labels, reduction)
        loss = self.backward(terms, known_tasks(labels), model, batch_losses(logits, labels))
        return loss, terms.detach()

    def after_step(self, losses: BatchLosses, known: torch.Tensor) -> None:
        """With `needs_losses_after_step`: the batch's losses under the updated parameters; no-op by default."""

    def epoch_end(self, mean_terms: torch.Tensor) -> None:
        """Per-epoch hook with the epoch's mean task terms [T] on this worker; no-op by default."""

    def _reduce_parameter_grads(self) -> None:
        params = list(self.parameters())
        if not params:
            return
        flat = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in params])
        flat = self.reduce_mean(flat)
        for p, g in zip(params, flat.split([p.numel() for p in params]), strict=True):
            p.grad = g.view_as(p).clone()


def number(method: str, name: str, value: Any, *, positive: bool = False) -> float:
    """`value` as a float, or a UserError naming the parameter; numbers must be ≥ 0 (or > 0)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise UserError(f"weighting {method!r}: parameter {name!r} must be a number {bound}, got {value!r}")
    return float(value)


def integer(method: str, name: str, value: Any, *, minimum: int | None = None) -> int:
    """`value` as an int, or a UserError naming the parameter (and its `minimum`, if any)."""
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise UserError(f"weighting {method!r}: parameter {name!r} must be an integer{bound}, got {value!r}")
    return value
