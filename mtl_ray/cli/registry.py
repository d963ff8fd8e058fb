"""`mtl-ray register | predict`: a checkpoint into the registry behind the gated alias, and back out."""

from __future__ import annotations

import argparse

from mtl_ray.cli.flags import add_command, positive_int
from mtl_ray.config import DEFAULT_ALIAS, DEFAULT_MODEL_NAME
from mtl_ray.result import Result


def register(args: argparse.Namespace) -> Result:
    from mtl_ray.registry.register import register

    return register(args.run, args.checkpoint, name=args.name, alias=args.alias)


def predict(args: argparse.Namespace) -> Result:
    from mtl_ray.registry.predict import predict

    return predict(args.model, data=args.data, images=args.images, limit=args.limit)


def add(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands,
        "register",
        "register a checkpoint as a model version; the alias moves only if mean_auroc beats the current one",
        register,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="RUN_ID", help="an MLflow run of a tune trial (its mtl_ray.checkpoint tag)")
    source.add_argument("--checkpoint", metavar="URI", help="a checkpoint directory or s3:// URI")
    p.add_argument("--name", default=DEFAULT_MODEL_NAME, help=f"registered model name (default {DEFAULT_MODEL_NAME})")
    p.add_argument("--alias", default=DEFAULT_ALIAS, help=f"the gated alias (default {DEFAULT_ALIAS})")

    p = add_command(commands, "predict", "per-task probabilities from a registered (or any pyfunc) model", predict)
    p.add_argument(
        "--model", required=True, metavar="URI", help="e.g. models:/mtl-ray@champion, models:/mtl-ray/3, runs:/ID/model"
    )
    p.add_argument("--data", metavar="PATH", help="shards to score (instead of image files)")
    p.add_argument("--limit", type=positive_int, help="score at most this many rows of --data")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
