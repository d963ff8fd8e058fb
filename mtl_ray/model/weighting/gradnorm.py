"""GradNorm (Chen et al. 2018): task weights adapted so that each task's gradient on the last shared
layer grows with how slowly the task trains."""

from __future__ import annotations

import math

import torch
from torch import nn

from mtl_ray.model.backbones import unwrap
from mtl_ray.model.losses import BatchLosses
from mtl_ray.model.weighting.base import ReduceMean, Weighting, flat_grads, integer, number, trainable


class GradNorm(Weighting):
    """GradNorm (Chen et al., ICML 2018): adapts weights wₖ so that the gradient norm of wₖ·ℓₖ on
    the last shared layer, Gₖ = wₖ·‖∇ℓₖ‖, approaches mean(G)·rₖ^α, where rₖ = (Lₖ/Lₖ(0)) divided
    by its mean over tasks is the relative inverse training rate: tasks that train slower get
    larger gradients.

    The model's gradient uses the current weights; then wₖ take one step down
    L_grad = Σₖ |Gₖ − target_k| (targets held constant) and are renormalised to sum to T. The
    step's gradient is scaled to unit RMS, so `lr` is in weight units whatever the gradient
    scale. Gₖ is the gradient of the task's term ℓₖ in the objective; the training rate Lₖ/Lₖ(0)
    is read from the task's mean loss over its known labels, which the loss reduction does not
    scale by the batch's label count. Lₖ(0) is that mean over all the labels of the first
    `initial_batches` batches that hold labels of task k: from one batch, a task labeled on 5 %
    of the rows would start from one to seven labels, and its ratio would carry that noise for the
    whole run. A task takes part in the step once its Lₖ(0) is known; a task without a known label
    in the batch keeps its weight. Means, norms and weights go through `reduce_mean`, in one call
    per batch, as means over the workers that know each task.
    """

    name = "gradnorm"
    manipulates_gradients = True
    MIN_WEIGHT = 1e-3

    def __init__(
        self,
        num_tasks: int,
        reduce_mean: ReduceMean | None = None,
        alpha: float = 1.5,
        lr: float = 0.025,
        initial_batches: int = 8,
    ) -> None:
        super().__init__(num_tasks, reduce_mean)
        self.alpha = number(self.name, "alpha", alpha)
        self.lr = number(self.name, "lr", lr, positive=True)
        self.initial_batches = integer(self.name, "initial_batches", initial_batches, minimum=1)
        self.register_buffer("task_weights", torch.ones(num_tasks))
        self.register_buffer("initial_losses", torch.full((num_tasks,), math.nan))
        # Lₖ(0) while it is gathered: label-weighted loss sum, labels, and batches seen.
        self.register_buffer("initial_sums", torch.zeros(3, num_tasks))

    def current_weights(self) -> torch.Tensor:
        return self.task_weights

    def backward(self, terms: torch.Tensor, known: torch.Tensor, model: nn.Module, losses: BatchLosses) -> torch.Tensor:
        layer = trainable(unwrap(model).last_shared_layer().parameters())
        norms = torch.zeros(self.num_tasks, device=terms.device)
        for k in known.nonzero().flatten().tolist():
            norms[k] = flat_grads(terms[k], layer).norm()
        total = self.loss(terms, known)
        total.backward()
        self._update(losses, norms, known.to(terms.device))
        return total.detach()

    def _update(self, losses: BatchLosses, norms: torch.Tensor, known: torch.Tensor) -> None:
        flags = known.float()
        mean, counts = losses.mean.float().to(flags.device), losses.counts.float().to(flags.device)
        stats = self.reduce_mean(
            torch.stack([mean * flags, norms * flags, flags, self.task_weights, mean * counts, counts])
        )
        share = stats[2]
        current, norms = stats[0] / share.clamp_min(1e-12), stats[1] / share.clamp_min(1e-12)
        seen = share > 0
        weights = stats[3].clone()
        gathering = seen & torch.isnan(self.initial_losses)
        self.initial_sums[:, gathering] += torch.stack([stats[4], stats[5], torch.ones_like(share)])[:, gathering]
        loss_sum, labels, batches = self.initial_sums
        ready = gathering & (batches >= self.initial_batches)
        self.initial_losses[ready] = loss_sum[ready] / labels[ready]
        active = seen & (self.initial_losses > 0)
        if active.sum() >= 2:
            rate = current[active] / self.initial_losses[active]
            rate = rate / rate.mean()
            grad_norms = weights[active] * norms[active]
            target = grad_norms.mean() * rate**self.alpha
            # d|Gₖ − target_k| / dwₖ with the target constant and Gₖ = wₖ·‖∇ℓₖ‖.
            step = torch.sign(grad_norms - target) * norms[active]
            rms = step.square().mean().sqrt()
            if rms > 0:
                budget = self.num_tasks - weights[~active].sum()
                updated = (weights[active] - self.lr * step / rms).clamp_min(self.MIN_WEIGHT)
                weights[active] = updated * (budget / updated.sum())
        self.task_weights.copy_(weights)
