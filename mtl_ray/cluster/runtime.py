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

TRAIN_POLL = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}
"""Ray Train's controller polls its workers every 2 s by default and moves on (workers started, the run
done, a worker lost) only at a poll: on one machine, where runs of a few seconds are the rule (compare's
single-task networks, a quickstart trial), every run waited seconds on it (benchmarks/train_fixed_cost.py)."""


def ensure_ray() -> None:
    """Join the Ray cluster this process belongs to (`RAY_ADDRESS`, as in a Ray job), or start a
    quiet local one.

    The local one runs Ray's dashboard on 127.0.0.1 and a port chosen here, exported as
    `RAY_API_SERVER_ADDRESS` before Ray starts so its processes inherit it: Ray Train's
    placement-group cleaner asks that state API whether a run's controller is alive. A Tune trial
    that ASHA stops kills its controller before it releases its workers' CPUs; if the cleaner
    cannot find the API (no dashboard, or a second Ray instance on the machine makes the address
    ambiguous) those CPUs stay reserved and the next trial waits forever.

    Its processes also inherit `TRAIN_POLL` and `SERVE_FAST_PATH`, Ray Serve's HAProxy ingress and
    direct data plane: `mtl-ray serve` on 2 cores answered 3.2x the requests/s with it
    (benchmarks/serve.py). A cluster sets the Serve ones on its nodes (infra/) and keeps Ray Train's
    2 s poll, a remote call to every worker. On one machine a removed replica drains for 2 s, not 30:
    no load balancer elsewhere still routes to it.
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
        check_answers(address)
        ray.init(**quiet)
    else:
        port = free_port()
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        for key, value in {**TRAIN_POLL, **SERVE_FAST_PATH}.items():
            os.environ.setdefault(key, value)
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port, **quiet)
    configure_data()


GCS_CONNECT_S = 5.0


def check_answers(address: str) -> None:
    """A UserError when nothing listens at RAY_ADDRESS=HOST:PORT: `ray.init` would retry for minutes,
    printing only Ray's own warnings. `auto` and `ray://` addresses are left to Ray."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or "://" in address or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=GCS_CONNECT_S).close()
    except OSError as exc:
        raise UserError(
            f"RAY_ADDRESS={address}: no Ray cluster answers there ({exc.strerror or type(exc).__name__}); "
            "start one (`ray start --head`), point RAY_ADDRESS at its head's GCS address, or unset RAY_ADDRESS "
            "to use a local Ray"
        ) from None


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
    # Blocks in the order of the shards, whichever task finishes first: with it the rows each
    # training worker gets, and their order, are the same on every run of the same command.
    ctx.execution_options.preserve_order = True
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


def alive_nodes() -> list[dict[str, float]]:
    """The resources of every node of the cluster that is alive now (a node lost a moment ago may
    count for the few seconds Ray takes to notice)."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n["Alive"]]


def check_shared(paths: dict[str, str | None], shared: bool) -> None:
    """Local paths (`{flag: path}`) are an error on a cluster of more than one node, unless `shared`
    says every node mounts them: workers and Ray Data tasks on other nodes would not find the data,
    and the first checkpoint would fail only after an epoch of work (tried: three retried epochs,
    then Ray's "A local path on the head node is not accessible by worker nodes")."""
    nodes = len(alive_nodes())
    if shared or nodes < 2:
        return
    for flag, path in paths.items():
        if path and not storage.is_s3(path):
            raise UserError(
                f"{flag} {path}: a local path, but the Ray cluster has {nodes} nodes and the others cannot reach "
                f"it: use s3://bucket/prefix, or a path every node mounts and --storage-shared"
            )


def on_this_node() -> dict:
    """Ray options that keep an actor on this process's node: a run's own helpers must not die
    with a worker node (Ray's Train controller and Data coordinators stay there too)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)}


def here(cpus: float) -> dict[str, float]:
    """Resources that place a task or actor (a Tune trial's driver) on this process's node: its marker
    (the head's own when this is the head, since every node of a one-machine cluster has the same IP;
    else `node:IP`) and `cpus` CPUs when the node has any (a head started with --num-cpus 0 has none)."""
    import ray

    me = ray.get_runtime_context().get_node_id()
    node = next(n for n in ray.nodes() if n["NodeID"] == me)["Resources"]
    marker = "node:__internal_head__" if "node:__internal_head__" in node else f"node:{ray.util.get_node_ip_address()}"
    return {marker: 0.001, **({"CPU": cpus} if node.get("CPU", 0) > 0 else {})}
