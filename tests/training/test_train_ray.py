"""End-to-end training on a real local Ray: resume, DDP, and bad input (learning across nodes and S3
storage: tests/cluster/test_multinode.py).

These are the slow tests (one Ray instance for the session, tiny synthetic data).
"""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from mtl_ray.data.synth.dataset import synthesize
from mtl_ray.data.synth.parts import SEED_TASKS


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes") / "shards"
    synthesize(str(out), 2000, shards=4, seed=0)
    return str(out)


@pytest.mark.slow
def test_rerun_of_a_killed_driver_resumes_from_its_last_checkpoint(ray_session, cli, scenes, tmp_path):
    """The driver (and the local Ray it started) killed by pid after its first checkpoint; the same
    command again carries on from that checkpoint instead of starting over."""
    runs = tmp_path / "runs"
    command = ["train", "--data", scenes, "--epochs", 3, "--backbone", "xs", "--storage", runs, "--name", "killed"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # its own local Ray, not the session's
    driver = subprocess.Popen(
        [sys.executable, "-m", "mtl_ray.cli", *map(str, command)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    snapshot = runs / "killed" / "checkpoint_manager_snapshot.json"  # written once a checkpoint is registered
    deadline = time.monotonic() + 240
    while not snapshot.exists():
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    driver.stderr.close()

    again = cli(*command, "--json", "-")
    assert again.code == 0, again.err
    out = again.json()
    assert out["first_epoch"] >= 2 and out["epochs"] == 3, out  # epoch 1 was not trained again
    assert [h["epoch"] for h in out["history"]] == [1, 2, 3]


@pytest.mark.slow
def test_validation_tasks_must_match_training_tasks(ray_session, cli, scenes, tmp_path):
    other = tmp_path / "other"
    synthesize(str(other), 50, tasks=["car", "pedestrian"], seed=1)
    res = cli("train", "--data", scenes, "--val", other)
    assert res.code == 2
    assert "validation tasks ['car', 'pedestrian'] differ from training tasks" in res.err
    assert len(res.err.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_diverging_run_stops_with_one_line_naming_epoch_step_and_lr(ray_session, cli, scenes, tmp_path):
    (tmp_path / "hot.yaml").write_text("lr: 1.0e+8\nbackbone: xs\nepochs: 2\n")
    res = cli("train", "--data", scenes, "--config", tmp_path / "hot.yaml", "--storage", tmp_path / "runs")
    assert res.code == 2, res.err
    assert len(res.err.strip().splitlines()) == 1, res.err
    assert re.search(r"epoch 1, step \d+: the loss or its gradients were NaN or inf for 10 steps in a row", res.err)
    assert "lr 1e+08" in res.err


@pytest.mark.slow
def test_empty_validation_split_is_an_error(ray_session, cli, tmp_path):
    data = tmp_path / "noval"
    synthesize(str(data), 40, val_fraction=0.0, seed=2)
    res = cli("train", "--data", data)
    assert res.code == 2
    assert "empty validation split" in res.err and str(data) in res.err


def test_invalid_shards_fail_before_ray_starts(cli, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "part-0.parquet").write_bytes(b"not parquet at all")
    res = cli("train", "--data", bad)
    assert res.code == 2
    assert "part-0.parquet" in res.err and "not a readable Parquet file" in res.err


@pytest.mark.slow
def test_unplaceable_requests_fail_fast(ray_session, cli, scenes):
    res = cli("train", "--data", scenes, "--workers", 64)
    assert res.code == 2 and "--workers 64: the Ray cluster has" in res.err
    res = cli("train", "--data", scenes, "--gpu")
    assert res.code == 2 and "--gpu:" in res.err and "GPU(s)" in res.err


@pytest.mark.slow
def test_the_same_command_twice_gives_the_same_run_and_gradient_editing_trains_under_ddp(
    ray_session, cli, scenes, tmp_path
):
    """Two workers, several shards read in parallel: the rows each worker gets and their order do
    not depend on which read task finishes first, so a second run of the command repeats the first."""
    config = tmp_path / "gradnorm.yaml"
    config.write_text("backbone: xs\nweighting: {name: gradnorm, alpha: 1.0}\n")
    runs = []
    for _ in range(2):
        res = cli(
            "train", "--data", scenes, "--epochs", 1, "--workers", 2, "--config", config,
            "--storage", tmp_path / "runs", "--json", "-",
        )  # fmt: skip
        assert res.code == 0, res.err
        runs.append(res.json())
    weights = runs[0]["history"][0]["task_weights"]
    assert list(weights) == list(SEED_TASKS)
    assert all(w > 0 for w in weights.values()) and len(set(weights.values())) == len(weights)
    assert sum(weights.values()) == pytest.approx(len(SEED_TASKS), rel=1e-3)
    first, second = (r["history"][0] for r in runs)
    assert second["train_loss"] == pytest.approx(first["train_loss"], abs=1e-4), (first, second)
    assert abs(second["mean_auroc"] - first["mean_auroc"]) <= 0.005, (first, second)
    assert second["task_weights"] == pytest.approx(first["task_weights"], abs=1e-3)


def test_bad_weighting_is_named_before_training(cli, scenes, tmp_path):
    res = cli("train", "--data", scenes, "--weighting", "nope")
    assert res.code == 2 and "unknown weighting 'nope': available are equal, static" in res.err
    config = tmp_path / "dwa.yaml"
    config.write_text("weighting: {name: dwa, alpha: 1}\n")
    res = cli("train", "--data", scenes, "--config", config)
    assert res.code == 2 and "weighting 'dwa': unknown parameter 'alpha'; valid: temperature" in res.err
    res = cli("train", "--data", scenes, "--backbone", "huge")
    assert res.code == 2 and "unknown backbone 'huge'" in res.err
    res = cli("train", "--data", scenes, "--groups", "pedestrian,car|stop_sign,traffic_lights")
    assert res.code == 2 and "unknown task 'traffic_lights'; tasks are pedestrian, car" in res.err
    assert res.err.count("\n") == 1 and "Traceback" not in res.err


def test_missing_storage_bucket_is_named(cli, s3, scenes):
    res = cli("train", "--data", scenes, "--storage", "s3://no-such-bucket-here/runs")
    assert res.code == 2 and "S3 bucket 'no-such-bucket-here' does not exist" in res.err
