"""End to end the way mtl-ray is deployed, on this machine: infra/local/stack.sh starts a Ray head
with the Jobs API (token auth), moto_server and an MLflow tracking server; shards go to s3://;
`mtl-ray submit` runs jobs/tune.py with jobs/configs/smoke.yaml as a Ray job that reads from S3,
checkpoints to S3 and logs to the server; a fresh process then pulls the champion and predicts."""

import os
import subprocess
import sys
import uuid

import boto3
import numpy as np
import pytest
from checkpoints import fresh_predict, make_checkpoint
from conftest import REPO

ROOT = REPO
STACK = os.path.join(ROOT, "infra", "local", "stack.sh")


def _run(args, env, timeout=600, cwd=ROOT):
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _client_env(stack_env: dict) -> dict:
    text = _run(["bash", STACK, "env"], stack_env).stdout
    env = dict(stack_env)
    for line in text.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    return env


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    bin_dir = os.path.dirname(sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_"))}
    env.update(PATH=f"{bin_dir}:{env.get('PATH', '')}", MTL_RAY_STACK_DIR=str(tmp_path_factory.mktemp("stack")))
    up = _run(["bash", STACK, "up"], env, timeout=300)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        again = _run(["bash", STACK, "up"], env, timeout=120)
        assert again.returncode == 0 and again.stdout == up.stdout, "up is not idempotent"
        yield env
    finally:
        down = _run(["bash", STACK, "down"], env, timeout=120)
        status = _run(["bash", STACK, "status"], env)
        assert down.returncode == 0, down.stderr
        assert (
            "moto: stopped" in status.stdout and "mlflow: stopped" in status.stdout and "ray: stopped" in status.stdout
        )


JOB_TRACES = """
import json, os
from mlflow import MlflowClient
from ray.job_submission import JobSubmissionClient

jobs = JobSubmissionClient(os.environ["RAY_ADDRESS"])
text = [json.dumps(j.dict() if hasattr(j, "dict") else vars(j), default=str) for j in jobs.list_jobs()]
text += [jobs.get_job_logs(j.submission_id) for j in jobs.list_jobs() if j.submission_id]
mlflow = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
for run in mlflow.search_runs([e.experiment_id for e in mlflow.search_experiments()]):
    text.append(json.dumps({**run.data.params, **run.data.tags}))
print("\\n".join(text))
"""
"""Everything the Jobs API and MLflow hold about the jobs: job info (runtime env included), logs,
every run's parameters and tags."""


def _predict_champion(env: dict, tmp_path) -> np.ndarray:
    from mtl_ray.data.images import encode_image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(encode_image(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "png"))
        paths.append(str(tmp_path / f"{i}.png"))
    got = fresh_predict(
        "models:/mtl-ray@champion",
        paths,
        {"MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"], "PATH": "/usr/bin:/bin"},
        tmp_path,
    )
    assert got["columns"] == ["pedestrian", "car", "stop_sign", "traffic_light"]
    return np.array(got["values"])


def _smoke_job(env: dict, data: str) -> subprocess.CompletedProcess:
    cli = [sys.executable, "-m", "mtl_ray.cli"]
    synth = _run([*cli, "data", "synth", data, "--n", "400", "--image-size", "32", "--shards", "2"], env)
    assert synth.returncode == 0, synth.stderr
    job = _run(
        [
            *cli,
            "submit",
            "--",
            "python",
            "jobs/tune.py",
            "--config",
            "jobs/configs/smoke.yaml",
            "--data",
            data,
            "--storage",
            "s3://mtl-ray/e2e/runs",
            "--name",
            "smoke",
        ],
        env,
        timeout=900,
    )
    assert job.returncode == 0, (job.stdout[-3000:], job.stderr[-3000:])
    assert "SUCCEEDED" in job.stderr.splitlines()[-1] or "SUCCEEDED" in job.stdout.splitlines()[-1]
    return job


def test_tune_job_on_the_local_stack_reads_s3_and_registers_through_the_server(stack, tmp_path):
    """The job, then the stack restarted (`down`, `up`) and a registering job again: S3 and the
    registry start empty together, so the champion loads after the restart too. The submitting shell holds AWS
    secrets of its own (moto takes any); none of them reaches the Jobs API, the job's logs or MLflow."""
    secrets = {"AWS_SECRET_ACCESS_KEY": f"sk-{uuid.uuid4().hex}", "AWS_SESSION_TOKEN": f"tok-{uuid.uuid4().hex}"}
    env = {**_client_env(stack), **secrets}
    assert env["RAY_ADDRESS"].startswith("http://127.0.0.1:")
    data = "s3://mtl-ray/e2e/shards"
    job = _smoke_job(env, data)
    assert "registered mtl-ray version 1" in job.stdout
    assert "checkpoint s3://mtl-ray/e2e/runs/smoke-" in job.stdout
    values = _predict_champion(env, tmp_path)
    assert values.shape == (3, 4) and ((values >= 0) & (values <= 1)).all()

    traces = _run([sys.executable, "-c", JOB_TRACES], env)
    assert traces.returncode == 0 and "smoke" in traces.stdout, traces.stderr[-2000:]
    for name, value in secrets.items():
        assert value not in traces.stdout, f"{name} leaked into the job's info, logs or MLflow"

    assert _run(["bash", STACK, "down"], stack).returncode == 0
    up = _run(["bash", STACK, "up"], stack, timeout=300)
    assert up.returncode == 0 and "registry empty, together" in up.stdout, up.stdout + up.stderr
    env = {**_client_env(stack), **secrets}
    checkpoint = tmp_path / "restart"
    make_checkpoint(checkpoint, 0.6, seed=0)
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    for f in checkpoint.iterdir():
        s3.upload_file(str(f), "mtl-ray", f"e2e/restart/{f.name}")
    cli = [sys.executable, "-m", "mtl_ray.cli"]
    job = _run([*cli, "submit", "--", "register", "--checkpoint", "s3://mtl-ray/e2e/restart"], env, timeout=300)
    assert job.returncode == 0, (job.stdout[-3000:], job.stderr[-3000:])
    assert "registered mtl-ray version 1" in job.stdout  # a fresh registry, as fresh as the bucket
    assert _predict_champion(env, tmp_path).shape == (3, 4)


def test_submit_bad_input_is_one_line(stack, tmp_path):
    env = _client_env(stack)
    cli = [sys.executable, "-m", "mtl_ray.cli", "submit"]
    bad_env = tmp_path / "env.yaml"
    bad_env.write_text("env_vars: [1, 2\n")
    cases = {
        "not valid YAML": _run([*cli, "--runtime-env", str(bad_env), "--", "tune", "--help"], env),
        "cannot reach the Ray Jobs API": _run([*cli, "--address", "http://127.0.0.1:9", "--", "tune", "--help"], env),
        "authentication failed": _run([*cli, "--", "tune", "--help"], {**env, "RAY_AUTH_TOKEN": "0" * 64}),
    }
    for expected, result in cases.items():
        assert result.returncode == 2, (expected, result.stderr)
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    failing = _run([*cli, "--", "python", "-c", "import sys; print('about to fail'); sys.exit(3)"], env, timeout=300)
    assert failing.returncode == 1
    assert "FAILED" in failing.stdout.splitlines()[-4] or "FAILED" in failing.stdout
    assert "last log lines:" in failing.stdout and "about to fail" in failing.stdout
