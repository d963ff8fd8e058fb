"""Does multi-task learning pay off with the defaults? The label-starved task in three worlds, over seeds.

For each world and seed, fresh data (data seed = seed) and `mtl_ray.studies.compare.compare` with the default
`TrainConfig` (training seed = seed) and Caruana's shuffle control. Printed: the starved task's
validation AUROC multi-task, single-task and under the control, and Δm over all tasks, per seed and
as mean ± std. Beside it, the plain loop a user would check us against (benchmarks/plain_loop.py:
the same files, backbone size, epochs and batch size in twenty lines of PyTorch), multi-task and
single-task per task: mean AUROC, the starved task, and mtl-ray's side minus the plain loop's.
- `synthetic`: `mtl-ray data synth --n N --label-rate traffic_light=0.05` (driving scenes whose
  tasks share parts by construction).
- `digits`: scikit-learn's handwritten digits in multi-label scenes, `has_3` labeled on 5 % of
  the training rows (benchmarks/digit_scenes.py).
- `hf`: a Hugging Face export of scenes of 2 to 4 of those digits, seven tasks, `has_3` labeled on
  5 %, through `mtl-ray data convert` (benchmarks/hf_digits.py).

Per world and seed also: the worst task's multi-task AUROC as a multiple of its own single-task
network's, and, per task, mtl-ray's single-task network minus the plain single-task loop.

    python benchmarks/mtl_quality.py [--worlds synthetic,digits,hf] [--seeds 3] [--first-seed 0] [--n 4000]
        [--no-plain] [--json FILE]
    python benchmarks/mtl_quality.py --merge FILE... [--json FILE]   # the table of runs made in pieces

About 10 to 13 minutes per world and seed on 2 CPU cores, and as long again for the plain loops.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import hf_digits
import plain_loop
from digit_scenes import write as write_digits

from mtl_ray.config import TrainConfig
from mtl_ray.data.synth.dataset import synthesize
from mtl_ray.studies.compare import compare

WORLDS = {"synthetic": "traffic_light", "digits": "has_3", "hf": "has_3"}
RATE = 0.05


def make(world: str, out: str, n: int, seed: int) -> str:
    if world == "synthetic":
        return synthesize(out, n, label_rates={WORLDS[world]: RATE}, seed=seed).path
    write = write_digits if world == "digits" else hf_digits.write
    return write(out, n, seed=seed, starve={WORLDS[world]: RATE})


def row(world: str, seed: int, result, seconds: float) -> dict:
    out = result.to_json()
    focus = WORLDS[world]
    aurocs = out["control"]["focus_auroc"]
    return {
        "world": world,
        "seed": seed,
        "task": focus,
        "labels": out["mtl"][focus]["n_labeled"],
        "mtl": aurocs["mtl"],
        "stl": aurocs["stl"],
        "control": aurocs["control"],
        "gain": aurocs["mtl"] - aurocs["stl"],
        "control_loss": aurocs["mtl"] - aurocs["control"],
        "delta_m_pct": out["delta_m_pct"],
        "worst_ratio": min(out["mtl"][t]["auroc"] / out["stl"][t]["auroc"] for t in out["tasks"]),
        "worst_task": min(out["tasks"], key=lambda t: out["mtl"][t]["auroc"] / out["stl"][t]["auroc"]),
        "per_task": {t: {"mtl": out["mtl"][t]["auroc"], "stl": out["stl"][t]["auroc"]} for t in out["tasks"]},
        "stl_best_epochs": {t: e[0]["best"] for t, e in out["stl_epochs"].items()},
        "seconds": round(seconds),
    }


def plain(world: str, data: str, result, seed: int) -> dict:
    """The plain loops on the same files: multi-task, and single-task on each task; mtl-ray's side minus theirs."""
    cfg, out = TrainConfig(seed=seed), result.to_json()
    focus, tasks = WORLDS[world], out["tasks"]
    shape = {"backbone": cfg.backbone, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "seed": seed}
    mtl = plain_loop.fit(data, **shape)
    stl = {task: plain_loop.fit(data, [task], **shape)["val"][task]["auroc"] for task in tasks}
    plain_stl_mean = statistics.fmean(stl.values())
    return {
        "plain_mtl_mean": mtl["mean_auroc"],
        "plain_mtl_curve": mtl["epochs"],
        "plain_stl_mean": plain_stl_mean,
        "plain_mtl_focus": mtl["val"][focus]["auroc"],
        "plain_stl_focus": stl[focus],
        "mtl_minus_plain": statistics.fmean(out["mtl"][t]["auroc"] for t in tasks) - mtl["mean_auroc"],
        "stl_minus_plain": statistics.fmean(out["stl"][t]["auroc"] for t in tasks) - plain_stl_mean,
        "stl_minus_plain_per_task": {t: out["stl"][t]["auroc"] - stl[t] for t in tasks},
    }


def summary(rows: list[dict]) -> dict:
    keys = ("mtl", "stl", "control", "gain", "control_loss", "delta_m_pct", "worst_ratio")
    keys += tuple(k for k in ("mtl_minus_plain", "stl_minus_plain", "plain_mtl_mean") if k in rows[0])
    out = {}
    for key in keys:
        values = [r[key] for r in rows]
        out[key] = statistics.fmean(values)
        out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
    return out


def run(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Each world's rows, one per seed, printed as they come."""
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in args.worlds.split(","):
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                data = make(world, os.path.join(tmp, f"{world}-{seed}"), args.n, seed)
                started = time.perf_counter()
                result = compare(
                    data, config=TrainConfig(seed=seed), control="shuffle", storage_path=os.path.join(tmp, "runs")
                )
                found = row(world, seed, result, time.perf_counter() - started)
                if not args.no_plain:
                    found.update(plain(world, data, result, seed))
                rows.setdefault(world, []).append(found)
                print(json.dumps(found), flush=True)
    return rows


def merged(files: list[str]) -> dict[str, list[dict]]:
    """Each world's rows from earlier --json files, by seed."""
    rows: dict[str, list[dict]] = {}
    for path in files:
        with open(path) as f:
            for world, found in json.load(f).items():
                rows.setdefault(world, []).extend(found["rows"])
    return {world: sorted(found, key=lambda r: r["seed"]) for world, found in rows.items()}


def print_table(results: dict[str, dict]) -> None:
    print(
        f"{'world':<10} {'task':<14} {'multi-task':>14} {'single-task':>14} {'gain':>15} {'control':>14} "
        f"{'Δm %':>12} {'worst task ×':>14}"
    )
    for world, found in results.items():
        m = found["mean"]

        def cell(key: str, fmt: str = ".3f", m=m) -> str:
            return (
                f"{m[key]:{fmt}} ± {m[key + '_std']:{fmt.lstrip('+')}}"
                if m[key + "_std"] is not None
                else f"{m[key]:{fmt}}"
            )

        print(
            f"{world:<10} {WORLDS[world]:<14} {cell('mtl'):>14} {cell('stl'):>14} {cell('gain', '+.3f'):>15} "
            f"{cell('control'):>14} {cell('delta_m_pct', '+.1f'):>12} {cell('worst_ratio'):>14}"
        )
        if "mtl_minus_plain" in m:
            print(
                f"{'':<10} plain loop: multi-task mean AUROC {cell('plain_mtl_mean')}; mtl-ray minus plain, "
                f"multi-task {cell('mtl_minus_plain', '+.3f')}, single-task {cell('stl_minus_plain', '+.3f')}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", default="synthetic,digits,hf")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run are first-seed .. first-seed+seeds-1")
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--no-plain", action="store_true", help="leave out the plain PyTorch loops")
    parser.add_argument("--merge", nargs="+", metavar="FILE", help="instead of running: the table of --json files")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    rows = merged(args.merge) if args.merge else run(args)
    results = {world: {"rows": found, "mean": summary(found)} for world, found in rows.items()}
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
