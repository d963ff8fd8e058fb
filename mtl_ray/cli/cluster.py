"""`mtl-ray submit`: any command or jobs/ script as a Ray job on a cluster's Jobs API."""

from __future__ import annotations

import argparse

from mtl_ray.cli.flags import add_command
from mtl_ray.result import Result


def submit(args: argparse.Namespace) -> Result:
    from mtl_ray.cluster.submit import submit

    command = args.command_args[1:] if args.command_args[:1] == ["--"] else args.command_args
    return submit(
        command,
        cli_commands=args.cli_commands,
        address=args.address,
        runtime_env_file=args.runtime_env,
        forward_env=not args.no_forward_env,
        forward_credentials=args.forward_credentials,
        follow=not args.no_wait,
    )


def add(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands,
        "submit",
        "run an mtl-ray command or a jobs/ script as a Ray job; stream its logs; exit with its status",
        submit,
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
