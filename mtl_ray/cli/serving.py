"""`mtl-ray score | serve`: a trained model over millions of images with Ray Data, or behind HTTP."""

from __future__ import annotations

import argparse

from mtl_ray.cli.flags import add_command, config_flag, overrides, positive_int
from mtl_ray.config import ServeConfig, parse
from mtl_ray.result import Result

MODEL_HELP = "models:/NAME@ALIAS (resolved once), models:/NAME/VERSION, runs:/ID/model, or a checkpoint"


def score(args: argparse.Namespace) -> Result:
    from mtl_ray.serving.score import score

    return score(
        args.model,
        args.data,
        args.out,
        split=args.split,
        concurrency=args.concurrency,
        gpu=args.gpu,
        batch_size=args.batch_size,
        strict=args.strict,
        overwrite=args.overwrite,
    )


def serve(args: argparse.Namespace) -> Result:
    from mtl_ray.serving.serve import serve

    return serve(parse(ServeConfig, overrides(args, "serve"), "mtl-ray serve"), host=args.host, port=args.port)


def add(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands, "score", "score shards with a trained model on Ray Data into Parquet (id, a column per task)", score
    )
    p.add_argument("--model", required=True, metavar="URI", help=MODEL_HELP)
    p.add_argument("--data", required=True, metavar="PATH", help="shards to score (directory or s3://bucket/prefix)")
    p.add_argument("--out", required=True, metavar="PATH", help="where the score files go (directory or s3://)")
    p.add_argument("--split", choices=["train", "val", "test"], help="score only the rows of this split")
    p.add_argument(
        "--concurrency",
        metavar="N|MIN-MAX",
        help="scoring actors, each with the model loaded once; MIN-MAX lets Ray Data scale the pool (default: as "
        "many as the CPUs allow beside Ray Data's reading, one per GPU with --gpu)",
    )
    p.add_argument("--gpu", action="store_true", help="one GPU per scoring actor")
    p.add_argument("--batch-size", type=positive_int, default=256, help="rows per forward pass (default 256)")
    p.add_argument("--strict", action="store_true", help="an unreadable image is an error naming its shard and row")
    p.add_argument("--overwrite", action="store_true", help="replace what --out already holds")

    p = add_command(commands, "serve", "serve a trained model over HTTP with Ray Serve (batched, autoscaled)", serve)
    config_flag(p, ServeConfig, "model", section="serve", required=True, metavar="URI")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=positive_int, default=8000, help="HTTP port (default 8000)")
    for key in ServeConfig.model_fields:
        if key != "model":
            config_flag(p, ServeConfig, key, section="serve")
