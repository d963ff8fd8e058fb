"""`mtl-ray` command line: a thin shell over the Python API.

Each command calls one API function that returns a result object with `to_json()` (the `--json`
summary), `render()` (the human summary) and `exit_code`. A `UserError` becomes one line on stderr
and exit 2; with `--json -` the human summary goes to stderr so stdout stays valid JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Protocol

from mtl_ray import __version__, progress
from mtl_ray.config import DEFAULT_ALIAS, DEFAULT_MODEL_NAME
from mtl_ray.errors import UserError
from mtl_ray.images import RESIZE_MODES
from mtl_ray.quickstart import DEFAULT_OUT, EPOCHS, SCENES
from mtl_ray.runtime import DEFAULT_STORAGE


class Result(Protocol):
    exit_code: int

    def to_json(self) -> dict: ...

    def render(self) -> str: ...


def _task_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _label_rate(text: str) -> tuple[str, float]:
    task, sep, frac = text.partition("=")
    try:
        value = float(frac)
    except ValueError:
        value = -1.0
    if not sep or not task or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected TASK=FRACTION with FRACTION in [0, 1]")
    return task, value


def _image_size(text: str) -> int | tuple[int, int]:
    """`S` or `H,W` (height first, as in `image_size: [H, W]`)."""
    parts = text.replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values, default=0) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer S or H,W")
    return values[0] if len(values) == 1 else (values[0], values[1])


def _label_budgets(text: str) -> list[int | str]:
    from mtl_ray.transfer import parse_labels

    try:
        return parse_labels(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str, least: int = 1, what: str = "a positive integer") -> int:
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {what}")
    return value


def _count(text: str) -> int:
    return _positive_int(text, 0, "an integer ≥ 0")


def _cmd_synth(args: argparse.Namespace) -> Result:
    from mtl_ray.synth import synthesize

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


def _cmd_convert(args: argparse.Namespace) -> Result:
    from mtl_ray.convert import convert

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
        image_size=args.image_size,
        resize=args.resize,
        encoding=args.encoding,
        strict=args.strict,
        report=args.report,
        shards=args.shards,
        val_fraction=args.val_fraction,
    )


def _cmd_validate(args: argparse.Namespace) -> Result:
    from mtl_ray.validate import validate

    return validate(args.path, full=args.full, image_column=args.image_column)


def _train_config(args: argparse.Namespace):
    from mtl_ray import config

    overrides = {
        "image_size": args.image_size,
        "strict": args.strict or None,
        "decode": args.decode,
        "init": args.init,
        "backbone": args.backbone,
        "epochs": args.epochs,
        "workers": args.workers,
        "max_failures": args.max_failures,
        "gpu": args.gpu or None,
        "weighting": {"name": args.weighting} if args.weighting else None,
    }
    return config.load_train(args.config, overrides)


def _cmd_train(args: argparse.Namespace) -> Result:
    from mtl_ray.train import fit

    return fit(args.data, val=args.val, config=_train_config(args), storage_path=args.storage, name=args.name)


def _cmd_compare(args: argparse.Namespace) -> Result:
    from mtl_ray.compare import compare

    return compare(
        args.data,
        val=args.val,
        config=_train_config(args).model_copy(update={"init": None}),  # transfer trains with and without it
        control=args.control,
        plots=args.plots,
        storage_path=args.storage,
        focus=args.focus,
        seeds=args.seeds,
        track=not args.no_track,
    )


def _cmd_advise(args: argparse.Namespace) -> Result:
    from mtl_ray.advise import advise

    return advise(args.data, rows=args.rows, steps=args.steps, track=not args.no_track)


def _cmd_transfer(args: argparse.Namespace) -> Result:
    from mtl_ray.transfer import transfer

    return transfer(
        args.data,
        args.init,
        labels=args.labels,
        seeds=args.seeds,
        config=_train_config(args),
        val=args.val,
        plots=args.plots,
        storage_path=args.storage,
    )


def _cmd_tune(args: argparse.Namespace) -> Result:
    from mtl_ray import config
    from mtl_ray.tune import tune

    cfg = config.load(config.TuneConfig, args.config)
    return tune(
        args.data,
        val=args.val,
        config=cfg,
        source=args.config,
        name=args.name,
        storage_path=args.storage,
        resume=args.resume,
    )


def _cmd_register(args: argparse.Namespace) -> Result:
    from mtl_ray.registry import register

    return register(args.run, args.checkpoint, name=args.name, alias=args.alias)


def _cmd_predict(args: argparse.Namespace) -> Result:
    from mtl_ray.registry import predict

    return predict(args.model, data=args.data, images=args.images, limit=args.limit)


def _cmd_quickstart(args: argparse.Namespace) -> Result:
    from mtl_ray.quickstart import quickstart

    return quickstart(args.out, scenes=args.scenes, epochs=args.epochs)


def _cmd_submit(args: argparse.Namespace) -> Result:
    from mtl_ray.submit import submit

    command = args.command_args[1:] if args.command_args[:1] == ["--"] else args.command_args
    return submit(
        command,
        cli_commands=cli_commands(),
        address=args.address,
        runtime_env_file=args.runtime_env,
        forward_env=not args.no_forward_env,
        forward_credentials=args.forward_credentials,
        follow=not args.no_wait,
    )


def _training_flags(p: argparse.ArgumentParser, init_required: bool = False) -> None:
    p.add_argument("--data", required=True, metavar="PATH", help="training shards (rows with split 'train' or none)")
    p.add_argument("--val", metavar="PATH", help="validation shards (default: the 'val' split of --data)")
    p.add_argument(
        "--config",
        metavar="F",
        help="YAML file with TrainConfig keys, or a job config (jobs/configs) whose train: section is used; "
        "flags override it",
    )
    p.add_argument("--backbone", help="backbone name (default m; see docs/models.md); with --init, the init's")
    p.add_argument(
        "--init",
        metavar="URI",
        required=init_required,
        help="start from models:/NAME@ALIAS, models:/NAME/VERSION, a checkpoint (directory or s3://) "
        "or torchvision (ImageNet weights of a resnet backbone): its trunk, and the heads of tasks it has",
    )
    p.add_argument(
        "--weighting",
        metavar="NAME",
        help="task weighting: equal, static, uncertainty, gradnorm, dwa, pcgrad (parameters via --config)",
    )
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--workers", type=_positive_int, help="Ray Train workers (default 2 on CPU, 1 per GPU with --gpu)")
    p.add_argument("--gpu", action="store_true", help="train on GPUs (fails fast if the cluster has none)")
    p.add_argument(
        "--max-failures",
        type=_count,
        help="times a failed worker group is restarted from the last checkpoint before the run fails (default 2)",
    )
    p.add_argument(
        "--image-size",
        type=_image_size,
        metavar="S|H,W",
        help="train at S×S or H×W (default: the shards' size when all images share one, else 64×64)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="an unreadable image stops the run (default: skipped and counted as skipped_images)",
    )
    p.add_argument(
        "--decode",
        choices=["auto", "tasks", "worker"],
        help="where JPEG images are decoded: Ray Data tasks on CPUs, or the training worker (nvJPEG on its GPU); "
        "default auto: the worker on GPU runs with torchvision over data too big to cache",
    )
    p.add_argument(
        "--storage",
        metavar="PATH",
        help=f"where checkpoints go: directory or s3://bucket/prefix (default ./{DEFAULT_STORAGE})",
    )


def build_parser() -> argparse.ArgumentParser:
    return _build()[0]


def cli_commands() -> list[str]:
    """The top-level command names (what `mtl-ray submit` runs as `python -m mtl_ray.cli COMMAND`)."""
    return list(_build()[1].choices)


def _no_track_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-track",
        action="store_true",
        help="do not log this result as an MLflow run (default: log it to MLFLOW_TRACKING_URI or sqlite:///mlruns.db)",
    )


def _build() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The parser and its top-level subcommands."""
    parser = argparse.ArgumentParser(
        prog="mtl-ray", description="Multi-task learning on images with Ray, PyTorch and MLflow."
    )
    parser.add_argument("--version", action="version", version=f"mtl-ray {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(sub, name: str, help: str, handler: Callable[[argparse.Namespace], Result]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--json", metavar="FILE", help="write the summary as JSON to FILE ('-' = stdout)")
        p.add_argument("--quiet", action="store_true", help="no progress lines on stderr (errors still show)")
        p.set_defaults(handler=handler)
        return p

    data = commands.add_parser("data", help="create, convert and check Parquet image shards").add_subparsers(
        dest="data_command", required=True, metavar="DATA_COMMAND"
    )

    p = command(
        data,
        "synth",
        "write procedural driving scenes as shards (tasks: pedestrian, car, stop_sign, traffic_light)",
        _cmd_synth,
    )
    p.add_argument("out", metavar="OUT", help="output directory or s3://bucket/prefix")
    p.add_argument("--n", type=_positive_int, required=True, help="number of images")
    p.add_argument(
        "--shards", type=_positive_int, help="number of Parquet files (default: by size, see docs/format.md)"
    )
    p.add_argument("--image-size", type=_positive_int, default=64, help="image side in pixels (default 64)")
    p.add_argument(
        "--tasks", type=_task_list, help="comma-separated subset of the scene tasks (default: all four seed tasks)"
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
        type=_label_rate,
        action="append",
        default=[],
        metavar="TASK=FRAC",
        help="fraction of training rows that carry TASK's label (repeatable; val keeps all labels)",
    )
    p.add_argument(
        "--encoding", choices=["png", "jpeg", "raw"], default="raw", help="image encoding (default raw pixels)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--val-fraction", type=float, default=0.2, help="fraction of rows in the fully labeled val split (default 0.2)"
    )

    p = command(
        data,
        "convert",
        "convert an image folder + CSV/JSONL labels, or any Parquet dataset, into mtl-ray shards",
        _cmd_convert,
    )
    p.add_argument("src", metavar="SRC", help="image folder, or Parquet file/directory (Hugging Face exports included)")
    p.add_argument("out", metavar="OUT", help="output directory or s3://bucket/prefix")
    p.add_argument("--image-column", help="image column of a Parquet source (default: image)")
    p.add_argument(
        "--tasks", type=_task_list, help="comma-separated label columns to keep (default: every label-like column)"
    )
    p.add_argument("--labels-csv", metavar="F", help="CSV or JSONL label file for an image folder (one row per image)")
    p.add_argument(
        "--file-column",
        help="column of the label file naming the image file (default: first of file, filename, image, path)",
    )
    p.add_argument(
        "--positive", action="append", default=[], metavar="V", help="extra label value meaning positive (repeatable)"
    )
    p.add_argument(
        "--negative", action="append", default=[], metavar="V", help="extra label value meaning negative (repeatable)"
    )
    p.add_argument(
        "--missing", action="append", default=[], metavar="V", help="extra label value meaning unknown (repeatable)"
    )
    p.add_argument("--image-size", type=_image_size, metavar="S|H,W", help="resize every image to S×S or H×W")
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
        help="put this fraction of the rows without a split into 'val', by a hash of the row id",
    )
    p.add_argument(
        "--encoding", choices=["png", "jpeg", "raw"], default="png", help="output encoding (raw needs one image size)"
    )
    p.add_argument("--shards", type=_positive_int, help="number of output Parquet files")
    p.add_argument("--strict", action="store_true", help="fail on the first unreadable row instead of skipping it")
    p.add_argument("--report", metavar="F", help="where to list skipped rows (default: OUT/_skipped.jsonl when any)")

    p = command(
        data, "validate", "check shards: schema across files, image decode, per-task label table", _cmd_validate
    )
    p.add_argument("path", metavar="PATH", help="directory, Parquet file, or s3://bucket/prefix")
    p.add_argument("--full", action="store_true", help="decode every image (default: a sample per shard)")
    p.add_argument("--image-column", help="image column when shards carry no mtl_ray metadata (default: image)")

    p = command(
        commands, "train", "train one multi-task model with Ray Train (resumes a run of the same --name)", _cmd_train
    )
    _training_flags(p)
    p.add_argument("--name", metavar="RUN", help="run name; rerunning a name resumes from its last checkpoint")

    p = command(
        commands,
        "compare",
        "multi-task model vs one single-task network per task, same backbone and epochs",
        _cmd_compare,
    )
    _training_flags(p)
    p.add_argument(
        "--control", choices=["shuffle"], help="also retrain the multi-task model with the other tasks' labels shuffled"
    )
    p.add_argument(
        "--focus", metavar="TASK", help="the task the shuffle control keeps (default: the one with the fewest labels)"
    )
    p.add_argument("--plots", metavar="DIR", help="write metrics.png, curves.png and task_weights.png here")
    p.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        help="run each side N times (training seeds seed..seed+N-1) and report mean ± std",
    )
    _no_track_flag(p)

    p = command(
        commands,
        "transfer",
        "the transfer-learning curve: each label budget trained from scratch and from a trained model (--init)",
        _cmd_transfer,
    )
    _training_flags(p, init_required=True)
    p.add_argument(
        "--labels",
        type=_label_budgets,
        default="25,50,100,all",
        metavar="25,50,all",
        help="label budgets: that many labeled training rows, picked by a hash of the row id (default 25,50,100,all)",
    )
    p.add_argument("--seeds", type=_positive_int, default=1, help="runs per budget and side; mean ± std reported")
    p.add_argument("--plots", metavar="DIR", help="write transfer.png (AUROC against labels, both ways) here")

    p = command(
        commands,
        "tune",
        "Ray Tune over backbone, weighting and lr; every trial tracked in MLflow; the best registered",
        _cmd_tune,
    )
    p.add_argument("--data", metavar="PATH", help="training shards (default: the config's data key)")
    p.add_argument(
        "--val",
        metavar="PATH",
        help="validation shards (default: the config's val key, else the 'val' split of the data)",
    )
    p.add_argument(
        "--config",
        required=True,
        metavar="F",
        help="YAML with data, train, search, scheduler, tracking and registry keys (docs/tune.md)",
    )
    p.add_argument(
        "--name", metavar="NAME", help="tune job name (default tune-DATE-TIME); trials' Train runs are NAME-TRIAL_ID"
    )
    p.add_argument(
        "--resume",
        metavar="NAME",
        help="finish the interrupted search NAME under --storage: finished trials kept, unfinished ones "
        "resumed from their checkpoints, errored ones restarted; the best is registered once",
    )
    p.add_argument(
        "--storage",
        metavar="PATH",
        help=f"where checkpoints go: directory or s3://bucket/prefix (default: config storage, else "
        f"./{DEFAULT_STORAGE})",
    )

    p = command(
        commands,
        "register",
        "register a checkpoint as a model version; the alias moves only if mean_auroc beats the current one",
        _cmd_register,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="RUN_ID", help="an MLflow run of a tune trial (its mtl_ray.checkpoint tag)")
    source.add_argument("--checkpoint", metavar="URI", help="a checkpoint directory or s3:// URI")
    p.add_argument("--name", default=DEFAULT_MODEL_NAME, help=f"registered model name (default {DEFAULT_MODEL_NAME})")
    p.add_argument("--alias", default=DEFAULT_ALIAS, help=f"the gated alias (default {DEFAULT_ALIAS})")

    p = command(commands, "predict", "per-task probabilities from a registered (or any pyfunc) model", _cmd_predict)
    p.add_argument(
        "--model", required=True, metavar="URI", help="e.g. models:/mtl-ray@champion, models:/mtl-ray/3, runs:/ID/model"
    )
    p.add_argument("--data", metavar="PATH", help="shards to score (instead of image files)")
    p.add_argument("--limit", type=_positive_int, help="score at most this many rows of --data")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (PNG, JPEG, ...)")

    p = command(
        commands,
        "quickstart",
        f"synthesise scenes, tune 4 trials, register the best as models:/{DEFAULT_MODEL_NAME}@{DEFAULT_ALIAS}, "
        f"predict (local, CPU, minutes)",
        _cmd_quickstart,
    )
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"shards go to DIR/data, checkpoints to DIR/runs (default ./{DEFAULT_OUT})",
    )
    p.add_argument("--scenes", type=_positive_int, default=SCENES, help=f"synthetic scenes (default {SCENES})")
    p.add_argument("--epochs", type=_positive_int, default=EPOCHS, help=f"epochs per trial (default {EPOCHS})")

    p = command(
        commands,
        "submit",
        "run an mtl-ray command or a jobs/ script as a Ray job; stream its logs; exit with its status",
        _cmd_submit,
    )
    p.add_argument("--address", metavar="URL", help="Ray Jobs API URL, http://HEAD:8265 (default: RAY_ADDRESS)")
    p.add_argument(
        "--runtime-env",
        metavar="F",
        help="YAML/JSON runtime env (working_dir, env_vars, pip, ...); default working_dir: .",
    )
    p.add_argument(
        "--no-forward-env",
        action="store_true",
        help="do not forward MLFLOW_TRACKING_URI and the S3 endpoint and region of this shell",
    )
    p.add_argument(
        "--forward-credentials",
        action="store_true",
        help="also forward AWS keys and tracking credentials (readable in the Jobs API; prefer cluster roles)",
    )
    p.add_argument("--no-wait", action="store_true", help="return after submitting instead of following the logs")
    p.add_argument(
        "command_args",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND",
        help="e.g. -- tune --config jobs/configs/driving.yaml",
    )

    p = command(
        commands,
        "advise",
        "measure the three conditions for multi-task learning: shared features, data amounts, capacity",
        _cmd_advise,
    )
    p.add_argument("--data", required=True, metavar="PATH", help="shards (train rows are probed, val rows evaluated)")
    p.add_argument("--rows", type=_positive_int, default=1024, help="rows sampled for the probes (default 1024)")
    p.add_argument("--steps", type=_positive_int, default=60, help="training steps per probe (default 60)")
    _no_track_flag(p)
    return parser, commands


def _write_json(summary: dict, target: str) -> None:
    text = json.dumps(summary, indent=2, sort_keys=False)
    if target == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(target, "w") as f:
            f.write(text + "\n")


def run(produce: Callable[[], Result], json_target: str | None) -> int:
    """Run a command: its summary to stdout (stderr with `--json -`), JSON where asked, one line per error."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines would bury the one-line errors
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per download is not progress
    human = sys.stderr if json_target == "-" else sys.stdout
    try:
        # Ray Tune and MLflow print progress to stdout; with --json - it must hold the JSON alone.
        with contextlib.redirect_stdout(sys.stderr) if json_target == "-" else contextlib.nullcontext():
            result = produce()
        print(result.render(), file=human)
        if json_target:
            _write_json(result.to_json(), json_target)
        if result.exit_code != 0:
            for problem in result.to_json().get("problems", []):
                print(f"mtl-ray: error: {problem}", file=sys.stderr)
        return result.exit_code
    except UserError as exc:
        print(f"mtl-ray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mtl-ray: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress.set_quiet(args.quiet)
    return run(lambda: args.handler(args), args.json)


def job_main(kind: str, argv: list[str] | None = None) -> int:
    """`jobs/{train,tune,compare}.py`: one job config (TuneConfig keys: data, val, storage, train,
    search, ...) run as that command; flags override the config's data, val and storage."""
    p = argparse.ArgumentParser(
        prog=f"jobs/{kind}.py", description=f"Ray job entry point: mtl-ray {kind} from a job config"
    )
    p.add_argument("--config", required=True, metavar="F", help="job config, e.g. jobs/configs/driving.yaml")
    p.add_argument("--data", metavar="PATH", help="training shards (default: the config's data)")
    p.add_argument("--val", metavar="PATH", help="validation shards (default: the config's val)")
    p.add_argument("--storage", metavar="PATH", help="checkpoints (default: the config's storage)")
    p.add_argument("--name", metavar="NAME", help="run or tune job name")
    p.add_argument("--json", metavar="FILE", help="write the summary as JSON to FILE ('-' = stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr (errors still show)")
    args = p.parse_args(argv)
    progress.set_quiet(args.quiet)

    def produce() -> Result:
        from mtl_ray import config

        cfg = config.load(config.TuneConfig, args.config)
        data, val, storage = cfg.data_path(args.data, args.config), args.val or cfg.val, args.storage or cfg.storage
        if kind == "tune":
            from mtl_ray.tune import tune

            return tune(data, val=val, config=cfg, source=args.config, name=args.name, storage_path=storage)
        if kind == "train":
            from mtl_ray.train import fit

            return fit(data, val=val, config=cfg.train, storage_path=storage, name=args.name)
        from mtl_ray.compare import compare

        return compare(data, val=val, config=cfg.train, control="shuffle", storage_path=storage)

    return run(produce, args.json)


if __name__ == "__main__":
    sys.exit(main())
