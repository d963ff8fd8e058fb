"""The entry point of the `jobs/` scripts (`ray job submit -- python jobs/tune.py --config F`): one
job config (TuneConfig keys: data, val, storage, train, search, ...) run as that command."""

from __future__ import annotations

import argparse

from mtl_ray import progress
from mtl_ray.cli.app import run
from mtl_ray.cli.flags import config_flag
from mtl_ray.cli.train import cluster_flags, with_cluster_flags
from mtl_ray.config import TuneConfig
from mtl_ray.result import Result


def job_main(kind: str, argv: list[str] | None = None) -> int:
    """`jobs/{kind}.py`: the config's `train`, `tune` or `compare` (with the shuffle control); flags
    override the config's data, val, storage and name."""
    p = argparse.ArgumentParser(
        prog=f"jobs/{kind}.py", description=f"Ray job entry point: mtl-ray {kind} from a job config"
    )
    p.add_argument("--config", required=True, metavar="F", help="job config, e.g. jobs/configs/driving.yaml")
    for key in ("data", "val", "storage", "name"):
        config_flag(p, TuneConfig, key, section="job", metavar=key.upper(), extra="default: the config's")
    cluster_flags(p)
    p.add_argument("--json", metavar="FILE", help="write the summary as JSON to FILE ('-' = stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr (errors still show)")
    args = p.parse_args(argv)
    progress.set_quiet(args.quiet)

    def produce() -> Result:
        from mtl_ray import config

        cfg = with_cluster_flags(config.load(TuneConfig, args.config), args)
        data, val, storage = cfg.data_path(args.data, args.config), args.val or cfg.val, args.storage or cfg.storage
        if kind == "tune":
            from mtl_ray.training.tune import tune

            return tune(data, val=val, config=cfg, source=args.config, name=args.name, storage_path=storage)
        if kind == "train":
            from mtl_ray.training.driver import fit

            return fit(data, val=val, config=cfg.train, storage_path=storage, name=args.name)
        from mtl_ray.studies.compare import compare

        return compare(data, val=val, config=cfg.train, control="shuffle", storage_path=storage)

    return run(produce, args.json)
