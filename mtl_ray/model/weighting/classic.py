"""The weightings that need one backward pass: equal, static, uncertainty (Kendall et al. 2018) and
DWA (Liu et al. 2019)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from mtl_ray.errors import UserError
from mtl_ray.model.weighting.base import ReduceMean, Weighting, known_only, number


class Equal(Weighting):
    """Every task term weighted 1: the plain sum, a strong baseline when tuned (Kurin et al. 2022;
    Xin et al. 2022)."""

    name = "equal"


class Static(Weighting):
    """Fixed per-task weights from the config, one non-negative number per task."""

    name = "static"
    per_task_parameters = ("weights",)

    def __init__(
        self, num_tasks: int, reduce_mean: ReduceMean | None = None, weights: Sequence[float] | None = None
    ) -> None:
        super().__init__(num_tasks, reduce_mean)
        if weights is None:
            raise UserError(
                f"weighting 'static': parameter 'weights' is required: a list of {num_tasks} numbers >= 0, one per task"
            )
        if not isinstance(weights, (list, tuple)):
            raise UserError(
                f"weighting 'static': parameter 'weights' must be a list of {num_tasks} numbers >= 0, got {weights!r}"
            )
        if len(weights) != num_tasks:
            raise UserError(f"weighting 'static': expected {num_tasks} weights (one per task), got {len(weights)}")
        values = [number(self.name, "weights", w) for w in weights]
        self.register_buffer("task_weights", torch.tensor(values), persistent=False)

    def current_weights(self) -> torch.Tensor:
        return self.task_weights


class Uncertainty(Weighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018):
    Σₖ ½·e^(−sₖ)·ℓₖ + ½·sₖ over the known tasks, with learnable sₖ = log σₖ² starting at 0.

    `log_vars` is trained by the main optimizer. A noisy task's loss stays high, so its sₖ grows
    (toward log ℓₖ) and its weight ½·e^(−sₖ) shrinks.
    """

    name = "uncertainty"

    def __init__(self, num_tasks: int, reduce_mean: ReduceMean | None = None) -> None:
        super().__init__(num_tasks, reduce_mean)
        self.log_vars = nn.Parameter(torch.zeros(num_tasks))

    def current_weights(self) -> torch.Tensor:
        return 0.5 * torch.exp(-self.log_vars)

    def loss(self, terms: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        per_task = self.current_weights() * terms + 0.5 * self.log_vars
        return known_only(per_task, known).sum()


class DWA(Weighting):
    """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019): wₖ = T·softmax(rₖ / temperature)
    with rₖ = Lₖ(t−1) / Lₖ(t−2), each task's mean loss ratio over the last two epochs, so a task
    whose loss falls slowly gets more weight. Weights are 1 for the first two epochs, and rₖ = 1
    for a task without loss in either epoch. Epoch means go through `reduce_mean`.
    """

    name = "dwa"

    def __init__(self, num_tasks: int, reduce_mean: ReduceMean | None = None, temperature: float = 2.0) -> None:
        super().__init__(num_tasks, reduce_mean)
        self.temperature = number(self.name, "temperature", temperature, positive=True)
        self.register_buffer("task_weights", torch.ones(num_tasks))
        self.register_buffer("history", torch.full((2, num_tasks), math.nan))

    def current_weights(self) -> torch.Tensor:
        return self.task_weights

    def epoch_end(self, mean_terms: torch.Tensor) -> None:
        mean = self.reduce_mean(mean_terms.detach().float().to(self.history.device))
        self.history.copy_(torch.stack([self.history[1], mean]))
        before, last = self.history
        if torch.isnan(before).any():
            return
        defined = (before > 0) & (last > 0)
        ratio = torch.where(defined, last / before.clamp_min(1e-12), torch.ones_like(last))
        self.task_weights.copy_(self.num_tasks * torch.softmax(ratio / self.temperature, dim=0))
