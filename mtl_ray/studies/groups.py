"""Which tasks should share a network: inter-task affinity from one short joint run (TAG, Fifty et
al., NeurIPS 2021) and the partition of the tasks it recommends.

During plain in-process training on all tasks, every few steps and for each task i with known
labels in the batch, a lookahead: one SGD step of the shared trunk along task i's gradient alone,
and for every task j with known labels Z[i, j] = 1 − ℓⱼ(after) / ℓⱼ(before), the share of task j's
loss that the step on task i removed (negative: it made j worse). Losses are means over each task's
known labels in the batch; batch-norm statistics are left as they were. Z is averaged over the
lookaheads where both tasks had labels.

A partition scores, for every task, the mean affinity onto it from the other tasks of its group (0
alone): `best_partition` picks the highest-scoring one with at most K groups, searching all of them
for up to `EXHAUSTIVE` tasks and, beyond, merging the two groups whose merge scores best while
that does not lower the score (or there are more than K groups).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import torch
from torch.func import functional_call

from mtl_ray import progress
from mtl_ray.config import AFFINITY_STEPS, TrainConfig
from mtl_ray.data.validate import ValidationReport
from mtl_ray.errors import UserError
from mtl_ray.model.backbones import build, to_input
from mtl_ray.model.losses import task_terms
from mtl_ray.model.partition import parse, show
from mtl_ray.model.step import train_step
from mtl_ray.model.weighting import get as get_weighting

LOOKAHEAD_LR = 0.01
"""SGD step of the lookahead, on the trunk's gradient of one task's mean loss. On the two-family world
(`mtl_ray.data.synth.families`, backbone s, 100 steps, 3 seeds) 0.1 overshoots (every affinity, a
task's own included, negative), 0.03 and 0.01 find the families on all 3 seeds, 0.01 with no negative
within-family affinity; 0.003 too, at a third of the signal."""
AFFINITY_BACKBONE = "s"
"""Backbone of the joint run (as `mtl-ray advise`'s probes)."""
AFFINITY_ROWS = 1024
"""Training rows sampled for the joint run (as `mtl-ray advise --rows`' default)."""
EXHAUSTIVE = 9
"""Up to this many tasks every partition is scored (21,147 for 9); beyond, groups merge greedily."""


def lookahead(
    model: torch.nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    probe: tuple[torch.Tensor, torch.Tensor],
    lr: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Affinities Z [T, T] of one lookahead and which entries it measured: each task's step along its
    gradient on `batch` (x, labels), the losses before and after on `probe` (x, labels)."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    shared = [name for name in params if name.startswith("trunk.")]

    def losses(weights: dict[str, torch.Tensor], x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        copies = {name: b.clone() for name, b in buffers.items()}
        return task_terms(functional_call(model, {**weights, **copies}, (x,)), labels, "per_task")

    known = ~torch.isnan(batch[1]).all(dim=0)
    on_probe = ~torch.isnan(probe[1]).all(dim=0)
    train = losses(params, *batch)
    with torch.no_grad():
        before = losses(params, *probe).clamp_min(1e-12)
    affinity = np.zeros((len(known), len(known)))
    for i in known.nonzero().flatten().tolist():
        grads = torch.autograd.grad(train[i], [params[n] for n in shared], retain_graph=True)
        with torch.no_grad():
            after = losses({**params, **{n: params[n] - lr * g for n, g in zip(shared, grads, strict=True)}}, *probe)
        affinity[i] = (1 - after / before).numpy()
    measured = (known[:, None] & on_probe[None, :]).numpy()
    return np.where(measured, affinity, 0.0), measured


def task_affinity(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    backbone: str,
    steps: int,
    every: int = 5,
    lr: float = LOOKAHEAD_LR,
    batch_size: int = 32,
    probe_rows: int = 256,
    seed: int = 0,
) -> np.ndarray:
    """Mean inter-task affinity Z [T, T] (row: the task whose step, column: the task whose loss)
    over a `steps`-step joint run on `images`/`labels` with the default optimiser, weighting and loss
    reduction, a lookahead every `every` steps; NaN where two tasks never had labels in one batch."""
    cfg = TrainConfig(backbone=backbone)
    torch.manual_seed(seed)
    num_tasks = labels.shape[1]
    model = build(backbone, num_tasks, channels_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    weighting = get_weighting(cfg.weighting.name, num_tasks, **cfg.weighting.params())
    total, counted = np.zeros((num_tasks, num_tasks)), np.zeros((num_tasks, num_tasks))
    order = torch.randperm(len(images))
    probe = (to_input(images[order[:probe_rows]], channels_last=True), labels[order[:probe_rows]])
    model.train()
    for step in range(steps):
        idx = order[(step * batch_size) % len(order) :][:batch_size]
        if step % every == every - 1:
            z, measured = lookahead(model, (to_input(images[idx], channels_last=True), labels[idx]), probe, lr)
            total, counted = total + z, counted + measured
        train_step(model, optimizer, weighting, images[idx], labels[idx], torch.device("cpu"), cfg.loss_reduction)
    with np.errstate(invalid="ignore"):
        return np.where(counted > 0, total / np.maximum(counted, 1), np.nan)


def partition_score(affinity: np.ndarray, groups: list[list[int]]) -> float:
    """Σ over tasks of the mean affinity onto the task from the other tasks of its group (0 alone;
    a pair never measured counts 0)."""
    z = np.nan_to_num(affinity)
    return float(sum(z[[j for j in g if j != i], i].mean() for g in groups if len(g) > 1 for i in g))


def _partitions(items: list[int], most: int) -> Iterator[list[list[int]]]:
    """Every partition of `items` into at most `most` groups."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for smaller in _partitions(rest, most):
        for k in range(len(smaller)):
            yield [*smaller[:k], [first, *smaller[k]], *smaller[k + 1 :]]
        if len(smaller) < most:
            yield [[first], *smaller]


def best_partition(affinity: np.ndarray, max_groups: int | None = None) -> list[list[int]]:
    """The partition of the tasks into at most `max_groups` groups (default: as many as there are
    tasks) with the highest `partition_score`; fewer groups win ties. Groups and their members come
    in task order."""
    n = affinity.shape[0]
    most = min(max_groups or n, n)
    if n <= EXHAUSTIVE:
        candidates = _partitions(list(range(n)), most)
        best = max(candidates, key=lambda p: (round(partition_score(affinity, p), 12), -len(p)))
    else:
        best = [[i] for i in range(n)]
        while len(best) > 1:
            merges = [
                (
                    partition_score(affinity, [g for k, g in enumerate(best) if k not in (a, b)] + [best[a] + best[b]]),
                    a,
                    b,
                )
                for a, b in itertools.combinations(range(len(best)), 2)
            ]
            score, a, b = max(merges)
            if score < partition_score(affinity, best) - 1e-12 and len(best) <= most:
                break
            best = [g for k, g in enumerate(best) if k not in (a, b)] + [best[a] + best[b]]
    return sorted(sorted(g) for g in best)


def recommend(
    images: torch.Tensor, labels: torch.Tensor, tasks: list[str], *, backbone: str, steps: int, max_groups: int | None
) -> dict:
    """Affinity from a `steps`-step joint run on a sample and the partition it recommends, as the JSON
    of `advise --groups` (and `compare --groups auto`) gives them."""
    affinity = task_affinity(images, labels, backbone=backbone, steps=steps)
    partition = best_partition(affinity, max_groups)
    return {
        "partition": [[tasks[i] for i in g] for g in partition],
        "affinity": {
            a: {b: None if np.isnan(affinity[i, j]) else float(affinity[i, j]) for j, b in enumerate(tasks)}
            for i, a in enumerate(tasks)
        },
        "score": partition_score(affinity, partition),
        "score_all": partition_score(affinity, [list(range(len(tasks)))]),
        "max_groups": max_groups or len(tasks),
        "steps": steps,
        "lookahead_lr": LOOKAHEAD_LR,
        "backbone": backbone,
    }


def requested(
    groups: str,
    report: ValidationReport,
    cfg: TrainConfig,
    max_groups: int | None,
    steps: int = AFFINITY_STEPS,
    single: list[str] | None = None,
) -> dict:
    """The partition `compare --groups` asks for: given (`a,b|c`), or `auto`, the one affinity recommends
    (`mtl-ray advise --groups` on a sample of the training rows). A task alone in its group is its
    single-task network, so it must be one of `single` (the tasks that get one; default every task)."""
    tasks = list(report.fmt.tasks)
    if groups != "auto":
        if max_groups is not None:
            raise UserError("--max-groups goes with --groups auto: a given partition has its own number of groups")
        found = {"partition": parse(groups, tasks), "source": "given"}
    else:
        from mtl_ray.studies.probes import load_sample

        progress.say(f"compare groups auto: inter-task affinity over a {steps}-step joint run")
        images, labels = load_sample(report, "train", AFFINITY_ROWS, cfg.size() or report.training_size()[0])
        found = recommend(images, labels, tasks, backbone=AFFINITY_BACKBONE, steps=steps, max_groups=max_groups)
        found["source"] = "auto"
    alone = [g[0] for g in found["partition"] if len(g) == 1 and g[0] not in (single or tasks)]
    if alone:
        raise UserError(
            f"--groups {show(found['partition'])}: task {alone[0]!r} is a group of its own, which is its "
            "single-task network, but --stl-tasks leaves it out"
        )
    return found
