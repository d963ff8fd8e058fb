"""What each task weighting costs per training step, against equal weighting, at T tasks.

One process, the default backbone at 64 px, `--batch` random images whose labels are known on 80 %
of the entries and, for the last task, on 5 % (as a label-starved task): every method takes the same
`mtl_ray.model.step.train_step` on the same batches. Methods are timed in rounds, each round every
method in turn (`--steps` steps each, after one warm-up step), so a load that comes and goes hits
them alike; a method's seconds per step is its median over the rounds, its ratio that median over
equal weighting's.

    python benchmarks/weighting_cost.py [--tasks 4,40] [--backbone m] [--batch 32] [--steps 4] [--rounds 3]
        [--methods all] [--json FILE ('-' = stdout)]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from report import emit

from mtl_ray.config import TrainConfig
from mtl_ray.model.backbones import build
from mtl_ray.model.step import train_step
from mtl_ray.model.weighting import available
from mtl_ray.model.weighting import get as get_weighting


def batches(tasks: int, size: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(tasks)
    out = []
    for _ in range(count):
        images = torch.randint(0, 256, (size, 64, 64, 3), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 2, (size, tasks), generator=g).float()
        rate = torch.full((tasks,), 0.8)
        rate[-1] = 0.05
        labels[torch.rand(size, tasks, generator=g) > rate] = float("nan")
        out.append((images, labels))
    return out


def setup(method: str, tasks: int, backbone: str):
    params = {"weights": [1.0] * tasks} if method == "static" else {}
    torch.manual_seed(0)
    model = build(backbone, tasks, channels_last=True)
    weighting = get_weighting(method, tasks, **params)
    groups = [{"params": list(model.parameters())}]
    if list(weighting.parameters()):
        groups.append({"params": list(weighting.parameters()), "weight_decay": 0.0})
    return model, weighting, torch.optim.AdamW(groups, lr=TrainConfig().lr)


def measure(tasks: int, methods: list[str], backbone: str, size: int, steps: int, rounds: int) -> dict[str, float]:
    data = batches(tasks, size, steps + 1)
    runs = {m: setup(m, tasks, backbone) for m in methods}
    cpu = torch.device("cpu")
    for model, weighting, optimizer in runs.values():
        train_step(model, optimizer, weighting, *data[-1], cpu, "sqrt")
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(rounds):
        for method, (model, weighting, optimizer) in runs.items():
            started = time.perf_counter()
            for images, labels in data[:steps]:
                train_step(model, optimizer, weighting, images, labels, cpu, "sqrt")
            times[method].append((time.perf_counter() - started) / steps)
    return {m: statistics.median(t) for m, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="4,40", help="task counts, comma-separated")
    parser.add_argument("--backbone", default=TrainConfig().backbone)
    parser.add_argument("--batch", type=int, default=TrainConfig().batch_size)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per method per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", default="all", help="comma-separated names, or all")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    methods = available() if args.methods == "all" else args.methods.split(",")
    if "equal" not in methods:
        methods = ["equal", *methods]
    summary: dict = {"backbone": args.backbone, "batch": args.batch, "threads": torch.get_num_threads(), "tasks": {}}
    lines = [f"| method | {' | '.join(f'T = {t}: s/step, × equal' for t in args.tasks.split(','))} |"]
    lines.append("|---|" + "---|" * len(args.tasks.split(",")))
    per_t = {}
    for t in map(int, args.tasks.split(",")):
        seconds = measure(t, methods, args.backbone, args.batch, args.steps, args.rounds)
        per_t[t] = seconds
        summary["tasks"][str(t)] = {
            m: {"s_per_step": round(s, 4), "ratio_to_equal": round(s / seconds["equal"], 2)} for m, s in seconds.items()
        }
    for m in methods:
        cells = [f"{per_t[t][m]:.3f}, {per_t[t][m] / per_t[t]['equal']:.2f}×" for t in per_t]
        lines.append(f"| `{m}` | {' | '.join(cells)} |")
    emit("\n".join(lines), summary, args.json)


if __name__ == "__main__":
    main()
