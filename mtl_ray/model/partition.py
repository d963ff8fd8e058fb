"""Tasks in groups, one network per group (`TrainConfig.groups`, `a,b|c`): the partition's text form and
`PartitionedNet`, several `MultiTaskNet`s side by side that answer as one model.

A partition is what `mtl-ray advise --groups` recommends when some tasks hurt each other in one
shared network, and what `mtl-ray compare --groups` trains as separate runs. As one model it trains in
one run (each group's network on the same batches, with its own weighting: `weighting.PerGroup`), is
checkpointed, searched by `tune`, registered and served like a one-network model: its logits come back
[m, T] in the tasks' order.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from mtl_ray.errors import UserError
from mtl_ray.model.backbones import MultiTaskNet, build


def show(groups: list[list[str]]) -> str:
    """A partition as the `--groups` flag writes it: `a,b|c`."""
    return "|".join(",".join(g) for g in groups)


def parse(text: str, tasks: list[str], where: str = "--groups") -> list[list[str]]:
    """`a,b|c` → [["a", "b"], ["c"]]: every task of `tasks` in exactly one group, or a UserError (prefixed
    `where`) naming the task that is unknown, repeated or left out."""
    groups = [[t.strip() for t in part.split(",") if t.strip()] for part in text.split("|")]
    seen: list[str] = []
    for t in (t for g in groups for t in g):
        if t not in tasks:
            raise UserError(f"{where} {text!r}: unknown task {t!r}; tasks are {', '.join(tasks)}")
        if t in seen:
            raise UserError(f"{where} {text!r}: task {t!r} is in two groups; each task belongs to exactly one")
        seen.append(t)
    missing = [t for t in tasks if t not in seen]
    if missing:
        raise UserError(f"{where} {text!r}: task {missing[0]!r} is in no group; give every task a group (a,b|c)")
    return [g for g in groups if g]


def indices(groups: list[list[str]], tasks: list[str]) -> list[list[int]]:
    """Each group's tasks as positions in `tasks`."""
    return [[tasks.index(t) for t in g] for g in groups]


class PartitionedNet(nn.Module):
    """One `MultiTaskNet` per group of tasks, nothing shared between them; logits [m, T] in task order.

    A forward with gradients keeps each group's logits [m, |group|] as `outputs` (the graph of its own
    network only), from which `weighting.PerGroup` takes each group's loss and backward apart.
    """

    def __init__(self, nets: list[MultiTaskNet], groups: list[list[int]]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.groups = groups
        self.num_tasks = sum(len(g) for g in groups)
        order = [task for g in groups for task in g]
        self.register_buffer("order", torch.tensor(sorted(range(len(order)), key=order.__getitem__)), persistent=False)
        self.outputs: list[torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [net(x) for net in self.nets]
        if torch.is_grad_enabled():
            self.outputs = outputs
        return torch.cat(outputs, dim=1)[:, self.order]

    @property
    def keep_features(self) -> bool:
        return any(net.keep_features for net in self.nets)

    @keep_features.setter
    def keep_features(self, value: bool) -> None:
        for net in self.nets:
            net.keep_features = value

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Every group's trunk (shared by that group's tasks)."""
        for net in self.nets:
            yield from net.shared_parameters()

    def task_parameters(self) -> Iterator[nn.Parameter]:
        for net in self.nets:
            yield from net.task_parameters()


def network(
    backbone: str, tasks: list[str], heads: str = "linear", groups: list[list[str]] | None = None, **kw
) -> MultiTaskNet | PartitionedNet:
    """The model a run trains for `tasks`: one network, or with `groups` of two or more, one per group
    (keywords go to `backbones.build`)."""
    if not groups or len(groups) == 1:
        return build(backbone, len(tasks), heads=heads, **kw)
    at = indices(groups, tasks)
    return PartitionedNet([build(backbone, len(g), heads=heads, **kw) for g in at], at)


def partition_of(groups: str | None, tasks: list[str], where: str = "groups") -> list[list[str]] | None:
    """The partition a `TrainConfig.groups` names over `tasks`; None for one network (unset, or one group)."""
    if groups is None:
        return None
    if groups.strip() == "auto":
        raise UserError(
            f"{where} 'auto': a run trains a given partition (a,b|c); `mtl-ray advise --groups` recommends one, "
            "and `compare --groups auto` trains it beside one network"
        )
    found = parse(groups, tasks, where)
    return found if len(found) > 1 else None
