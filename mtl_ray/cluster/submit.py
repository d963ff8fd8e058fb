"""`mtl-ray submit`: run any mtl-ray command (or a `jobs/` script) as a Ray job and follow it.

The job is submitted through `JobSubmissionClient` to the Jobs API URL (`--address`, else
`RAY_ADDRESS`), with the working directory uploaded (`working_dir: .`, minus virtualenvs, runs and
local databases) and the submitting shell's `MLFLOW_TRACKING_URI` and S3 endpoint and region
forwarded in the runtime environment's `env_vars`, so the job reads the same data and logs to the
same tracking server. Credentials are not forwarded: a runtime env is readable by anyone who can
open the Jobs API or the dashboard, so the cluster should hold its own (instance roles, IRSA, a
Kubernetes secret); a tracking URI's password is dropped. `forward_credentials` opts in, with a
warning. Its logs stream to stdout; the exit status is the job's (0 SUCCEEDED, 1 otherwise).
Ray's token authentication is used when a token is found where Ray looks for one
(`RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH`, `~/.ray/auth_token`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from mtl_ray.config import DEFAULT_STORAGE, load_yaml
from mtl_ray.errors import UserError, describe
from mtl_ray.quickstart import DEFAULT_OUT
from mtl_ray.result import Result

FORWARDED_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)
CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
"""Forwarded only with `--forward-credentials`."""
EXCLUDES = [
    ".venv",
    ".git",
    DEFAULT_STORAGE,
    DEFAULT_OUT,
    "mlruns",
    "mlruns.db",
    "*.db",
    "__pycache__",
    ".whl",
    ".mtl-ray-stack",
]
AGENT_ATTEMPTS = 30


@dataclass
class SubmitResult(Result):
    job_id: str
    status: str
    address: str
    message: str
    """Ray's word on how the job ended, without the copy of its logs Ray appends (they were streamed)."""

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "SUCCEEDED" else 1

    def render(self) -> str:
        return f"job {self.job_id}: {self.status}" + (
            f" ({self.message})" if self.message and self.status != "SUCCEEDED" else ""
        )


def entrypoint(command: list[str], cli_commands: Collection[str]) -> str:
    """`tune --data X` (or `mtl-ray tune ...`) → `python -m mtl_ray.cli tune ...` when `tune` is one of
    `cli_commands` (the CLI's own, which it passes in); anything else as given."""
    if not command:
        raise UserError("submit: no command; usage: mtl-ray submit [--address URL] -- COMMAND ...")
    if command[0] == "mtl-ray":
        command = command[1:]
    if command and command[0] in cli_commands:
        return shlex.join(["python", "-m", "mtl_ray.cli", *command])
    return shlex.join(command)


def runtime_env(path: str | None, forward_env: bool, forward_credentials: bool = False) -> dict:
    """The job's runtime env: the file's (YAML or JSON), a default working_dir, forwarded variables
    (credentials only with `forward_credentials`; a tracking URI's password removed otherwise)."""
    env = load_yaml(path, f"--runtime-env {path}")
    if not isinstance(env.get("env_vars", {}), dict):
        raise UserError(f"--runtime-env {path}: env_vars: expected a mapping of NAME: value")
    env.setdefault("working_dir", ".")
    if env["working_dir"] == ".":
        env.setdefault("excludes", EXCLUDES)
    if forward_env:
        names = FORWARDED_ENV + (CREDENTIAL_ENV if forward_credentials else ())
        forwarded = {k: os.environ[k] for k in names if os.environ.get(k)}
        if "MLFLOW_TRACKING_URI" in forwarded and not forward_credentials:
            forwarded["MLFLOW_TRACKING_URI"] = _without_password(forwarded["MLFLOW_TRACKING_URI"])
        env["env_vars"] = {**forwarded, **env.get("env_vars", {})}
    return env


def _without_password(uri: str) -> str:
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", "@", 1)))


def _use_token_if_present() -> None:
    """Turn on Ray's token auth for this client when a token sits where Ray looks for one."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(path):
        os.environ["RAY_AUTH_MODE"] = "token"


def _explain(address: str, exc: Exception, doing: str) -> UserError:
    text = describe(exc)
    if "auth" in text.lower() or " 401" in text or " 403" in text:
        return UserError(
            f"--address {address}: authentication failed ({text}); set RAY_AUTH_TOKEN or put the "
            "cluster's token in ~/.ray/auth_token"
        )
    return UserError(f"--address {address}: {doing} ({text})")


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    _use_token_if_present()
    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # connection refused, DNS, HTTP 401/403 all surface here
        raise _explain(address, exc, "cannot reach the Ray Jobs API") from None


async def _follow(client, job_id: str, out) -> None:
    async for chunk in client.tail_job_logs(job_id):
        out.write(chunk)
        out.flush()


def submit(
    command: list[str],
    *,
    cli_commands: Collection[str],
    address: str | None = None,
    runtime_env_file: str | None = None,
    forward_env: bool = True,
    forward_credentials: bool = False,
    follow: bool = True,
) -> SubmitResult:
    """Submit `command` as a Ray job, stream its logs, and return its final status."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserError("submit: no Ray Jobs address; pass --address http://HEAD:8265 or set RAY_ADDRESS")
    if not address.startswith(("http://", "https://")):
        raise UserError(f"--address {address}: expected the Jobs API URL, http://HEAD:8265")
    env = runtime_env(runtime_env_file, forward_env, forward_credentials)
    if forward_credentials:
        print(
            "mtl-ray: warning: --forward-credentials puts your AWS keys and tracking credentials in the job's "
            "runtime env, readable by anyone who can open the Ray Jobs API or dashboard",
            file=sys.stderr,
        )
    entry = entrypoint(command, cli_commands)
    # Ray's client prefers RAY_ADDRESS over the address it is given, and logs each packaged file.
    os.environ["RAY_ADDRESS"] = address
    os.environ.pop("RAY_API_SERVER_ADDRESS", None)
    logging.getLogger("ray").setLevel(logging.ERROR)
    client = _client(address)
    for attempt in range(1, AGENT_ATTEMPTS + 1):
        try:
            job_id = client.submit_job(entrypoint=entry, runtime_env=env)
            break
        except Exception as exc:
            # A head that just started answers 500 "No available agent" until its job agent is up.
            if "no available agent" not in str(exc).lower() or attempt == AGENT_ATTEMPTS:
                raise _explain(address, exc, "job not accepted") from None
            time.sleep(2)
    print(f"submitted job {job_id} to {address}: {entry}", file=sys.stderr)
    if not follow:
        return SubmitResult(job_id, client.get_job_status(job_id).value, address, "")
    asyncio.run(_follow(client, job_id, sys.stdout))
    info = client.get_job_info(job_id)
    message = (info.message or "").split(", last available logs", 1)[0].strip()
    return SubmitResult(job_id, info.status.value, address, message)
