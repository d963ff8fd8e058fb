"""Which task weighting serves every task? The weightings against the default on the quality worlds, over seeds.

For each world and seed, the same data as benchmarks/mtl_quality.py (data seed = seed) and the
multi-task model trained once per candidate with every other setting at its default (training seed
= seed). A candidate is a weighting name (`imtl`) or a JSON object of `TrainConfig` keys
(`'{"backbone": "l", "weighting": {"name": "mgda_ub"}}'`), for the other defaults one might change.
Each is scored against the single-task networks of that world and seed (they use `equal`, so no
weighting changes them): taken, with the default's multi-task AUROCs, from the `--baseline` files
(mtl_quality.py `--json` files, or earlier `--json` files of this script), or, for a world and seed
those lack per task, trained here by `mtl_ray.studies.compare.compare` with defaults (no control). A
candidate that changes what the single-task networks share with it (backbone, epochs, lr, heads) is
scored against the defaults' single-task networks all the same: a screen, not the fair comparison
`compare` makes.
Printed per candidate: the starved task's gain over its single-task network, Δm % over all tasks and
the worst task's AUROC as a multiple of its own network's, per seed and as mean ± std, with the
multi-task run's wall time.

    python benchmarks/weighting_quality.py [--candidates imtl famo mgda_ub] [--worlds synthetic]
        [--seeds 3] [--first-seed 0] [--n 4000] [--baseline FILE...] [--json FILE]
    python benchmarks/weighting_quality.py --merge FILE... [--json FILE]

One multi-task run takes 2 to 12 minutes per world and seed on 2 CPU cores (`weighting_cost.py`
has each method's cost per step).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from mtl_quality import WORLDS, make

from mtl_ray.config import TrainConfig, WeightingConfig
from mtl_ray.studies.compare import compare
from mtl_ray.studies.stats import delta_m, mean_std
from mtl_ray.training.driver import fit

DEFAULT = "default"


def scored(world: str, seed: int, weighting: str, mtl: dict[str, float], stl: dict[str, float], seconds) -> dict:
    """One row: the multi-task AUROC per task against the single-task networks'."""
    focus = WORLDS[world]
    ratios = {t: mtl[t] / stl[t] for t in stl}
    worst = min(ratios, key=ratios.get)
    return {
        "world": world,
        "seed": seed,
        "weighting": weighting,
        "task": focus,
        "gain": mtl[focus] - stl[focus],
        "delta_m_pct": delta_m({t: {"auroc": mtl[t]} for t in stl}, {t: {"auroc": stl[t]} for t in stl}),
        "worst_task": worst,
        "worst_ratio": ratios[worst],
        "mean_auroc": statistics.fmean(mtl.values()),
        "per_task": mtl,
        "stl": stl,
        "seconds": None if seconds is None else round(seconds),
    }


def known_baselines(paths: list[str]) -> dict[tuple[str, int], tuple[dict, dict]]:
    """(default multi-task AUROC per task, single-task AUROC per task) by (world, seed), from
    mtl_quality.py --json files and from the default's rows of earlier weighting_quality.py --json files."""
    found = {}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        if "rows" in data:
            defaults = [r for r in data["rows"] if r["weighting"] == DEFAULT]
            found |= {(r["world"], r["seed"]): (r["per_task"], r["stl"]) for r in defaults}
            continue
        for world, block in data.items():
            for r in block["rows"]:
                if r.get("per_task"):
                    per_task = r["per_task"]
                    found[(world, r["seed"])] = (
                        {t: v["mtl"] for t, v in per_task.items()},
                        {t: v["stl"] for t, v in per_task.items()},
                    )
    return found


def baseline(world: str, seed: int, data: str, known: dict, storage: str) -> tuple[dict, dict]:
    """(default multi-task AUROC per task, single-task AUROC per task): known, or trained by `compare`."""
    if (world, seed) in known:
        return known[(world, seed)]
    out = compare(data, config=TrainConfig(seed=seed), storage_path=storage).to_json()
    return {t: out["mtl"][t]["auroc"] for t in out["tasks"]}, {t: out["stl"][t]["auroc"] for t in out["tasks"]}


def config(candidate: str, seed: int) -> TrainConfig:
    """The defaults with a candidate's change: a weighting name, or a JSON object of TrainConfig keys."""
    if candidate.startswith("{"):
        return TrainConfig(**{**json.loads(candidate), "seed": seed})
    return TrainConfig(seed=seed, weighting=WeightingConfig(name=candidate))


def run(args: argparse.Namespace) -> list[dict]:
    known = known_baselines(args.baseline or [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        storage = os.path.join(tmp, "runs")
        for world in args.worlds.split(","):
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                data = make(world, os.path.join(tmp, f"{world}-{seed}"), args.n, seed)
                mtl, stl = baseline(world, seed, data, known, storage)
                rows.append(scored(world, seed, DEFAULT, mtl, stl, None))
                print(json.dumps(rows[-1]), flush=True)
                for k, name in enumerate(args.candidates):
                    cfg = config(name, seed)
                    started = time.perf_counter()
                    result = fit(data, name=f"{world}-s{seed}-c{k}", config=cfg, storage_path=storage)
                    seconds = time.perf_counter() - started
                    mtl = {t: result.val[t]["auroc"] for t in stl}
                    rows.append(scored(world, seed, name, mtl, stl, seconds))
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def summary(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """Mean and std over seeds per (world, candidate), with the per-seed values."""
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        cells.setdefault((r["world"], r["weighting"]), []).append(r)
    out = {}
    for key, found in cells.items():
        found.sort(key=lambda r: r["seed"])
        entry: dict = {"seeds": [r["seed"] for r in found], "worst_tasks": [r["worst_task"] for r in found]}
        for name in ("gain", "delta_m_pct", "worst_ratio", "mean_auroc"):
            values = [r[name] for r in found]
            entry[name], entry[f"{name}_std"] = mean_std(values)
            entry[f"{name}_per_seed"] = values
        timed = [r["seconds"] for r in found if r["seconds"] is not None]
        entry["seconds"] = statistics.fmean(timed) if timed else None
        out[key] = entry
    return out


def print_table(cells: dict[tuple[str, str], dict]) -> None:
    def cell(entry: dict, name: str, fmt: str) -> str:
        std = entry[f"{name}_std"]
        each = " / ".join(f"{v:{fmt}}" for v in entry[f"{name}_per_seed"])
        return f"{entry[name]:{fmt}}" + (f" ± {std:{fmt.lstrip('+')}}" if std is not None else "") + f" ({each})"

    print(
        "| world | candidate | seeds | starved-task gain | Δm % | worst task × its own network | mean AUROC | s/run |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (world, name), e in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1] != DEFAULT, kv[0][1])):
        seconds = "" if e["seconds"] is None else f"{e['seconds']:.0f}"
        print(
            f"| {world} | {name} | {','.join(map(str, e['seeds']))} | {cell(e, 'gain', '+.3f')} "
            f"| {cell(e, 'delta_m_pct', '+.1f')} | {cell(e, 'worst_ratio', '.3f')} ({'/'.join(e['worst_tasks'])}) "
            f"| {cell(e, 'mean_auroc', '.3f')} | {seconds} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", nargs="+", default=["imtl", "famo", "mgda_ub"])
    parser.add_argument("--worlds", default="synthetic")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run are first-seed .. first-seed+seeds-1")
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument(
        "--baseline", nargs="+", metavar="FILE", help="mtl_quality.py --json files, or earlier --json files of this one"
    )
    parser.add_argument("--merge", nargs="+", metavar="FILE", help="instead of running: the table of --json files")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    if args.merge:  # a (world, seed, candidate) in several files (the default's row of each piece) counts once
        found = {(r["world"], r["seed"], r["weighting"]): r for p in args.merge for r in json.load(open(p))["rows"]}
        rows = list(found.values())
    else:
        rows = run(args)
    print_table(summary(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
