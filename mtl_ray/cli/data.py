"""`mtl-ray data synth | convert | validate`: make, convert and check shards."""

from __future__ import annotations

import argparse

from mtl_ray.cli.flags import add_command, image_size, label_rate, positive_int, task_list
from mtl_ray.data.convert.columns import ABSENT
from mtl_ray.data.images import RESIZE_MODES
from mtl_ray.data.shards import ENCODINGS
from mtl_ray.errors import UserError
from mtl_ray.result import Result


def synth(args: argparse.Namespace) -> Result:
    from mtl_ray.data.synth.dataset import synthesize

    rates: dict[str, float] = {}
    for task, frac in args.label_rate:
        if task in rates:
            raise UserError(f"--label-rate {task}: given twice")
        rates[task] = frac
    return synthesize(
        args.out,
        args.n,
        shards=args.shards,
        image_size=args.image_size,
        tasks=args.tasks,
        extra_tasks=args.extra_tasks,
        label_rates=rates,
        encoding=args.encoding,
        seed=args.seed,
        val_fraction=args.val_fraction,
    )


def convert(args: argparse.Namespace) -> Result:
    from mtl_ray.data.convert.pipeline import convert

    return convert(
        args.src,
        args.out,
        image_column=args.image_column,
        tasks=args.tasks,
        labels_csv=args.labels_csv,
        file_column=args.file_column,
        positive=args.positive,
        negative=args.negative,
        missing=args.missing,
        classes=args.classes,
        absent=args.absent,
        negative_list=args.negative_list,
        image_root=args.image_root,
        image_size=args.image_size,
        resize=args.resize,
        encoding=args.encoding,
        strict=args.strict,
        report=args.report,
        shards=args.shards,
        val_fraction=args.val_fraction,
    )


def validate(args: argparse.Namespace) -> Result:
    from mtl_ray.data.validate import validate

    return validate(args.path, full=args.full, image_column=args.image_column)


def add(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="create, convert and check Parquet image shards").add_subparsers(
        dest="data_command", required=True, metavar="DATA_COMMAND"
    )
    _add_synth(data)
    _add_convert(data)
    p = add_command(data, "validate", "check shards: schema across files, image decode, per-task label table", validate)
    p.add_argument("path", metavar="PATH", help="directory, Parquet file, or s3://bucket/prefix")
    p.add_argument("--full", action="store_true", help="decode every image (default: a sample per shard)")
    p.add_argument("--image-column", help="image column when shards carry no mtl_ray metadata (default: image)")


def _add_synth(data: argparse._SubParsersAction) -> None:
    p = add_command(
        data,
        "synth",
        "write procedural driving scenes as shards (tasks: pedestrian, car, stop_sign, traffic_light)",
        synth,
    )
    p.add_argument("out", metavar="OUT", help="output directory or s3://bucket/prefix")
    p.add_argument("--n", type=positive_int, required=True, help="number of images")
    p.add_argument("--shards", type=positive_int, help="number of Parquet files (default: by size, see docs/format.md)")
    p.add_argument("--image-size", type=positive_int, default=64, help="image side in pixels (default 64)")
    p.add_argument(
        "--tasks", type=task_list, help="comma-separated subset of the scene tasks (default: all four seed tasks)"
    )
    p.add_argument(
        "--extra-tasks",
        type=int,
        default=0,
        metavar="M",
        help="add M derived tasks (counts, relations, conjunctions), at most 100",
    )
    p.add_argument(
        "--label-rate",
        type=label_rate,
        action="append",
        default=[],
        metavar="TASK=FRAC",
        help="fraction of training rows that carry TASK's label (repeatable; val keeps all labels)",
    )
    p.add_argument("--encoding", choices=ENCODINGS, default="raw", help="image encoding (default raw pixels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--val-fraction", type=float, default=0.2, help="fraction of rows in the fully labeled val split (default 0.2)"
    )


def _add_convert(data: argparse._SubParsersAction) -> None:
    p = add_command(
        data,
        "convert",
        "convert an image folder + CSV/JSONL labels, or any Parquet dataset, into mtl-ray shards",
        convert,
    )
    p.add_argument(
        "src",
        metavar="SRC",
        help="image folder, or Parquet file/directory/glob (quoted: 'hub/data/train-*.parquet'); Hugging Face "
        "exports as they are: ClassLabel columns (-1 = unknown), path-only images, train-/validation-/test- files "
        "as splits",
    )
    p.add_argument("out", metavar="OUT", help="output directory or s3://bucket/prefix")
    p.add_argument("--image-column", help="image column of a Parquet source (default: image)")
    _add_label_flags(p)
    p.add_argument(
        "--image-root",
        metavar="DIR",
        help="folder (or s3://prefix) that relative image paths are under, for images stored as a path without "
        "bytes (default: the working directory, then the Parquet file's folder)",
    )
    p.add_argument("--labels-csv", metavar="F", help="CSV or JSONL label file for an image folder (one row per image)")
    p.add_argument(
        "--file-column",
        help="column of the label file naming the image file (default: first of file, filename, image, path)",
    )
    p.add_argument("--image-size", type=image_size, metavar="S|H,W", help="resize every image to S×S or H×W")
    p.add_argument(
        "--resize",
        choices=RESIZE_MODES,
        default="letterbox",
        help="how --image-size is reached: letterbox (whole frame, padded; default), squash, center_crop",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        help="put this fraction of the rows without a split into 'val', by a hash of the row id (a row with a split, "
        "from a split column or its file's name, never moves)",
    )
    p.add_argument(
        "--encoding",
        choices=ENCODINGS,
        help="output encoding (default: jpeg, the source's bytes kept, when every image is JPEG, else png; raw needs "
        "one image size)",
    )
    p.add_argument("--shards", type=positive_int, help="number of output Parquet files")
    p.add_argument("--strict", action="store_true", help="fail on the first unreadable row instead of skipping it")
    p.add_argument("--report", metavar="F", help="where to list skipped rows (default: OUT/_skipped.jsonl when any)")


def _add_label_flags(p: argparse.ArgumentParser) -> None:
    """Which columns are tasks, and what their values mean."""
    p.add_argument(
        "--tasks",
        type=task_list,
        help="comma-separated label columns to keep (default: every bool, 0/1, 1/-1 or two-class ClassLabel "
        "column); a label-list column here becomes one task per class",
    )
    p.add_argument(
        "--classes",
        type=task_list,
        metavar="A,B,..",
        help="classes of a label-list column (Sequence(ClassLabel), list of ids or names) to make tasks of, by name "
        "or id (default: every class)",
    )
    p.add_argument(
        "--absent",
        choices=ABSENT,
        help="what a class left out of a row's label list means: negative (the list names every class present: "
        "COCO-style, NUS-WIDE) or unknown (it names only verified classes: OpenImages); needed for a label list",
    )
    p.add_argument(
        "--negative-list",
        metavar="C",
        help="with --absent unknown: list column naming each row's classes verified absent (negative)",
    )
    for kind, meaning in (("positive", "positive"), ("negative", "negative"), ("missing", "unknown")):
        p.add_argument(
            f"--{kind}",
            action="append",
            default=[],
            metavar="V",
            help=f"extra label value meaning {meaning} (repeatable; a ClassLabel's class name or id too)",
        )
