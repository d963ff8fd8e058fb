"""GradNorm (Chen et al. 2018): task weights adapted so that each task's gradient on the last shared
layer grows with how slowly the task trains."""

from __future__ import annotations

import math

import torch
from torch import nn

from mtl_ray.model.backbones import unwrap
from mtl_ray.model.weighting.base import ReduceMean, Weighting, flat_grads, number, trainable


class GradNorm(Weighting):
    """GradNorm (Chen et al., ICML 2018): adapts weights wₖ so that the gradient norm of wₖ·ℓₖ on
    the last shared layer, Gₖ = wₖ·‖∇ℓₖ‖, approaches mean(G)·rₖ^α, where rₖ = (ℓₖ/ℓₖ(0)) divided
    by its mean over tasks is the relative inverse training rate: tasks that train slower get
    larger gradients.

    The model's gradient uses the current weights; then wₖ take one step down
    L_grad = Σₖ |Gₖ − target_k| (targets held constant) and are renormalised to sum to T. The
    step's gradient is scaled to unit RMS, so `lr` is in weight units whatever the gradient
    scale. ℓₖ(0) is a task's first term with a known label. Tasks without a known label keep
    their weight and take no part in the step. Norms, terms and weights go through
    `reduce_mean`, in one call per batch, as means over the workers that know each task.
    """

    name = "gradnorm"
    manipulates_gradients = True
    MIN_WEIGHT = 1e-3

    def __init__(
        self, num_tasks: int, reduce_mean: ReduceMean | None = None, alpha: float = 1.5, lr: float = 0.025
    ) -> None:
        super().__init__(num_tasks, reduce_mean)
        self.alpha = number(self.name, "alpha", alpha)
        self.lr = number(self.name, "lr", lr, positive=True)
        self.register_buffer("task_weights", torch.ones(num_tasks))
        self.register_buffer("initial_terms", torch.full((num_tasks,), math.nan))

    def current_weights(self) -> torch.Tensor:
        return self.task_weights

    def backward(self, terms: torch.Tensor, known: torch.Tensor, model: nn.Module) -> torch.Tensor:
        layer = trainable(unwrap(model).last_shared_layer().parameters())
        norms = torch.zeros(self.num_tasks, device=terms.device)
        for k in known.nonzero().flatten().tolist():
            norms[k] = flat_grads(terms[k], layer).norm()
        total = self.loss(terms, known)
        total.backward()
        self._update(terms.detach().float(), norms, known.to(terms.device))
        return total.detach()

    def _update(self, terms: torch.Tensor, norms: torch.Tensor, known: torch.Tensor) -> None:
        flags = known.float()
        stats = self.reduce_mean(torch.stack([terms * flags, norms * flags, flags, self.task_weights]))
        share = stats[2]
        terms, norms = stats[0] / share.clamp_min(1e-12), stats[1] / share.clamp_min(1e-12)
        seen = share > 0
        weights = stats[3].clone()
        first = seen & torch.isnan(self.initial_terms)
        self.initial_terms[first] = terms[first]
        active = seen & (self.initial_terms > 0)
        if active.sum() >= 2:
            rate = terms[active] / self.initial_terms[active]
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

