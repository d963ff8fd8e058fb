"""Where a run executes: joining or starting Ray, this process's Ray Data settings, free ports and
run storage. Ray is imported inside the functions that start it, so importing this module is cheap.
"""

from __future__ import annotations

import logging
import os
import socket

from mtl_ray.config import DEFAULT_STORAGE
from mtl_ray.data import storage
from mtl_ray.errors import UserError

SERVE_FAST_PATH = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
}


def ensure_ray() -> None:
    """Join the Ray cluster this process belongs to (`RAY_ADDRESS`, as in a Ray job), or start a
    quiet local one.

    The local one runs Ray's dashboard on 127.0.0.1 and a port chosen here, exported as
    `RAY_API_SERVER_ADDRESS` before Ray starts so its processes inherit it: Ray Train's
    placement-group cleaner asks that state API whether a run's controller is alive. A Tune trial
    that ASHA stops kills its controller before it releases its workers' CPUs; if the cleaner
    cannot find the API (no dashboard, or a second Ray instance on the machine makes the address
    ambiguous) those CPUs stay reserved and the next trial waits forever.

    Its processes also inherit `SERVE_FAST_PATH`, Ray Serve's HAProxy ingress and direct data plane:
    `mtl-ray serve` on 2 cores answered 3.2x the requests/s with it (benchmarks/serve.py). A cluster
    sets them on its nodes (infra/). On one machine a removed replica drains for 2 s, not 30: no
    load balancer elsewhere still routes to it.
    """
    import ray

    address = os.environ.get("RAY_ADDRESS", "")
    if address.startswith(("http://", "https://")):
        raise UserError(
            f"RAY_ADDRESS={address} is a Ray Jobs URL: run this as a job with `mtl-ray submit -- ...`, "
            "or unset RAY_ADDRESS to use a local Ray"
        )
    if ray.is_initialized():
        configure_data()
        return
    quiet = {"logging_level": "ERROR", "log_to_driver": False, "configure_logging": True}
    if address:
        ray.init(**quiet)
    else:
        port = free_port()
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        for key, value in SERVE_FAST_PATH.items():
            os.environ.setdefault(key, value)
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port, **quiet)
    configure_data()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configure_data() -> None:
    """This process's Ray Data settings; each process that builds datasets (a Tune trial too) calls it."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # Ray 2.60's Parquet reader V2 lists files and reads footers in a task on every epoch: 2-9 s
    # before the first batch here, against 0.15-0.4 s with V1 (docs/benchmarks.md).
    ctx.use_datasource_v2 = False
    # Per-operator reservations let one read task run at a time on 2 CPUs: a streamed epoch gave
    # 40,000 images/s with them and 51,000-57,000 without (docs/benchmarks.md). Ray 2.60 calls this
    # switch historical and due for removal: remeasure `benchmarks/input.py --stream` on upgrades.
    ctx.op_resource_reservation_enabled = False
    # Its own lines go to ray-data.log, not the terminal: its errors reach the driver as exceptions
    # anyway (a user's as one line), where its console would add the operators' stats to each one.
    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ == "PlainRayHandler":  # the console; its file handler keeps every line
            handler.setLevel(logging.CRITICAL)


def run_storage(path: str | None) -> tuple[str, object | None, str]:
    """(storage_path, storage_filesystem, display prefix) for RunConfig; local paths made absolute,
    because Tune runs trial drivers in directories of their own."""
    path = path or DEFAULT_STORAGE
    fs, inner = storage.prepare_output(path)
    if storage.is_s3(path):
        return inner, fs, "s3://"
    return os.path.abspath(inner), None, ""


