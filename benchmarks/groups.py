"""Which tasks should share a network? The recommended partition against one all-task network and separate networks.

Per world, `mtl_ray.studies.compare.compare(groups="auto", seeds=N)`: inter-task affinity from one
short joint run recommends a partition (`mtl-ray advise --groups`), then, at every seed, the
all-task network, that partition's networks and one single-task network per task train with the
same steps per epoch and epochs. Printed per world: the recommended partition (and, on the world
built to have one, whether it is the known answer), Δm % of the partition and of the all-task
network against the single-task networks (mean ± std over the seeds, and per seed) and each arm's
wall time per seed.
- `families`: `mtl_ray.data.synth.families`, two task families that share nothing; the known
  answer is `shape_big,shape_huge|red_strong,red_max`.
- `synthetic`: the driving scenes of `mtl-ray data synth` (tasks that share parts by construction).

    python benchmarks/groups.py [--worlds families,synthetic] [--seeds 3] [--n 2000] [--backbone s]
        [--epochs 6] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from mtl_ray.config import TrainConfig
from mtl_ray.data.synth import families
from mtl_ray.data.synth.dataset import synthesize
from mtl_ray.model.partition import show
from mtl_ray.studies.compare import compare

KNOWN = {"families": "|".join(",".join(f) for f in families.FAMILIES)}


def make(world: str, out: str, n: int) -> str:
    if world == "families":
        return families.write(out, n, seed=0)
    return synthesize(out, n, seed=0).path


def run_world(world: str, root: str, args: argparse.Namespace) -> dict:
    data = make(world, os.path.join(root, world), args.n)
    cfg = TrainConfig(backbone=args.backbone, epochs=args.epochs, seed=0)
    started = time.perf_counter()
    out = compare(data, config=cfg, seeds=args.seeds, groups="auto", storage_path=os.path.join(root, "runs")).to_json()
    groups = out["groups"]
    partition = show(groups["partition"])
    row = {
        "world": world,
        "seeds": out["seeds"],
        "partition": partition,
        "known": KNOWN.get(world),
        "recovered": partition == KNOWN[world] if world in KNOWN else None,
        "grouped_delta_m_pct": groups["delta_m_pct"],
        "grouped_delta_m_pct_std": groups.get("delta_m_pct_std"),
        "all_delta_m_pct": out["delta_m_pct"],
        "all_delta_m_pct_std": out.get("delta_m_pct_std"),
        "grouped_seconds": groups["seconds"],
        "all_seconds": out["mtl_seconds"],
        "separate_seconds": out["stl_seconds"],
        "networks": groups["networks"],
        "mtl": {t: v["auroc"] for t, v in out["mtl"].items()},
        "grouped": {t: v["auroc"] for t, v in groups["grouped"].items()},
        "stl": {t: v["auroc"] for t, v in out["stl"].items()},
        "seconds": round(time.perf_counter() - started),
        "config": {"backbone": args.backbone, "epochs": args.epochs, "n": args.n},
    }
    print(json.dumps(row), flush=True)
    return row


def print_table(rows: list[dict]) -> None:
    def pm(mean: float, std: float | None) -> str:
        return f"{mean:+.1f}" + (f" ± {std:.1f}" if std is not None else "")

    print("| world | recommended partition | Δm %: partition | Δm %: one network | s: partition / one / separate |")
    print("|---|---|---|---|---|")
    for r in rows:
        found = f"`{r['partition']}`" + (
            "" if r["recovered"] is None else " (the known answer)" if r["recovered"] else " (not the known answer)"
        )
        print(
            f"| {r['world']} | {found} | {pm(r['grouped_delta_m_pct'], r['grouped_delta_m_pct_std'])} "
            f"| {pm(r['all_delta_m_pct'], r['all_delta_m_pct_std'])} "
            f"| {r['grouped_seconds']:.0f} / {r['all_seconds']:.0f} / {r['separate_seconds']:.0f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", default="families,synthetic")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--backbone", default="s")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        rows = [run_world(world, root, args) for world in args.worlds.split(",")]
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
