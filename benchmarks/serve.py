"""Serving latency and throughput: `mtl-ray serve` (Ray Serve, batched) against `mlflow models serve`
of the same registered model, under the same bounded load from a real HTTP client on 127.0.0.1.

A model (a checkpoint of `--backbone`, weights as initialised) is registered in a throw-away sqlite
MLflow; both servers load `models:/bench@champion`. For each concurrency (`--concurrency 1,8,32`)
each server gets `--requests` requests of one PNG image each, from that many client threads with
kept-alive connections (at most `--seconds` per step); p50/p99 latency, requests/s and failed
requests are reported, and the ratio of requests/s at the highest concurrency (mtl-ray ÷ mlflow).
The two servers run one after the other, on the same machine as the client.

    python benchmarks/serve.py [--concurrency 1,8,32] [--requests 400] [--backbone s] [--json FILE]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image
from report import emit
from score import make_checkpoint

from mtl_ray.cluster.runtime import free_port

TASKS = ["pedestrian", "car", "stop_sign", "traffic_light"]


def png(seed: int, size: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def load(port: int, path: str, body: bytes, content_type: str, concurrency: int, requests: int, seconds: float):
    """Latencies (s) of the answered requests and the count of failed ones, with the wall time."""
    latencies: list[float] = []
    failed = [0]
    lock = threading.Lock()
    left = [requests]
    deadline = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < deadline:
            with lock:
                if left[0] == 0:
                    break
                left[0] -= 1
            started = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": content_type})
                answer = conn.getresponse()
                answer.read()
                ok = answer.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    failed[0] += 1
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, failed[0], time.perf_counter() - started


def row(server: str, concurrency: int, latencies: list[float], failed: int, wall: float) -> dict:
    q = np.percentile(latencies, [50, 99]) * 1000 if latencies else [float("nan")] * 2
    return {
        "server": server,
        "concurrency": concurrency,
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(float(q[0]), 1),
        "p99_ms": round(float(q[1]), 1),
        "failed": failed,
    }


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer in {timeout:.0f} s") from None
            time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=400, help="requests per server and concurrency")
    parser.add_argument("--seconds", type=float, default=60, help="at most this long per server and concurrency")
    parser.add_argument("--backbone", default="s")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=16, help="mtl-ray serve's batch")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlruns.db"
        os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
        from mtl_ray.registry.register import register_checkpoint

        ckpt = make_checkpoint(Path(tmp) / "ckpt", args.backbone, TASKS, args.image_size)
        register_checkpoint(ckpt, name="bench")
        uri = "models:/bench@champion"
        image = png(0, args.image_size)
        rows = []

        from mtl_ray.config import ServeConfig
        from mtl_ray.serving.serve import start, stop

        port = free_port()
        start(ServeConfig(model=uri, max_batch_size=args.max_batch_size, watch_s=0), port=port)
        try:
            load(port, "/predict", image, "image/png", 4, 40, 30)  # warm-up
            for c in args.concurrency:
                rows.append(
                    row("mtl-ray", c, *load(port, "/predict", image, "image/png", c, args.requests, args.seconds))
                )
        finally:
            stop()

        port = free_port()
        mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
        cmd = [mlflow, "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
        env = {
            **os.environ,
            "PATH": f"{os.path.dirname(mlflow)}{os.pathsep}{os.environ.get('PATH', '')}",
        }  # its uvicorn
        log = open(f"{tmp}/mlflow-serve.log", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(image).decode()]]}})
        try:
            wait_http(f"http://127.0.0.1:{port}/ping")
            load(port, "/invocations", body.encode(), "application/json", 4, 40, 30)
            for c in args.concurrency:
                result = load(port, "/invocations", body.encode(), "application/json", c, args.requests, args.seconds)
                rows.append(row("mlflow", c, *result))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            log.close()

    top = max(args.concurrency)
    rate = {r["server"]: r["requests_per_s"] for r in rows if r["concurrency"] == top}
    summary = {
        "rows": rows,
        "ratio_requests_per_s": round(rate["mtl-ray"] / rate["mlflow"], 3),
        "backbone": args.backbone,
        "image_size": args.image_size,
        "max_batch_size": args.max_batch_size,
        "cpus": os.cpu_count(),
    }
    table = "\n".join(
        f"  {r['server']:<8} c={r['concurrency']:<3} {r['requests_per_s']:>8,.1f} req/s  p50 {r['p50_ms']:>7.1f} ms  "
        f"p99 {r['p99_ms']:>7.1f} ms  failed {r['failed']}"
        for r in rows
    )
    median = statistics.median
    line = (
        f"mtl-ray serve ÷ mlflow models serve at concurrency {top}: {summary['ratio_requests_per_s']:.2f}x requests/s "
        f"(median p50 {median(r['p50_ms'] for r in rows if r['server'] == 'mtl-ray'):.1f} ms vs "
        f"{median(r['p50_ms'] for r in rows if r['server'] == 'mlflow'):.1f} ms)\n{table}"
    )
    emit(line, summary, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
