"""What a Ray Train run costs before and after its epochs, with Ray Train's controller polling its
workers every 2 s (Ray's default) and every 0.25 s (`mtl_ray.cluster.runtime.TRAIN_POLL`, what a
local Ray started by mtl-ray uses).

Each side runs in a process of its own with a local Ray of its own (the controller reads the
interval from the environment Ray started with), the sides alternating over `--rounds` so a load
that comes and goes hits both: per round, `--runs` empty `TorchTrainer` runs (2 workers, one
`ray.train.report`) and `--runs` `mtl_ray.training.driver.fit` runs of 1 epoch on 300 scenes
(backbone xs, 32 px). Printed: each side's median seconds per run and the ratio.

    python benchmarks/train_fixed_cost.py [--rounds 2] [--runs 3] [--json FILE ('-' = stdout)]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from report import emit

SIDES = {"ray_default_2s": "2.0", "mtl_ray_0.25s": "0.25"}


def one_side(runs: int, data: str, storage: str) -> dict[str, list[float]]:
    """In this process: a local Ray (as mtl-ray starts it), `runs` empty runs and `runs` fits."""
    import ray
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from mtl_ray.cluster.runtime import ensure_ray
    from mtl_ray.config import TrainConfig
    from mtl_ray.training.driver import fit

    def report_once(config: dict) -> None:
        ray.train.report({"done": 1})

    ensure_ray()
    times: dict[str, list[float]] = {"empty": [], "fit": []}
    for i in range(runs):
        started = time.perf_counter()
        TorchTrainer(
            report_once,
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
            run_config=RunConfig(name=f"empty-{i}", storage_path=storage),
        ).fit()
        times["empty"].append(time.perf_counter() - started)
    for i in range(runs):
        started = time.perf_counter()
        fit(data, name=f"fit-{i}", config=TrainConfig(backbone="xs", epochs=1), storage_path=storage)
        times["fit"].append(time.perf_counter() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--side", help=argparse.SUPPRESS)  # internal: run one side in this process
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        with tempfile.TemporaryDirectory() as storage:
            print(json.dumps(one_side(args.runs, args.data, storage)))
        return 0

    from mtl_ray.data.synth.dataset import synthesize

    times: dict[str, dict[str, list[float]]] = {side: {"empty": [], "fit": []} for side in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        data = synthesize(os.path.join(tmp, "scenes"), 300, image_size=32, seed=0).path
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        for _ in range(args.rounds):
            for side, interval in SIDES.items():
                done = subprocess.run(
                    [sys.executable, __file__, "--side", side, "--runs", str(args.runs), "--data", data],
                    env={**env, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": interval},
                    capture_output=True,
                    text=True,
                    check=True,
                )
                for kind, found in json.loads(done.stdout.strip().splitlines()[-1]).items():
                    times[side][kind].extend(found)
    summary: dict = {"rounds": args.rounds, "runs_per_round": args.runs, "seconds": times}
    (slow, fast) = SIDES
    for kind in ("empty", "fit"):
        medians = {side: statistics.median(times[side][kind]) for side in SIDES}
        summary[f"{kind}_median_s"] = {side: round(m, 2) for side, m in medians.items()}
        summary[f"{kind}_ratio"] = round(medians[fast] / medians[slow], 3)
    line = "  ".join(
        f"{kind}: {summary[f'{kind}_median_s'][slow]:.1f} s -> {summary[f'{kind}_median_s'][fast]:.1f} s "
        f"(x{summary[f'{kind}_ratio']:.2f})"
        for kind in ("empty", "fit")
    )
    emit(f"one Ray Train run, poll 2 s -> 0.25 s  {line}", summary, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
