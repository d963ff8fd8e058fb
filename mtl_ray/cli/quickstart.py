"""`mtl-ray quickstart`: the whole pipeline on this machine in minutes."""

from __future__ import annotations

import argparse

from mtl_ray.cli.flags import add_command, positive_int
from mtl_ray.config import DEFAULT_ALIAS, DEFAULT_MODEL_NAME
from mtl_ray.quickstart import DEFAULT_OUT, EPOCHS, SCENES
from mtl_ray.result import Result


def quickstart(args: argparse.Namespace) -> Result:
    from mtl_ray.quickstart import quickstart

    return quickstart(args.out, scenes=args.scenes, epochs=args.epochs)


def add(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands,
        "quickstart",
        f"synthesise scenes, tune 4 trials, register the best as models:/{DEFAULT_MODEL_NAME}@{DEFAULT_ALIAS}, "
        f"predict (local, CPU, minutes)",
        quickstart,
    )
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"shards go to DIR/data, checkpoints to DIR/runs (default ./{DEFAULT_OUT})",
    )
    p.add_argument("--scenes", type=positive_int, default=SCENES, help=f"synthetic scenes (default {SCENES})")
    p.add_argument("--epochs", type=positive_int, default=EPOCHS, help=f"epochs per trial (default {EPOCHS})")
