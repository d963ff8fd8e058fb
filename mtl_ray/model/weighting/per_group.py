"""The weighting of a model of several networks (`partition.PartitionedNet`): the run's method once per
group, each on its own group's tasks and network, as if every group trained alone on the same batches."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mtl_ray.model.backbones import unwrap
from mtl_ray.model.losses import BatchLosses
from mtl_ray.model.weighting.base import ReduceMean, Weighting


class PerGroup(Weighting):
    """One `Weighting` per group of tasks (`groups`: task positions), made by `make(num_tasks, positions)`.

    `backward_batch` takes each group's logits from the network's `outputs`, so that a group's
    backward passes (several, for GradNorm or PCGrad) reach only its own network. That takes several
    backward calls per batch, so it is `manipulates_gradients` (under DDP, `no_sync` and averaged by hand).
    """

    name = "per_group"
    manipulates_gradients = True

    def __init__(
        self,
        groups: list[list[int]],
        make: Callable[[int, list[int]], Weighting],
        reduce_mean: ReduceMean | None = None,
    ) -> None:
        super().__init__(sum(len(g) for g in groups), reduce_mean)
        self.groups = groups
        self.methods = nn.ModuleList([make(len(g), g) for g in groups])
        self.uses_features = any(m.uses_features for m in self.methods)
        self.needs_losses_after_step = any(m.needs_losses_after_step for m in self.methods)

    def current_weights(self) -> torch.Tensor:
        weights = torch.zeros(self.num_tasks)
        for group, method in zip(self.groups, self.methods, strict=True):
            weights[group] = method.current_weights().detach().float().cpu()
        return weights

    def backward(self, terms: torch.Tensor, known: torch.Tensor, model: nn.Module, losses: BatchLosses) -> torch.Tensor:
        raise TypeError("a per-group weighting needs each group's logits: the train step calls backward_batch")

    def backward_batch(
        self, model: nn.Module, logits: torch.Tensor, labels: torch.Tensor, reduction: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        net = unwrap(model)
        outputs, net.outputs = net.outputs, None
        total, terms = torch.zeros((), device=logits.device), torch.zeros(self.num_tasks, device=logits.device)
        for group, method, part, out in zip(self.groups, self.methods, net.nets, outputs, strict=True):
            loss, group_terms = method.backward_batch(part, out, labels[:, group], reduction)
            total, terms[group] = total + loss, group_terms
        return total, terms

    def after_step(self, losses: BatchLosses, known: torch.Tensor) -> None:
        for group, method in zip(self.groups, self.methods, strict=True):
            method.after_step(BatchLosses(losses.mean[group], losses.counts[group]), known[group])

    def epoch_end(self, mean_terms: torch.Tensor) -> None:
        for group, method in zip(self.groups, self.methods, strict=True):
            method.epoch_end(mean_terms[group])
