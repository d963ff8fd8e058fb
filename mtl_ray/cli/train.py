"""`mtl-ray train`, and the training flags that `compare` and `transfer` share with it."""

from __future__ import annotations

import argparse

from mtl_ray.cli.flags import add_command, config_flag, overrides
from mtl_ray.config import TrainConfig, TuneConfig, WeightingConfig
from mtl_ray.result import Result


def training_flags(p: argparse.ArgumentParser, init_required: bool = False) -> None:
    """--data, --val, --storage and --config, and one flag per TrainConfig key that runs are tuned by."""
    config_flag(p, TuneConfig, "data", section="paths", required=True, metavar="PATH")
    config_flag(p, TuneConfig, "val", section="paths", metavar="PATH")
    p.add_argument(
        "--config",
        metavar="F",
        help="YAML file with TrainConfig keys, or a job config (jobs/configs) whose train: section is used; "
        "flags override it",
    )
    config_flag(p, TrainConfig, "backbone")
    config_flag(p, TrainConfig, "heads")
    config_flag(p, TrainConfig, "init", metavar="URI", required=init_required)
    config_flag(
        p, WeightingConfig, "name", key="weighting", flag="--weighting", metavar="NAME", to_value=lambda n: {"name": n}
    )
    config_flag(p, TrainConfig, "workers", type=str, metavar="N|MIN-MAX")
    for key in ("epochs", "patience", "gpu", "max_failures", "image_size", "strict", "decode"):
        config_flag(p, TrainConfig, key)
    config_flag(p, TuneConfig, "storage", section="paths", metavar="PATH")
    cluster_flags(p)


def cluster_flags(p: argparse.ArgumentParser) -> None:
    """--storage-shared and --resource-wait: how a run treats the cluster it runs on (train, tune, jobs/)."""
    config_flag(p, TrainConfig, "storage_shared")
    config_flag(p, TrainConfig, "resource_wait_s", flag="--resource-wait", metavar="SECONDS")


def with_cluster_flags(cfg: TuneConfig, args: argparse.Namespace) -> TuneConfig:
    """A tune or job config with the `cluster_flags` given applied to its train section."""
    given = overrides(args)
    if not given:
        return cfg
    return cfg.model_copy(update={"train": TrainConfig(**{**cfg.train.model_dump(), **given})})


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run's TrainConfig: the --config file, then the flags given."""
    from mtl_ray import config

    return config.load_train(args.config, overrides(args))


def train(args: argparse.Namespace) -> Result:
    from mtl_ray.training.driver import fit

    return fit(args.data, val=args.val, config=train_config(args), storage_path=args.storage, name=args.name)


def add(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands, "train", "train one multi-task model with Ray Train (resumes a run of the same --name)", train
    )
    training_flags(p)
    config_flag(p, TrainConfig, "groups", metavar="a,b|c")
    p.add_argument("--name", metavar="RUN", help="run name; rerunning a name resumes from its last checkpoint")
