"""The `mtl-ray` dispatcher: the top-level parser, and how a command's result reaches the terminal.

Each command calls one API function that returns a `mtl_ray.result.Result`. Its `render()` goes to
stdout (stderr with `--json -`, so stdout stays valid JSON), its `to_json()` to `--json`; a
`UserError` becomes one line on stderr and exit 2, anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable

from mtl_ray import __version__, progress
from mtl_ray.cli import cluster, data, quickstart, registry, serving, studies, train, tune
from mtl_ray.errors import UserError
from mtl_ray.result import Result

GROUPS = (data, train, studies, tune, registry, serving, quickstart, cluster)
"""Command modules, each adding its parsers (`add`), in the order `mtl-ray --help` lists them."""


def build_parser() -> argparse.ArgumentParser:
    return _build()[0]


def cli_commands() -> list[str]:
    """The top-level command names (what `mtl-ray submit` runs as `python -m mtl_ray.cli COMMAND`)."""
    return list(_build()[1].choices)


def _build() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The parser and its top-level subcommands."""
    parser = argparse.ArgumentParser(
        prog="mtl-ray", description="Multi-task learning on images with Ray, PyTorch and MLflow."
    )
    parser.add_argument("--version", action="version", version=f"mtl-ray {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add(commands)
    parser.set_defaults(cli_commands=list(commands.choices))  # what `submit` runs as `python -m mtl_ray.cli`
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
            for problem in result.problems:
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
