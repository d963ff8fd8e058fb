"""`mtl-ray submit` pieces that need no cluster: the entrypoint, the runtime env, address checks."""

import time

import pytest

from mtl_ray.cli.app import cli_commands
from mtl_ray.cluster.submit import CREDENTIAL_ENV, EXCLUDES, FORWARDED_ENV, entrypoint, runtime_env, submit
from mtl_ray.data.synth.dataset import synthesize
from mtl_ray.errors import UserError


def test_mtl_ray_commands_run_through_the_cli_module_and_scripts_run_as_given():
    commands = cli_commands()
    assert {"data", "train", "compare", "advise", "tune", "register", "predict", "quickstart"} <= set(commands)
    assert (
        entrypoint(["tune", "--config", "jobs/configs/smoke.yaml"], commands)
        == "python -m mtl_ray.cli tune --config jobs/configs/smoke.yaml"
    )
    assert (
        entrypoint(["mtl-ray", "train", "--data", "s3://b/x y"], commands)
        == "python -m mtl_ray.cli train --data 's3://b/x y'"
    )
    assert (
        entrypoint(["python", "jobs/tune.py", "--config", "c.yaml"], commands) == "python jobs/tune.py --config c.yaml"
    )
    with pytest.raises(UserError, match="no command"):
        entrypoint([], commands)


def test_runtime_env_forwards_tracking_and_endpoint_but_no_credentials(monkeypatch, tmp_path):
    for key in FORWARDED_ENV + CREDENTIAL_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://alice:hunter2@mlflow.example:5000")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("HOME_SECRET", "never")
    env = runtime_env(None, forward_env=True)
    assert env["working_dir"] == "." and env["excludes"] == EXCLUDES
    assert env["env_vars"] == {
        "MLFLOW_TRACKING_URI": "https://alice@mlflow.example:5000",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
    }
    assert "env_vars" not in runtime_env(None, forward_env=False)
    opted_in = runtime_env(None, forward_env=True, forward_credentials=True)["env_vars"]
    assert opted_in["AWS_SECRET_ACCESS_KEY"] == "s3cr3t" and "hunter2" in opted_in["MLFLOW_TRACKING_URI"]

    f = tmp_path / "env.yaml"
    f.write_text(
        "working_dir: s3://bucket/code.zip\nenv_vars: {MLFLOW_TRACKING_URI: http://mlflow:5000}\npip: [optuna]\n"
    )
    env = runtime_env(str(f), forward_env=True)
    assert env["working_dir"] == "s3://bucket/code.zip" and "excludes" not in env
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["env_vars"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert env["pip"] == ["optuna"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("env_vars: [1, 2\n", "env.yaml:.*not valid YAML or JSON"),
        ("- a\n- b\n", "expected a mapping"),
        ("env_vars: [A, B]\n", "env_vars: expected a mapping"),
    ],
)
def test_bad_runtime_env_file_is_one_line(tmp_path, text, message):
    f = tmp_path / "env.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match=message):
        runtime_env(str(f), forward_env=True)


def test_address_must_be_the_jobs_url(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(UserError, match="no Ray Jobs address"):
        submit(["tune"], cli_commands=cli_commands())
    with pytest.raises(UserError, match="expected the Jobs API URL"):
        submit(["tune"], cli_commands=cli_commands(), address="127.0.0.1:6379")


def test_local_commands_refuse_a_jobs_url_in_ray_address(monkeypatch):
    from mtl_ray.cluster.runtime import ensure_ray

    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    with pytest.raises(UserError, match="is a Ray Jobs URL: run this as a job with `mtl-ray submit"):
        ensure_ray()


def test_a_ray_address_where_nothing_listens_is_one_line_in_seconds(cli, monkeypatch, tmp_path):
    """Ray itself would retry for minutes, printing only its own warnings."""
    from mtl_ray.cluster.runtime import free_port

    data = tmp_path / "scenes"
    synthesize(str(data), 40, seed=1)
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    started = time.monotonic()
    res = cli("train", "--data", data, "--epochs", 1, "--storage", tmp_path / "runs")
    assert res.code == 2 and time.monotonic() - started < 30
    assert res.err.strip().splitlines() == [
        f"mtl-ray: error: RAY_ADDRESS={address}: no Ray cluster answers there (Connection refused); start one "
        "(`ray start --head`), point RAY_ADDRESS at its head's GCS address, or unset RAY_ADDRESS to use a local Ray"
    ]
