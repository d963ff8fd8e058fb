"""Where a run executes: joining or starting Ray, Ray Data settings, ports, run storage, and sizing
workers so that Ray Data always keeps CPUs; plus the model-config checks every driver runs before
Ray starts. Ray is imported inside the functions that start it, so planning and checks stay cheap.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

from mtl_ray import storage
from mtl_ray.config import TrainConfig
from mtl_ray.errors import UserError, first_line

MIN_CPUS_PER_WORKER = 0.25
GPU_WORKER_CPUS = 2.0
"""CPUs a GPU training worker holds by default (its loop and the batch-collating thread); the other
CPUs beside each GPU read and decode in Ray Data tasks."""
DEFAULT_STORAGE = "mtl-ray-runs"


def ensure_ray() -> None:
    """Join the Ray cluster this process belongs to (`RAY_ADDRESS`, as in a Ray job), or start a
    quiet local one.

    The local one runs Ray's dashboard on 127.0.0.1 and a port chosen here, exported as
    `RAY_API_SERVER_ADDRESS` before Ray starts so its processes inherit it: Ray Train's
    placement-group cleaner asks that state API whether a run's controller is alive. A Tune trial
    that ASHA stops kills its controller before it releases its workers' CPUs; if the cleaner
    cannot find the API (no dashboard, or a second Ray instance on the machine makes the address
    ambiguous) those CPUs stay reserved and the next trial waits forever.
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
    for handler in logging.getLogger("ray.data").handlers:  # its own lines go to ray-data.log, not the terminal
        if type(handler).__name__ == "PlainRayHandler":  # the console; its file handler keeps every line
            handler.setLevel(logging.ERROR)


def run_storage(path: str | None) -> tuple[str, object | None, str]:
    """(storage_path, storage_filesystem, display prefix) for RunConfig; local paths made absolute,
    because Tune runs trial drivers in directories of their own."""
    path = path or DEFAULT_STORAGE
    fs, inner = storage.prepare_output(path)
    if storage.is_s3(path):
        return inner, fs, "s3://"
    return os.path.abspath(inner), None, ""


@dataclass(frozen=True)
class ResourcePlan:
    """How many Ray Train workers, with how many CPUs/GPUs each, and torch threads per worker."""

    workers: int
    cpus_per_worker: float
    use_gpu: bool
    torch_threads: int
    data_cpus: float
    object_store_bytes: float = 0.0
    """The cluster's object store, for deciding what training data to keep there (`dataset.cached`)."""


def plan_resources(cfg: TrainConfig, cluster: dict[str, float]) -> ResourcePlan:
    """Size workers so the request fits the cluster and at least one CPU stays free for Ray Data.

    On a 2-CPU machine two CPU workers get 0.5 CPU each: whole-CPU workers would take every CPU and
    Ray Data's read/decode tasks would never be scheduled (the run hangs; Ray issue 29662). A GPU
    worker holds `GPU_WORKER_CPUS`; its share of the other CPUs (the cluster's CPUs per GPU, less
    its own) is counted for Ray Data, where reading and CPU decoding run.
    """
    cpus = float(cluster.get("CPU", 0))
    gpus = float(cluster.get("GPU", 0))
    if cfg.gpu:
        workers = cfg.workers or max(1, int(gpus))
        if gpus < workers:
            raise UserError(
                f"--gpu: {workers} training worker(s) need {workers} GPU(s) but the Ray cluster has {gpus:g}"
            )
    else:
        workers = cfg.workers or 2
    if cfg.gpu:
        per_gpu = cpus / max(gpus, 1.0)
        per_worker = cfg.cpus_per_worker or min(GPU_WORKER_CPUS, max(MIN_CPUS_PER_WORKER, per_gpu - 1.0))
        data_cpus = max(1.0, workers * (per_gpu - per_worker))
    else:
        data_cpus = 1.0 if cpus < 8 else max(1.0, cpus * 0.25)
        per_worker = cfg.cpus_per_worker or min(1.0, (cpus - data_cpus) / workers)
    need = workers * max(per_worker, MIN_CPUS_PER_WORKER) + data_cpus
    if per_worker < MIN_CPUS_PER_WORKER or need > cpus + 1e-9:
        raise UserError(
            f"--workers {workers}: the Ray cluster has {cpus:g} CPUs; {workers} workers need at least "
            f"{workers * MIN_CPUS_PER_WORKER:g} ({MIN_CPUS_PER_WORKER:g} each) plus {data_cpus:g} for Ray Data"
        )
    return ResourcePlan(
        workers,
        round(per_worker, 3),
        cfg.gpu,
        max(1, int(per_worker)),
        data_cpus,
        float(cluster.get("object_store_memory", 0.0)),
    )


def check_model_config(cfg: TrainConfig, num_tasks: int, size: tuple[int, int] | None = None) -> None:
    """Backbone, image size and weighting errors surface here, before Ray starts, not inside a worker.

    `size` is the (height, width) the run trains at, when it is known (`cfg.image_size` otherwise).
    """
    from mtl_ray.images import show_size
    from mtl_ray.models import available, min_image_side
    from mtl_ray.weighting import get as get_weighting

    if cfg.backbone not in available():
        raise UserError(f"unknown backbone {cfg.backbone!r}: available are {', '.join(available())}")
    size = size or cfg.size()
    least = min_image_side(cfg.backbone)
    if size is not None and min(size) < least:
        raise UserError(
            f"image size {show_size(size)} (HxW) is below backbone {cfg.backbone!r}'s "
            f"minimum of {least} px per side: set image_size to at least {least}"
        )
    method = get_weighting(cfg.weighting.name, num_tasks, **cfg.weighting.params())
    if cfg.trunk == "freeze" and cfg.init is None:
        raise UserError("trunk: freeze keeps the weights an init gave the trunk: set --init too")
    if cfg.trunk == "freeze" and method.manipulates_gradients:
        raise UserError(
            f"trunk: freeze leaves weighting {cfg.weighting.name!r} no shared gradients to work on: "
            "use equal, static, uncertainty or dwa"
        )


def user_error_in(exc: BaseException) -> UserError | None:
    """The UserError behind an exception from Ray, as its own one line, or None.

    A UserError raised in a Ray Train worker or a Ray Data task reaches the driver wrapped: in a
    `RayTaskError` (its `cause`), in Ray Train's worker-group error (`worker_failures`), or chained
    as `__cause__`. The wrappers' messages carry tracebacks; the user needs the one line.
    """
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, UserError) and type(current).__module__.startswith("mtl_ray"):
            return UserError(first_line(current))
        failures = getattr(current, "worker_failures", None) or {}
        pending += [getattr(current, "cause", None), current.__cause__, current.__context__, *failures.values()]
    return None
