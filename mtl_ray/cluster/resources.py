"""Sizing a run's Ray Train workers so that the request fits the cluster and Ray Data always keeps
CPUs to read and decode with (Ray issue 29662: whole-CPU workers on a small machine starve it)."""

from __future__ import annotations

from dataclasses import dataclass

from mtl_ray.config import TrainConfig
from mtl_ray.errors import UserError

MIN_CPUS_PER_WORKER = 0.25
GPU_WORKER_CPUS = 2.0
"""CPUs a GPU training worker holds by default (its loop and the batch-collating thread); the other
CPUs beside each GPU read and decode in Ray Data tasks."""


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
    """The Ray Train workers of a training run (`plan_workers` with the config's request)."""
    return plan_workers(cluster, gpu=cfg.gpu, workers=cfg.workers, cpus_per_worker=cfg.cpus_per_worker)


def plan_workers(
    cluster: dict[str, float],
    *,
    gpu: bool,
    workers: int | None,
    cpus_per_worker: float | None = None,
    flag: str = "--workers",
    noun: str = "training worker",
    default_cpu_workers: int = 2,
) -> ResourcePlan:
    """Size workers (training workers, or scoring actors) so the request fits the cluster and at least
    one CPU stays free for Ray Data.

    On a 2-CPU machine two CPU workers get 0.5 CPU each: whole-CPU workers would take every CPU and
    Ray Data's read/decode tasks would never be scheduled (the run hangs; Ray issue 29662). A GPU
    worker holds `GPU_WORKER_CPUS`; its share of the other CPUs (the cluster's CPUs per GPU, less
    its own) is counted for Ray Data, where reading and CPU decoding run. `flag` and `noun` name the
    request in errors.
    """
    cpus = float(cluster.get("CPU", 0))
    gpus = float(cluster.get("GPU", 0))
    if gpu:
        workers = workers or max(1, int(gpus))
        if gpus < workers:
            raise UserError(f"--gpu: {workers} {noun}(s) need {workers} GPU(s) but the Ray cluster has {gpus:g}")
        per_gpu = cpus / max(gpus, 1.0)
        per_worker = cpus_per_worker or min(GPU_WORKER_CPUS, max(MIN_CPUS_PER_WORKER, per_gpu - 1.0))
        data_cpus = max(1.0, workers * (per_gpu - per_worker))
    else:
        workers = workers or default_cpu_workers
        data_cpus = 1.0 if cpus < 8 else max(1.0, cpus * 0.25)
        per_worker = cpus_per_worker or min(1.0, (cpus - data_cpus) / workers)
    need = workers * max(per_worker, MIN_CPUS_PER_WORKER) + data_cpus
    if per_worker < MIN_CPUS_PER_WORKER or need > cpus + 1e-9:
        raise UserError(
            f"{flag} {workers}: the Ray cluster has {cpus:g} CPUs; {workers} workers need at least "
            f"{workers * MIN_CPUS_PER_WORKER:g} ({MIN_CPUS_PER_WORKER:g} each) plus {data_cpus:g} for Ray Data"
        )
    return ResourcePlan(
        workers,
        round(per_worker, 3),
        gpu,
        max(1, int(per_worker)),
        data_cpus,
        float(cluster.get("object_store_memory", 0.0)),
    )
