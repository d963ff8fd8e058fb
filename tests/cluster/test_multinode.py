"""mtl-ray on a Ray cluster of three nodes on this machine, the way it is deployed: infra/local/stack.sh
starts a head with the Jobs API and two worker nodes (token auth on every node; the worker nodes in
mount namespaces of their own, where this test's folder is hidden as another machine's disk would
be), moto_server as S3 and an MLflow server on PostgreSQL. Every run is a submitted Ray job.

One stack for the module, in the order a cluster lives: bad input refused at once, a GPU run waiting
for a node, a worker node lost mid-epoch, then tune jobs from relative paths whose second
registration is gated on the first one's rows, registrations racing on PostgreSQL, and a restart
that leaves the bucket and the registry empty together."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest
import yaml
from checkpoints import fresh_predict, make_checkpoint
from conftest import REPO

from mtl_ray.data.synth.parts import SEED_TASKS

STACK = os.path.join(REPO, "infra", "local", "stack.sh")
CLI = [sys.executable, "-m", "mtl_ray.cli"]
DATA = "s3://mtl-ray/cluster/shards"

pytestmark = pytest.mark.slow


def _run(args, env, timeout=600, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


class Stack:
    """The stack's shell (`env`: what `stack.sh env` exports) and its commands."""

    def __init__(self, base: dict):
        self.base = base
        self.env = self.client_env()

    def client_env(self) -> dict:
        env = dict(self.base)
        for line in _run(["bash", STACK, "env"], self.base).stdout.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value
        return env

    def sh(self, *args, timeout=300) -> subprocess.CompletedProcess:
        done = _run(["bash", STACK, *args], self.base, timeout=timeout)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def submit(self, *command, runtime_env: str | None = None, timeout=600) -> subprocess.CompletedProcess:
        extra = ["--runtime-env", runtime_env] if runtime_env else []
        return _run([*CLI, "submit", *extra, "--", *command], self.env, timeout=timeout)

    def start(self, *command, runtime_env=None) -> Follow:
        extra = ["--runtime-env", str(runtime_env)] if runtime_env else []
        return Follow(
            subprocess.Popen(
                [*CLI, "submit", *extra, "--", *map(str, command)],
                env=self.env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )

    def add_node(self, *args) -> int:
        return int(re.search(r"node (\d+): joined", self.sh("add-node", *args).stdout).group(1))


class Follow:
    """A submitted job's output as it comes: `wait_for(pattern)` returns when a line matches."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines, self.times = proc, [], []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self.times.append(time.monotonic())

    def wait_for(self, pattern: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while True:
            for line, at in zip(list(self.lines), list(self.times), strict=False):
                if re.search(pattern, line):
                    return at
            if time.monotonic() >= deadline or (self.proc.poll() is not None and not self.reader.is_alive()):
                break
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.lines[-40:]))

    def finish(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    private = tmp_path_factory.mktemp("private")  # the test's own files: the worker nodes see an empty folder
    bin_dir = os.path.dirname(sys.executable)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_"))}
    base.update(
        PATH=f"{bin_dir}:{base.get('PATH', '')}",
        MTL_RAY_STACK_DIR=str(tmp_path_factory.mktemp("stack")),
        MTL_RAY_STACK_PRIVATE=str(private),
    )
    up = _run(["bash", STACK, "up", "--nodes", "3"], base, timeout=300)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "3 node(s)" in up.stdout, up.stdout
        again = _run(["bash", STACK, "up", "--nodes", "3"], base, timeout=120)
        assert again.returncode == 0 and again.stdout == up.stdout, "up is not idempotent"
        s = Stack(base)
        s.private = private
        synth = _run([*CLI, "data", "synth", DATA, "--n", "3000", "--image-size", "32", "--shards", "4"], s.env)
        assert synth.returncode == 0, synth.stderr
        yield s
    finally:
        down = _run(["bash", STACK, "down"], base, timeout=120)
        assert down.returncode == 0, down.stderr
        status = _run(["bash", STACK, "status"], base).stdout
        assert "moto: stopped" in status and "mlflow: stopped" in status and "ray: stopped" in status, status


def test_local_paths_on_a_cluster_are_refused_before_any_work_in_one_line(stack):
    """Default local --storage, and local --data, on three nodes: one line each, from a job that ends in
    seconds (the job's own start and end times), never a retried epoch or Ray Data's traceback."""
    local = stack.private / "shards"  # the head reads it; the worker nodes see an empty folder there
    synth = _run([*CLI, "data", "synth", local, "--n", "200", "--image-size", "32"], stack.env)
    assert synth.returncode == 0, synth.stderr
    cases = {
        "--storage": ["train", "--data", DATA, "--epochs", "1"],
        "--data": ["train", "--data", local, "--storage", "s3://mtl-ray/cluster/runs"],
    }
    for flag, command in cases.items():
        job = stack.submit(*command, timeout=300)
        assert job.returncode == 1, job.stdout[-2000:]
        errors = [line for line in job.stdout.splitlines() if "error: " in line]
        assert len(errors) == 1, job.stdout[-3000:]
        assert f"{flag} " in errors[0] and "the Ray cluster has 3 nodes" in errors[0], errors
        assert "s3://bucket/prefix" in errors[0] and "--storage-shared" in errors[0]
        assert "Traceback" not in job.stdout and "epoch 1/" not in job.stdout
        assert job.stdout.splitlines()[-1].endswith("FAILED (Job entrypoint command failed with exit code 2)")
        job_id = re.search(r"job (raysubmit_\w+): FAILED", job.stdout).group(1)
        info = _run([sys.executable, "-c", JOB_TIMES, job_id], stack.env)
        seconds = json.loads(info.stdout)
        assert seconds < 10, f"{flag}: refused after {seconds:.1f} s"


JOB_TIMES = """
import json, os, sys
from ray.job_submission import JobSubmissionClient
info = JobSubmissionClient(os.environ["RAY_ADDRESS"]).get_job_info(sys.argv[1])
print(json.dumps((info.end_time - info.start_time) / 1000))
"""


def test_submit_bad_input_is_one_line(stack, tmp_path):
    bad_env = tmp_path / "env.yaml"
    bad_env.write_text("env_vars: [1, 2\n")
    submit = [*CLI, "submit"]
    cases = {
        "not valid YAML": _run([*submit, "--runtime-env", bad_env, "--", "tune", "--help"], stack.env),
        "cannot reach the Ray Jobs API": _run([*submit, "--address", "http://127.0.0.1:9", "--", "tune"], stack.env),
        "authentication failed": _run([*submit, "--", "tune", "--help"], {**stack.env, "RAY_AUTH_TOKEN": "0" * 64}),
    }
    for expected, result in cases.items():
        assert result.returncode == 2, (expected, result.stderr)
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    failing = stack.submit("python", "-c", "import sys; print('about to fail'); sys.exit(3)", timeout=300)
    assert failing.returncode == 1
    assert "about to fail" in failing.stdout
    last = failing.stdout.splitlines()[-1]
    assert last.endswith("FAILED (Job entrypoint command failed with exit code 3)"), failing.stdout


def test_a_gpu_run_waits_for_a_gpu_node_and_goes_on_when_one_joins(stack):
    """No GPU on the cluster: the run asks the autoscaler, says what it waits for, and starts once a
    node with a GPU joins. That node's GPU is only Ray's resource (torch here has no CUDA), so the
    job is stopped there and the node taken away again."""
    run = stack.start(
        "train", "--gpu", "--resource-wait", "120", "--data", DATA, "--storage", "s3://mtl-ray/cluster/gpu"
    )
    try:
        run.wait_for(r"waiting for resources: --gpu: 1 training worker\(s\) need 1 GPU\(s\).*up to 120 s", 120)
        gpu_node = stack.add_node("--gpus", "1")
        run.wait_for(r"resources arrived after \d+ s", 60)
        assert "error:" not in run.text
    finally:
        stop = _run([sys.executable, "-c", STOP_JOBS], stack.env)
        assert stop.returncode == 0, stop.stderr
        run.finish(timeout=120)
    stack.sh("kill-node", str(gpu_node))


STOP_JOBS = """
import os
from ray.job_submission import JobStatus, JobSubmissionClient
jobs = JobSubmissionClient(os.environ["RAY_ADDRESS"])
for job in jobs.list_jobs():
    if job.submission_id and job.status in (JobStatus.PENDING, JobStatus.RUNNING):
        jobs.stop_job(job.submission_id)
"""


def test_an_elastic_run_that_loses_a_worker_node_mid_epoch_finishes_every_epoch(stack, tmp_path):
    """`--workers 1-3` puts one worker on each node, checkpointing every 5 steps; SIGKILL of a worker
    node's processes once epoch 1 is reported (its worker, its raylet, its object store) and the run
    goes on inside the epoch it was in (2, or 3 when the job's log reached the test late) from its last
    step checkpoint with two workers, says so, and exits 0 with all epochs.
    The helper actors the run needs to finish (its inbox, Ray Train's controller and synchronization
    actor, Ray Data's split coordinator and dataset manager) sat on the driver's node, so no worker
    node's loss can take one. (Ray's preemption watcher restarts anywhere; Ray Data's usage-stats
    actor only counts usage.)"""
    work = tmp_path / "work"
    work.mkdir()
    (work / "steps.yaml").write_text("epochs: 3\ncheckpoint_every_steps: 5\nbackbone: s\n")
    runtime_env = tmp_path / "env.yaml"
    runtime_env.write_text(yaml.safe_dump({"working_dir": str(work)}))
    out = tmp_path / "elastic.json"
    run = stack.start(
        "train", "--config", "steps.yaml", "--data", DATA, "--storage", "s3://mtl-ray/cluster/runs",
        "--workers", "1-3", "--name", "elastic", "--json", out, runtime_env=runtime_env,
    )  # fmt: skip
    run.wait_for(r"elastic: epoch 1/3", 300)
    time.sleep(2)
    killed = time.monotonic()
    stack.sh("kill-node", "2")
    try:
        code = run.finish(timeout=600)
    finally:
        stack.add_node()  # three nodes again for the tune jobs, whatever this test finds
    assert code == 0, run.text[-4000:]
    restarted = run.wait_for(
        r"elastic: worker group restarted from the checkpoint after epoch [12], step \d+, 2 workers", 0
    )
    assert run.wait_for(r"elastic: epoch 3/3", 1) > restarted > killed
    result = json.loads(out.read_text())
    assert result["restarts"] == 1 and result["first_epoch"] == 1, result
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    assert re.search(r"run elastic: epochs 1-3, 4 tasks, .*worker group restarted 1 time", run.text), run.text[-3000:]
    job_id = re.search(r"job (raysubmit_\w+): SUCCEEDED", run.text).group(1)
    placed = json.loads(_run([sys.executable, "-c", ACTOR_NODES, job_id], stack.env).stdout)
    helpers = {"Inbox", "TrainController", "SplitCoordinator", "DatasetManager", "SynchronizationActor"}
    assert {(name, True) for name in helpers} <= set(map(tuple, placed)), placed
    assert not any(name in helpers and not on_driver_node for name, on_driver_node in placed), placed
    print(f"node lost -> group restarted: {restarted - killed:.0f} s")


ACTOR_NODES = """
import json, os, sys
from ray.job_submission import JobSubmissionClient
from ray.util.state import list_actors
info = JobSubmissionClient(os.environ["RAY_ADDRESS"]).get_job_info(sys.argv[1])
actors = list_actors(address=os.environ["RAY_ADDRESS"], filters=[("job_id", "=", info.job_id)], limit=1000)
print(json.dumps(sorted({(a.class_name, a.node_id == info.driver_node_id) for a in actors})))
"""
"""Every actor of a job (dead ones too): its class, and whether it ran on the job driver's node."""


TUNE = {
    # lr 1e-7 barely moves the weights: ASHA (keeping the top half at epoch 1; trials one at a time,
    # in grid order) stops that trial after the 3e-3 one has set the bar.
    # Step checkpoints inside epochs report no metric: ASHA, the MLflow logger and progress pass them by.
    "train": {"epochs": 2, "batch_size": 16, "checkpoint_every_steps": 20, "backbone": "xs"},
    "search": {"lr": [3e-3, 1e-7]},
    "scheduler": {"grace_period": 1, "reduction_factor": 2},
    "registry": {"name": "mtl-ray"},
}

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


def test_tune_jobs_from_a_relative_path_track_every_trial_and_gate_on_the_same_rows(stack, tmp_path):
    """Two tune jobs at once, `mtl-ray tune` and jobs/tune.py, both on `--data data` relative to the
    job's working directory (every node reads it there: --storage-shared), their trial drivers on the
    head and their workers on every node. Each registers its best into the PostgreSQL registry; the
    later registration's gate scores both models on the same validation rows, because every path was
    resolved once on the driver. The submitting shell's AWS secrets reach neither the Jobs API, the
    logs nor MLflow; a fresh process pulls the champion."""
    from mlflow import MlflowClient

    work = tmp_path / "work"
    synth = _run([*CLI, "data", "synth", work / "data", "--n", "400", "--image-size", "32", "--shards", "2"], stack.env)
    assert synth.returncode == 0, synth.stderr
    (work / "jobs" / "configs").mkdir(parents=True)
    for f in ("jobs/tune.py", "jobs/configs/smoke.yaml"):
        (work / f).write_text(open(os.path.join(REPO, f)).read())
    (work / "tune.yaml").write_text(yaml.safe_dump(TUNE))
    runtime_env = tmp_path / "env.yaml"
    runtime_env.write_text(yaml.safe_dump({"working_dir": str(work)}))
    secrets = {"AWS_SECRET_ACCESS_KEY": f"sk-{uuid.uuid4().hex}", "AWS_SESSION_TOKEN": f"tok-{uuid.uuid4().hex}"}
    env = {**stack.env, **secrets}
    out = tmp_path / "tune.json"
    commands = {
        "cli": ["tune", "--config", "tune.yaml", "--data", "data", "--storage-shared", "--name", "t1", "--json", out],
        "script": [
            "python",
            "jobs/tune.py",
            "--config",
            "jobs/configs/smoke.yaml",
            "--data",
            "data",
            "--storage-shared",
            "--name",
            "smoke",
        ],
    }
    jobs = {
        key: subprocess.Popen(
            [*CLI, "submit", "--runtime-env", str(runtime_env), "--", *map(str, command)],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for key, command in commands.items()
    }
    logs = {key: job.communicate(timeout=900)[0] for key, job in jobs.items()}
    for key, job in jobs.items():
        assert job.returncode == 0, f"{key}:\n{logs[key][-4000:]}"
    gates = [line for log in logs.values() for line in log.splitlines() if "registered mtl-ray version" in line]
    assert len(gates) == 2, logs
    assert any("on the same" in line for log in logs.values() for line in log.splitlines()), logs
    assert not any("each on its own validation data" in log for log in logs.values()), logs

    result = json.loads(out.read_text())
    trials = result["trials"]
    assert sorted(t["config"]["lr"] for t in trials) == [1e-7, 3e-3]
    assert [(t["status"], t["epochs"]) for t in trials if t["config"]["lr"] == 1e-7] == [("stopped_early", 1)], trials
    assert all(t["status"] != "error" for t in trials)
    best = result["best"]
    assert best["mean_auroc"] == max(t["mean_auroc"] for t in trials)
    assert result["tracking_uri"] == stack.env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(stack.env["MLFLOW_TRACKING_URI"])
    children = client.search_runs(
        [client.get_experiment_by_name("mtl-ray").experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result['parent_run_id']}'",
    )
    assert len(children) == 2
    data = None
    for run in children:
        trial = next(t for t in trials if t["run_id"] == run.info.run_id)
        history = client.get_metric_history(run.info.run_id, "mean_auroc")
        assert [m.step for m in history] == list(range(1, trial["epochs"] + 1))
        assert {"val.traffic_light.auroc", "weight.car", "train_loss"} <= set(run.data.metrics)
        assert float(run.data.params["lr"]) == trial["config"]["lr"] and run.info.status == "FINISHED"
        curves = {a.path for a in client.list_artifacts(run.info.run_id, "curves")}
        assert curves == {"curves/auroc.png", "curves/loss.png", "curves/task_weights.png"}, curves
        inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
        profile = json.loads(inputs["training"].profile)
        assert profile["rows"] > 0 and set(profile["tasks"]) == set(SEED_TASKS)
        data = json.loads(inputs["validation"].source)["uri"]
        assert os.path.isabs(data) and data.endswith("/data"), data  # resolved on the driver, not per trial
    best_run = client.get_run(best["run_id"])
    assert best_run.data.tags["mtl_ray.checkpoint"] == best["checkpoint"]
    version = client.get_model_version("mtl-ray", result["registered"]["version"])
    assert f"| traffic_light | {best_run.data.metrics['val.traffic_light.auroc']:.3f} |" in version.description

    traces = _run([sys.executable, "-c", JOB_TRACES], env)
    assert traces.returncode == 0 and "smoke" in traces.stdout, traces.stderr[-2000:]
    for name, value in secrets.items():
        assert value not in traces.stdout, f"{name} leaked into the job's info, logs or MLflow"
    values = _predict_champion(stack.env, tmp_path)
    assert values.shape == (3, 4) and ((values >= 0) & (values <= 1)).all()


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
    assert got["columns"] == list(SEED_TASKS)
    return np.array(got["values"])


def test_registrations_racing_on_postgresql_each_get_a_version_and_a_restart_empties_bucket_and_registry_together(
    stack, tmp_path
):
    """Two `mtl-ray register` at once against the PostgreSQL-backed server: two versions, numbered
    apart, and one champion. Then `down` and `up`: S3 lives in moto's memory, so the registry that
    pointed into it starts empty with it."""
    from mlflow import MlflowClient

    register = [*CLI, "register", "--name", "race", "--json", "-", "--checkpoint"]
    for seed in (1, 2):
        make_checkpoint(tmp_path / f"c{seed}", 0.5 + seed / 10, seed=seed)
    racers = [
        subprocess.Popen(
            [*register, str(tmp_path / f"c{seed}")],
            env=stack.env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    results = []
    for racer in racers:
        out, err = racer.communicate(timeout=300)
        assert racer.returncode == 0, err[-2000:]
        results.append(json.loads(out))
    assert sorted(int(r["version"]) for r in results) == [1, 2]
    client = MlflowClient(stack.env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("race", "champion").version
    assert champion in {r["version"] for r in results if r["alias_moved"]}

    stack.sh("down", timeout=120)
    stack.sh("up", timeout=300)
    assert MlflowClient(stack.client_env()["MLFLOW_TRACKING_URI"]).search_registered_models() == []
