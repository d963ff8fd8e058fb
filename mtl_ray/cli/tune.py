"""`mtl-ray tune`: Ray Tune over a config's search space; every trial in MLflow; the best registered."""

from __future__ import annotations

import argparse

from mtl_ray.cli.flags import add_command, config_flag
from mtl_ray.cli.train import cluster_flags, with_cluster_flags
from mtl_ray.config import TuneConfig
from mtl_ray.result import Result


def tune(args: argparse.Namespace) -> Result:
    from mtl_ray import config
    from mtl_ray.training.tune import tune

    return tune(
        args.data,
        val=args.val,
        config=with_cluster_flags(config.load(TuneConfig, args.config), args),
        source=args.config,
        name=args.name,
        storage_path=args.storage,
        resume=args.resume,
    )


def add(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands,
        "tune",
        "Ray Tune over backbone, weighting and lr; every trial tracked in MLflow; the best registered",
        tune,
    )
    config_flag(p, TuneConfig, "data", section="paths", metavar="PATH", extra="default: the config's data key")
    config_flag(p, TuneConfig, "val", section="paths", metavar="PATH", extra="default: the config's val key")
    p.add_argument(
        "--config",
        required=True,
        metavar="F",
        help="YAML with data, train, search, scheduler, tracking and registry keys (docs/tune.md)",
    )
    config_flag(p, TuneConfig, "name", section="paths", metavar="NAME")
    p.add_argument(
        "--resume",
        metavar="NAME",
        help="finish the interrupted search NAME under --storage: finished trials kept, unfinished ones "
        "resumed from their checkpoints, errored ones restarted; the best is registered once",
    )
    config_flag(p, TuneConfig, "storage", section="paths", metavar="PATH", extra="default: the config's storage")
    cluster_flags(p)
