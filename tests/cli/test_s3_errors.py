"""S3 errors in every command that reads or writes s3://: a missing bucket or key, access denied,
the endpoint down. Each is one line naming the path, exit 2.

Denied requests come from a second moto_server in its IAM mode (`INITIAL_NO_AUTH_ACTION_COUNT`):
after its first action (creating the bucket) it checks credentials, and the `testing` key it
never issued is refused, as an unknown or revoked key is on AWS.
"""

import os
import subprocess

import boto3
import pytest
from conftest import _s3_env, venv_tool, wait_http

from mtl_ray.cluster.runtime import free_port

COMMANDS = [
    ("data", "validate", "{root}/shards"),
    ("train", "--data", "{root}/shards"),
    ("register", "--checkpoint", "{root}/checkpoint"),
    ("predict", "--model", "models:/nothing@champion", "--data", "{root}/shards"),
    ("data", "synth", "{root}/out", "--n", "4"),
    ("train", "--data", "{root}/shards", "--init", "{root}/checkpoint"),
]


def _run_all(cli, root: str, commands=COMMANDS) -> list:
    results = []
    for command in commands:
        res = cli(*(part.format(root=root) for part in command))
        assert res.code == 2, (command, res.err)
        assert len(res.err.strip().splitlines()) == 1, res.err
        assert root in res.err, res.err
        results.append(res)
    return results


@pytest.fixture
def locked_s3(tmp_path, monkeypatch):
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with open(tmp_path / "moto.log", "w") as log:
        proc = subprocess.Popen(
            [venv_tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_http(endpoint + "/moto-api/")
        for key, value in _s3_env(endpoint).items():
            monkeypatch.setenv(key, value)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="locked")
        yield "s3://locked"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_access_denied_is_one_line_in_every_command(cli, locked_s3, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    for res in _run_all(cli, locked_s3):
        assert "ACCESS_DENIED" in res.err


def test_an_endpoint_that_is_down_is_one_line_in_every_command(cli, tmp_path, monkeypatch):
    for key, value in _s3_env(f"http://127.0.0.1:{free_port()}").items():  # nothing listens there
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    for res in _run_all(cli, "s3://some-bucket"):
        assert "NETWORK_CONNECTION" in res.err or "Could not connect" in res.err


def test_a_missing_bucket_or_key_is_one_line_in_every_command(cli, s3, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    for res in _run_all(cli, "s3://no-such-bucket"):
        assert "no-such-bucket" in res.err
    bucket = s3.bucket()
    reads = [c for c in COMMANDS if c[:2] != ("data", "synth")]  # writing into an existing bucket works
    for res in _run_all(cli, f"s3://{bucket}/nothing-here", reads):
        assert "no such file" in res.err or "not a checkpoint" in res.err or "no *.parquet" in res.err, res.err
