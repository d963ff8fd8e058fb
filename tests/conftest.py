"""Shared fixtures: a real S3-compatible server (moto_server) on 127.0.0.1 and CLI helpers."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass

import pytest

from mtl_ray.cli.app import main as cli_main
from mtl_ray.cluster.runtime import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The checkout: docs/, infra/, jobs/ and tests/fixtures/ are read from here."""


def pytest_collection_modifyitems(config, items):
    """A test that starts Ray, a Tune job or the local stack is an end-to-end run: it must be marked slow."""
    for item in items:
        if {"ray_session", "stack"} & set(item.fixturenames) and not item.get_closest_marker("slow"):
            raise pytest.UsageError(f"{item.nodeid} uses Ray: mark it @pytest.mark.slow")


def venv_tool(name: str) -> str:
    """A console script of the environment running the tests, not whatever version PATH finds first."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.path.exists(beside) else shutil.which(name) or name


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server at {url} did not come up in {timeout:.0f}s") from None
            time.sleep(0.2)


@dataclass
class S3Server:
    endpoint: str
    env: dict[str, str]

    def bucket(self) -> str:
        """A fresh, empty bucket; returns its name."""
        import boto3

        name = f"mtl-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1").create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def _moto_server(tmp_path_factory):
    exe = venv_tool("moto_server")
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_http(endpoint + "/moto-api/")
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _s3_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture
def s3(_moto_server, monkeypatch) -> S3Server:
    """Points the AWS variables of this test (and its subprocesses) at the local moto_server."""
    env = _s3_env(_moto_server)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return S3Server(endpoint=_moto_server, env=env)


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> dict:
        return json.loads(self.out)


@pytest.fixture
def cli(capsys):
    """Runs `mtl-ray ARGS...` in-process and returns exit code, stdout and stderr."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()  # only this command's output: not the progress lines of set-up before it
        try:
            code = cli_main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 2
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(autouse=True)
def _own_tracking_store(tmp_path, monkeypatch):
    """Commands that log to MLflow by default (compare, advise) log to this test's own sqlite store,
    never to a mlruns.db in the checkout."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns.db")


@pytest.fixture
def local_mlflow(tmp_path, monkeypatch):
    """A sqlite tracking store and its artifacts in this test's directory, which becomes the working directory."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def ray_session(_moto_server):
    """One local Ray instance for the whole test session (start-up costs ~10 s).

    Its worker processes inherit the environment at start, so the moto_server credentials are set
    first: Ray tasks that read or checkpoint to s3:// then find them as on a real cluster.
    """
    import ray

    from mtl_ray.cluster.runtime import ensure_ray

    saved = {k: os.environ.get(k) for k in _s3_env(_moto_server)}
    os.environ.update(_s3_env(_moto_server))
    ensure_ray()
    yield ray
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@dataclass
class MlflowServer:
    uri: str
    artifacts: str


@pytest.fixture(scope="session")
def mlflow_server(_moto_server, tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1: sqlite backend, artifacts proxied to s3:// on moto_server."""
    import boto3

    env = {**os.environ, **_s3_env(_moto_server), "MLFLOW_S3_ENDPOINT_URL": _moto_server}
    bucket = f"mlflow-{uuid.uuid4().hex[:8]}"
    boto3.client(
        "s3",
        endpoint_url=_moto_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=bucket)
    root = tmp_path_factory.mktemp("mlflow")
    proc, uri = start_mlflow_server(root, f"s3://{bucket}/mlflow", env)
    try:
        yield MlflowServer(uri=uri, artifacts=f"s3://{bucket}/mlflow")
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to a server's process group (`mlflow server` runs uvicorn and job runners under it)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=20)


def start_mlflow_server(root, artifacts: str, env: dict) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on 127.0.0.1 with its sqlite database in `root`, answering /health; (process, URI)."""
    port = free_port()
    with open(root / "server.log", "a") as log:
        proc = subprocess.Popen(
            [
                venv_tool("mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{root}/mlflow.db",
                "--artifacts-destination",
                artifacts,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: killing the group stops its workers too
        )
    uri = f"http://127.0.0.1:{port}"
    wait_http(uri + "/health", timeout=90)
    return proc, uri
