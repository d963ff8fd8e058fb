"""`mtl-ray tune` searching over task groups: one shared network, the partition affinity recommends, one
network per task — each trained as one model (`TrainConfig.groups`), over seeds, the best registered.

One `tune` job on the driving scenes (`mtl-ray data synth`, every label known, the data of
benchmarks/groups.py) with `search: {groups: [...], seed: [...]}` and the FIFO scheduler, so every
trial runs all its epochs. Printed per partition: mean validation AUROC and Δm % against one network
per task (both mean ± std over the seeds), the pedestrian task's AUROC, the training throughput, and
which trial the search registered.

    python benchmarks/groups_tune.py [--groups "pedestrian,stop_sign|car,traffic_light"] [--seeds 3]
        [--n 2000] [--backbone s] [--epochs 6] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from mtl_ray.config import TuneConfig
from mtl_ray.data.synth.dataset import synthesize
from mtl_ray.model import checkpoint
from mtl_ray.studies.stats import delta_m, mean_std
from mtl_ray.training.tune import tune

SEPARATE = "pedestrian|car|stop_sign|traffic_light"
ONE = "one network"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", default="pedestrian,stop_sign|car,traffic_light", help="the partition to try")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--backbone", default="s")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        data = synthesize(os.path.join(root, "data"), args.n, seed=0).path
        cfg = TuneConfig.model_validate(
            {
                "train": {"backbone": args.backbone, "epochs": args.epochs},
                "search": {"groups": [None, args.groups, SEPARATE], "seed": list(range(args.seeds))},
                "scheduler": {"name": "fifo"},
                "tracking": {"uri": f"sqlite:///{root}/mlflow.db"},
                "registry": {"name": "groups-tune"},
            }
        )
        started = time.perf_counter()
        result = tune(data, config=cfg, storage_path=os.path.join(root, "runs"))
        seconds = time.perf_counter() - started
        trials = []
        for t in result.trials:
            metrics = checkpoint.load_meta(t.checkpoint)["metrics"] if t.checkpoint else {}
            trials.append(
                {
                    "groups": t.config["groups"] or ONE,
                    "seed": t.config["seed"],
                    "status": t.status,
                    "mean_auroc": t.mean_auroc,
                    "val": {task: m["auroc"] for task, m in metrics.get("val", {}).items()},
                    "train_images_per_s": metrics.get("train_images_per_s"),
                    "best": t.trial_id == result.best.trial_id,
                }
            )
    separate = {r["seed"]: r["val"] for r in trials if r["groups"] == SEPARATE}
    rows = []
    for groups in (ONE, args.groups, SEPARATE):
        mine = [r for r in trials if r["groups"] == groups]
        dm = [delta_m(_as_metrics(r["val"]), _as_metrics(separate[r["seed"]])) for r in mine]
        rows.append(
            {
                "groups": groups,
                "mean_auroc": mean_std([r["mean_auroc"] for r in mine]),
                "delta_m_pct": mean_std(dm),
                "pedestrian": mean_std([r["val"].get("pedestrian") for r in mine]),
                "train_images_per_s": statistics.fmean(r["train_images_per_s"] for r in mine),
                "registered": any(r["best"] for r in mine),
            }
        )
    registered = f"version {result.registered.version}" if result.registered else "nothing"
    print(f"tune over task groups: {len(trials)} trials in {seconds:.0f} s; registered {registered}")
    print("| groups | mean AUROC | Δm % vs one network per task | pedestrian AUROC | train img/s | registered |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| `{r['groups'].replace('|', chr(92) + '|')}` | {_pm(r['mean_auroc'], 3)} | "
            f"{_pm(r['delta_m_pct'], 1, '+')} | "
            f"{_pm(r['pedestrian'], 3)} | {r['train_images_per_s']:.0f} | {'yes' if r['registered'] else ''} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "seconds": round(seconds), "rows": rows, "trials": trials}, f, indent=2)
    return 0


def _as_metrics(aurocs: dict[str, float]) -> dict[str, dict]:
    return {t: {"auroc": v} for t, v in aurocs.items()}


def _pm(stat: tuple[float | None, float | None], digits: int, sign: str = "") -> str:
    mean, std = stat
    return "–" if mean is None else f"{mean:{sign}.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


if __name__ == "__main__":
    sys.exit(main())
