"""100 tasks end to end, and what grows with the number of tasks T.

1. `--logging`: the time to log one epoch's metrics (per task AUROC, accuracy, F1, labeled count and
   weight, as `mtl_ray.registry.tracking.epoch_metrics` makes them) to a real `mlflow server`
   (sqlite backend, started here on 127.0.0.1), at each T of `--log-tasks`: median of `--repeats`
   epochs, and per task (flat if the cost is linear in T).
2. `--e2e`: the user's path at T tasks (default 100: the four scene tasks and 96 derived ones from
   `mtl-ray data synth --extra-tasks 96`, `traffic_light` labeled on 5 % of the rows), each step a
   `mtl-ray` command against that server: synth, train, compare with single-task networks for a
   sample of the tasks (`--stl-tasks`: `traffic_light` and four more, from the rarest positive
   label to the commonest), tune (two trials, the best registered), register the trained
   checkpoint, predict from `models:/NAME@champion`. Per step: its wall time and what it reported.

The training step's cost against T is `benchmarks/weighting_cost.py --tasks 4,10,40,100`.

    python benchmarks/many_tasks.py [--logging] [--e2e] [--tasks 100] [--n 2000] [--epochs 3]
        [--log-tasks 4,10,40,100,400] [--repeats 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from mtl_ray.cluster.runtime import free_port
from mtl_ray.registry import tracking

STARVED = "traffic_light"
MIN_POSITIVE = 20
"""Sampled tasks have at least this many positive training labels, so a single-task network can learn."""


def start_server(root: str) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on 127.0.0.1 with its sqlite database and artifacts under `root`; (process, URI)."""
    port = free_port()
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.Popen(
        [
            mlflow,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            f"{root}/artifacts",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            return proc, uri
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    raise SystemExit("mlflow server did not answer /health in 120 s")


def epoch_report(tasks: int, epoch: int) -> dict:
    names = [f"task_{i:03d}" for i in range(tasks)]
    return {
        "epoch": epoch,
        "train_loss": 0.5,
        "mean_auroc": 0.8,
        "train_images_per_s": 100.0,
        "val": {t: {"auroc": 0.8, "accuracy": 0.7, "f1": 0.6, "n_labeled": 100} for t in names},
        "task_weights": dict.fromkeys(names, 1.0),
    }


def logging_cost(uri: str, counts: list[int], repeats: int) -> list[dict]:
    client = tracking.connect(uri)
    experiment = tracking.experiment_id(client, "many-tasks-logging")
    rows = []
    for tasks in counts:
        run_id = client.create_run(experiment).info.run_id
        times = []
        for epoch in range(1, repeats + 1):
            metrics = tracking.epoch_metrics(epoch_report(tasks, epoch))
            started = time.perf_counter()
            tracking.log_numbers(client, run_id, metrics, epoch)
            times.append(time.perf_counter() - started)
        seconds = statistics.median(times)
        rows.append(
            {"tasks": tasks, "metrics": len(metrics), "s_per_epoch": seconds, "ms_per_task": seconds / tasks * 1e3}
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def mtl_ray(*args: str, env: dict) -> tuple[dict, float]:
    """Run `mtl-ray ARGS --json -`; (its JSON summary, seconds). A failure stops the benchmark with its stderr."""
    exe = os.path.join(os.path.dirname(sys.executable), "mtl-ray")
    started = time.perf_counter()
    done = subprocess.run([exe, *args, "--json", "-"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"mtl-ray {args[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout), seconds


def end_to_end(uri: str, root: str, tasks: int, n: int, epochs: int) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    data, runs = os.path.join(root, "scenes"), os.path.join(root, "runs")
    steps: dict[str, dict] = {}

    def step(name: str, *args: str) -> dict:
        out, seconds = mtl_ray(*args, env=env)
        steps[name] = {"seconds": round(seconds, 1)}
        print(f"{name}: {seconds:.0f} s", flush=True)
        return out

    synth = step(
        "synth",
        "data",
        "synth",
        data,
        "--n",
        str(n),
        "--extra-tasks",
        str(tasks - 4),
        "--label-rate",
        f"{STARVED}=0.05",
        "--seed",
        "0",
    )
    positive = synth["positive"]
    others = sorted((t for t in synth["tasks"] if t != STARVED and positive[t] >= MIN_POSITIVE), key=positive.get)
    sample = [STARVED] + [others[round(q * (len(others) - 1))] for q in (0.0, 0.33, 0.67, 1.0)]
    common = ["--data", data, "--storage", runs, "--backbone", "s", "--epochs", str(epochs)]
    trained = step("train", "train", *common, "--name", "many")
    steps["train"] |= {
        "tasks": len(trained["tasks"]),
        "mean_auroc": trained["mean_auroc"],
        "train_images_per_s": trained["train_images_per_s"],
    }
    compared = step("compare", "compare", *common, "--stl-tasks", ",".join(sample), "--no-track")
    steps["compare"] |= {
        "stl_tasks": {t: {"labeled": synth["labeled"][t], "positive": positive[t]} for t in sample},
        "delta_m_pct": compared["delta_m_pct"],
        "delta_pct": compared["delta_pct"],
        "mtl_seconds": compared["mtl_seconds"],
        "stl_seconds": compared["stl_seconds"],
    }
    config = os.path.join(root, "tune.yaml")
    with open(config, "w") as f:
        f.write(
            "train: {epochs: 1, batch_size: 32}\nsearch: {backbone: [xs, s]}\nscheduler: {name: fifo}\n"
            "registry: {name: many-tasks, alias: champion}\n"
        )
    tuned = step("tune", "tune", "--data", data, "--storage", runs, "--config", config)
    steps["tune"] |= {
        "trials": len(tuned["trials"]),
        "best": {k: tuned["best"][k] for k in ("config", "mean_auroc")},
        "registered": {k: tuned["registered"][k] for k in ("version", "alias_moved")},
    }
    registered = step("register", "register", "--checkpoint", trained["checkpoint"], "--name", "many-tasks")
    steps["register"] |= {k: registered[k] for k in ("version", "alias_moved", "reason", "mean_auroc")}
    predicted = step("predict", "predict", "--model", "models:/many-tasks@champion", "--data", data, "--limit", "200")
    steps["predict"] |= {"rows": len(predicted["ids"]), "columns": len(predicted["tasks"])}
    return {"tasks": tasks, "n": n, "epochs": epochs, "steps": steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logging", action="store_true", help="MLflow logging time per epoch against T")
    parser.add_argument("--e2e", action="store_true", help="synth, train, compare, tune, register, predict at --tasks")
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--log-tasks", default="4,10,40,100,400")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    out: dict = {}
    with tempfile.TemporaryDirectory() as root:
        proc, uri = start_server(root)
        try:
            if args.logging:
                out["logging"] = logging_cost(uri, [int(t) for t in args.log_tasks.split(",")], args.repeats)
            if args.e2e:
                out["e2e"] = end_to_end(uri, root, args.tasks, args.n, args.epochs)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
