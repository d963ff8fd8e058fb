"""PCGrad (Yu et al. 2020): per-task gradients on the shared parameters, projected off each other
where they conflict, then summed."""

from __future__ import annotations

import torch
from torch import nn

from mtl_ray.model.backbones import unwrap
from mtl_ray.model.losses import BatchLosses
from mtl_ray.model.weighting.base import ReduceMean, Weighting, add_grads, integer, known_only, task_grads, trainable


def project_conflicting(grads: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad's projection (Yu et al. 2020, Algorithm 1) of per-task gradients [T, P] → [T, P].

    Each task's gradient, for every other task in random order whose original gradient it
    conflicts with (negative dot product), drops its component along that gradient. Zero rows
    (tasks without a known label) conflict with nothing.
    """
    projected = grads.clone()
    norms_sq = (grads * grads).sum(dim=1).clamp_min(torch.finfo(grads.dtype).tiny)
    for i in range(grads.shape[0]):
        for j in torch.randperm(grads.shape[0], generator=generator).tolist():
            if j != i:
                conflict = (projected[i] @ grads[j]).clamp(max=0)
                projected[i] -= conflict / norms_sq[j] * grads[j]
    return projected


class PCGrad(Weighting):
    """Projecting Conflicting Gradients (Yu et al., NeurIPS 2020): per-task gradients on the
    shared parameters are projected with `project_conflicting` and summed; task-specific (head)
    parameters get the ordinary gradient of the summed loss.

    Per-task gradients go through `reduce_mean` before the projection, and the random order
    comes from a generator seeded with `seed`, so every worker projects the same global-batch
    gradients the same way (cost: T× a normal all-reduce of the shared gradients).
    """

    name = "pcgrad"
    manipulates_gradients = True

    def __init__(self, num_tasks: int, reduce_mean: ReduceMean | None = None, seed: int = 0) -> None:
        super().__init__(num_tasks, reduce_mean)
        self.generator = torch.Generator().manual_seed(integer(self.name, "seed", seed))

    def backward(self, terms: torch.Tensor, known: torch.Tensor, model: nn.Module, losses: BatchLosses) -> torch.Tensor:
        net = unwrap(model)
        shared = trainable(net.shared_parameters())
        heads = trainable(net.task_parameters())
        masked = known_only(terms, known)
        grads = task_grads(masked, known, shared)
        total = masked.sum()
        total.backward(inputs=heads)
        add_grads(shared, project_conflicting(self.reduce_mean(grads), self.generator).sum(dim=0))
        return total.detach()
