"""Does a new task with few labels gain from a registered model's trunk? The transfer curve, over seeds.

A source model trained with the default `TrainConfig` (but `--source-epochs`) on 12,000 synthetic
scenes labeled for pedestrian, car and stop_sign — far more data than the new task has — is
registered in a local MLflow registry (sqlite, in a temporary directory). A new data set of other
scenes (another data seed) is labeled for traffic_light only. `mtl_ray.studies.transfer` then trains
traffic_light at each label budget from scratch and from `models:/mtl-ray@champion`, and once more
at one budget from the checkpoint directory, so both kinds of source are measured.

    python benchmarks/transfer_gain.py [--labels 25,50,100,all] [--seeds 3] [--n 12000] [--source-epochs 12]
        [--target-n 1200] [--checkpoint-labels 50] [--config YAML] [--plots DIR] [--json FILE]

About 10 minutes for the source on 2 CPU cores, then about a minute per training run (2 per budget
and seed, and 2 per seed at the checkpoint budget).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from mtl_ray.config import TrainConfig, load_train
from mtl_ray.data.synth.dataset import synthesize
from mtl_ray.registry.register import register_checkpoint
from mtl_ray.studies.transfer import parse_labels, transfer
from mtl_ray.training.driver import fit

SOURCE_TASKS = ["pedestrian", "car", "stop_sign"]
TARGET_TASK = "traffic_light"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", default="25,50,100,all")
    parser.add_argument("--checkpoint-labels", default="50")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n", type=int, default=12000, help="source scenes")
    parser.add_argument("--source-epochs", type=int, default=12, help="the source's epochs (otherwise its defaults)")
    parser.add_argument("--target-n", type=int, default=1200, help="new-task scenes")
    parser.add_argument("--config", metavar="YAML", help="the transfer runs' TrainConfig (the source: defaults)")
    parser.add_argument("--plots", metavar="DIR")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    config = load_train(args.config)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        runs = os.path.join(tmp, "runs")
        source_data = synthesize(os.path.join(tmp, "source"), args.n, tasks=SOURCE_TASKS, seed=0).path
        target_data = synthesize(os.path.join(tmp, "target"), args.target_n, tasks=[TARGET_TASK], seed=1).path
        started = time.perf_counter()
        source = fit(source_data, config=TrainConfig(epochs=args.source_epochs), storage_path=runs, name="source")
        registered = register_checkpoint(source.checkpoint)
        out["source"] = {
            "tasks": SOURCE_TASKS,
            "mean_auroc": source.mean_auroc,
            "model_uri": f"models:/{registered.name}/{registered.version}",
            "seconds": round(time.perf_counter() - started),
        }
        print(json.dumps(out["source"]), flush=True)
        for key, init, labels in (
            ("registry", "models:/mtl-ray@champion", args.labels),
            ("checkpoint", source.checkpoint, args.checkpoint_labels),
        ):
            result = transfer(
                target_data,
                init,
                labels=parse_labels(labels),
                seeds=args.seeds,
                config=config,
                storage_path=runs,
                plots=args.plots if key == "registry" else None,
            )
            print(result.render(), flush=True)
            out[key] = result.to_json()
            out[key]["init"] = "checkpoint directory" if key == "checkpoint" else init
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
