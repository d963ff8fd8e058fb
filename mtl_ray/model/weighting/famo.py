"""FAMO (Liu et al., NeurIPS 2023): task weights learned from how much each task's loss fell in the
last step, at the cost of one extra forward pass instead of one backward pass per task."""

from __future__ import annotations

import torch
from torch import nn

from mtl_ray.model.losses import BatchLosses
from mtl_ray.model.weighting.base import ReduceMean, Weighting, known_only, number

EPS = 1e-8


class FAMO(Weighting):
    """Fast Adaptive Multitask Optimization: the model descends Σₖ zₖ·log ℓₖ / c with z = softmax(ξ) and
    c = Σₖ zₖ/ℓₖ, so every task's loss falls at a rate set by z, the weights term_k gets being
    zₖ/(c·ℓₖ) (times the number of known tasks, equal weighting's scale). After the step the batch is
    evaluated again (`needs_losses_after_step`) and the logits ξ take one Adam step (`lr`, L2 decay
    `gamma`, the paper's 0.025 and 0.01) along the softmax's Jacobian times δₖ = log ℓₖ(before) −
    log ℓₖ(after): a task whose loss fell more than the z-weighted average loses weight.

    ℓₖ is the task's loss term (log makes the loss reduction's per-task factor irrelevant); δ uses the
    mean loss over the task's known labels. Losses go through `reduce_mean` as means over the workers
    that know the task, so every worker holds the same ξ. Only the tasks with a known label in the
    batch take part: the softmax is over them, and the others keep ξ and their Adam moments.
    """

    name = "famo"
    needs_losses_after_step = True
    BETAS = (0.9, 0.999)

    def __init__(
        self, num_tasks: int, reduce_mean: ReduceMean | None = None, lr: float = 0.025, gamma: float = 0.01
    ) -> None:
        super().__init__(num_tasks, reduce_mean)
        self.lr = number(self.name, "lr", lr, positive=True)
        self.gamma = number(self.name, "gamma", gamma)
        self.register_buffer("logits", torch.zeros(num_tasks))
        # Adam's moments and step count per task; the task's mean losses before the step.
        self.register_buffer("adam", torch.zeros(3, num_tasks))
        self.register_buffer("before", torch.full((num_tasks,), torch.nan))
        self.register_buffer("task_weights", torch.ones(num_tasks))

    def current_weights(self) -> torch.Tensor:
        return self.task_weights

    def _global(self, values: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Means of the rows of `values` [N, T] over the workers that know each task, and which tasks
        any worker knows."""
        flags = known.float().to(values.device)
        stats = self.reduce_mean(torch.cat([flags[None], values.float() * flags]))
        return stats[1:] / stats[0].clamp_min(1e-12), stats[0] > 0

    def backward(self, terms: torch.Tensor, known: torch.Tensor, model: nn.Module, losses: BatchLosses) -> torch.Tensor:
        masked = known_only(terms, known)
        (term_means, mean_losses), anywhere = self._global(
            torch.stack([terms.detach(), losses.mean.to(terms.device)]), known
        )
        active = anywhere & (term_means > 0)
        weights = torch.zeros(self.num_tasks, device=terms.device)
        if active.any():
            z = torch.softmax(self.logits.to(terms.device)[active], dim=0)
            inverse = z / (term_means[active] + EPS)
            weights[active] = inverse / inverse.sum() * int(active.sum())
            self.task_weights[active] = weights[active].to(self.task_weights.device)
        self.before.copy_(torch.where(active, mean_losses, torch.full_like(mean_losses, torch.nan)))
        total = (weights * masked).sum()
        total.backward()
        return total.detach()

    def after_step(self, losses: BatchLosses, known: torch.Tensor) -> None:
        after = self._global(losses.mean.to(self.before.device)[None], known)[0][0]
        active = ~torch.isnan(self.before)
        if not active.any():
            return
        delta = torch.log(self.before[active] + EPS) - torch.log(after[active] + EPS)
        z = torch.softmax(self.logits[active], dim=0)
        grad = z * (delta - z @ delta) + self.gamma * self.logits[active]
        moment, second, steps = self.adam[:, active]
        (beta1, beta2), steps = self.BETAS, steps + 1
        moment = beta1 * moment + (1 - beta1) * grad
        second = beta2 * second + (1 - beta2) * grad**2
        update = (moment / (1 - beta1**steps)) / ((second / (1 - beta2**steps)).sqrt() + EPS)
        self.logits[active] -= self.lr * update
        self.adam[:, active] = torch.stack([moment, second, steps])
        self.before.fill_(torch.nan)
