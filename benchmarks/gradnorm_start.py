"""How noisy is GradNorm's start, Lₖ(0), for a label-starved task? Over seeds, before and after.

For each seed: synthetic scenes with traffic_light labeled on 5 % of the rows (`--n` rows, data
seed = seed), the default `TrainConfig` (backbone, batch size, loss reduction, GradNorm), the rows
in a seeded random order, plain training steps in this process (`mtl_ray.model.step.train_step`,
as every worker takes them). Printed per task, over the seeds: mean, std and max/min of
- `first batch term`: the task's loss term in the first batch that holds one of its labels, which
  GradNorm took as Lₖ(0) before (under the `sqrt` reduction it scales with that batch's labels);
- `L(0) now`: GradNorm's `initial_losses` once it has them, the mean loss over every label of the
  task's first `initial_batches` labeled batches.

    python benchmarks/gradnorm_start.py [--seeds 5] [--n 2000] [--json FILE ('-' = stdout)]

About a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
from report import emit

from mtl_ray.config import TrainConfig
from mtl_ray.data.synth.dataset import synthesize
from mtl_ray.data.validate import validate
from mtl_ray.model.backbones import build
from mtl_ray.model.step import train_step
from mtl_ray.model.weighting import get as get_weighting
from mtl_ray.studies.probes import load_sample
from mtl_ray.studies.stats import mean_std

STARVED, RATE = "traffic_light", 0.05


def one_seed(root: str, n: int, seed: int) -> tuple[list[str], list[float], list[float]]:
    report = validate(synthesize(os.path.join(root, str(seed)), n, label_rates={STARVED: RATE}, seed=seed).path)
    cfg = TrainConfig(seed=seed)
    size = report.fmt.shape[:2]
    images, labels = load_sample(report, "train", n, tuple(size))
    tasks = list(report.fmt.tasks)
    torch.manual_seed(seed)
    model = build(cfg.backbone, len(tasks), channels_last=True)
    method = get_weighting(cfg.weighting.name, len(tasks), **cfg.weighting.params())
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    first = [float("nan")] * len(tasks)
    for start in range(0, len(order), cfg.batch_size):
        rows = order[start : start + cfg.batch_size]
        x, y = images[rows], labels[rows]
        model.train()
        _, terms, _ = train_step(model, optimizer, method, x, y, torch.device("cpu"), cfg.loss_reduction)
        for k in range(len(tasks)):
            if first[k] != first[k] and not torch.isnan(y[:, k]).all():
                first[k] = float(terms[k])
        if not torch.isnan(method.initial_losses).any():
            break
    return tasks, first, method.initial_losses.tolist()


def spread(values: list[float]) -> dict:
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "max_over_min": max(values) / min(values), "values": values}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    firsts, nows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            tasks, first, now = one_seed(tmp, args.n, seed)
            firsts.append(first)
            nows.append(now)
    out = {}
    lines = [f"{'task':<14} {'first batch term (before)':>34} {'L(0) now':>34}"]
    for k, task in enumerate(tasks):
        before, after = spread([f[k] for f in firsts]), spread([v[k] for v in nows])
        out[task] = {"before": before, "after": after}
        lines.append(
            f"{task:<14} {before['mean']:.3f} ± {before['std']:.3f} (max/min {before['max_over_min']:4.1f}×)"
            f"      {after['mean']:.3f} ± {after['std']:.3f} (max/min {after['max_over_min']:4.1f}×)"
        )
    emit("\n".join(lines), out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
