"""Sizing a run's Ray Train workers so that the request fits the cluster and Ray Data always keeps
CPUs to read and decode with (Ray issue 29662: whole-CPU workers on a small machine starve it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

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
    min_workers: int | None = None
    """Elastic training: the run goes on with as few as this many workers (`workers` is the most)."""
    spread: bool = False
    """Place workers on as many nodes as possible: each node that holds one keeps CPUs to read with."""
    memory_per_worker: float = 0.0
    """Bytes of Ray's `memory` resource each worker asks for (elastic CPU runs): Ray Train sizes a
    restarted elastic group by what each node holds of the workers' resources, and by CPU alone it
    would fill a node's every CPU, the ones Ray Data reads with too; by memory a node holds only
    the workers the plan gave it."""

    @property
    def resources_per_worker(self) -> dict[str, float]:
        """Ray Train's `ScalingConfig(resources_per_worker=...)` (GPUs come from `use_gpu`)."""
        return {"CPU": self.cpus_per_worker, **({"memory": self.memory_per_worker} if self.memory_per_worker else {})}

    @property
    def num_workers(self) -> int | tuple[int, int]:
        """Ray Train's `ScalingConfig(num_workers=...)`: a count, or (min, max) for elastic training."""
        return self.workers if self.min_workers is None else (self.min_workers, self.workers)


def plan_resources(cfg: TrainConfig, nodes: list[dict[str, float]]) -> ResourcePlan:
    """The Ray Train workers of a training run (`plan_workers` with the config's request). Elastic
    workers (MIN-MAX) are sized for the most that `nodes` hold now, at least MIN; Ray Train adds up to
    MAX of that size as nodes join."""
    if not isinstance(cfg.workers, tuple):
        return plan_workers(nodes, gpu=cfg.gpu, workers=cfg.workers, cpus_per_worker=cfg.cpus_per_worker)
    low, high = cfg.workers
    for count in range(high, low - 1, -1):
        try:
            plan = plan_workers(nodes, gpu=cfg.gpu, workers=count, cpus_per_worker=cfg.cpus_per_worker)
        except UserError as exc:
            short = exc
            continue
        return replace(plan, workers=high, min_workers=low, memory_per_worker=_memory_cap(plan, nodes, count))
    raise short


def _memory_cap(plan: ResourcePlan, nodes: list[dict[str, float]], count: int) -> float:
    """`ResourcePlan.memory_per_worker` for `count` CPU workers on `nodes`: a share of the smallest
    node's memory such that a node holds as many of them as the plan puts on it, and no more."""
    hosts = [n for n in nodes if float(n.get("CPU", 0)) > 0 and float(n.get("memory", 0)) > 0]
    if plan.use_gpu or not hosts:
        return 0.0
    on_each = math.ceil(count / len(hosts))
    return float(int(min(float(n["memory"]) for n in hosts) / (on_each + 0.5)))


def plan_workers(
    nodes: list[dict[str, float]],
    *,
    gpu: bool,
    workers: int | None,
    cpus_per_worker: float | None = None,
    flag: str = "--workers",
    noun: str = "training worker",
    default_cpu_workers: int = 2,
) -> ResourcePlan:
    """Size workers (training workers, or scoring actors) on the cluster's `nodes` (each node's
    resources) so the request fits and every node that runs one keeps CPUs for Ray Data.

    On a 2-CPU machine two CPU workers get 0.5 CPU each: whole-CPU workers would take every CPU and
    Ray Data's read/decode tasks would never be scheduled (the run hangs; Ray issue 29662). On
    several nodes the workers are spread, as many on each node as the smallest node can hold beside
    its reserve (tried: 8 workers on four 1-CPU nodes left 0.25 CPU per node, and no read task of 1
    CPU could run anywhere). A GPU worker holds `GPU_WORKER_CPUS`; its share of the other CPUs (the
    cluster's CPUs per GPU, less its own) is counted for Ray Data, where reading and CPU decoding
    run. `flag` and `noun` name the request in errors.
    """
    cpus = sum(float(n.get("CPU", 0)) for n in nodes)
    gpus = sum(float(n.get("GPU", 0)) for n in nodes)
    hosts = [float(n.get("CPU", 0)) for n in nodes if float(n.get("CPU", 0)) > 0]
    store = sum(float(n.get("object_store_memory", 0)) for n in nodes)
    if gpu:
        workers = workers or max(1, int(gpus))
        if gpus < workers:
            raise UserError(f"--gpu: {workers} {noun}(s) need {workers} GPU(s) but the Ray cluster has {gpus:g}")
        per_gpu = cpus / max(gpus, 1.0)
        per_worker = cpus_per_worker or min(GPU_WORKER_CPUS, max(MIN_CPUS_PER_WORKER, per_gpu - 1.0))
        data_cpus = max(1.0, workers * (per_gpu - per_worker))
        return ResourcePlan(workers, round(per_worker, 3), True, max(1, int(per_worker)), data_cpus, store)
    workers = workers or default_cpu_workers
    smallest = min(hosts, default=0.0)
    reserve = data_reserve(smallest)
    on_each = math.ceil(workers / max(len(hosts), 1))  # workers on the busiest node, spread
    per_worker = cpus_per_worker or min(1.0, (smallest - reserve) / on_each)
    if per_worker < MIN_CPUS_PER_WORKER or on_each * per_worker + reserve > smallest + 1e-9:
        where = (
            f"the Ray cluster has {cpus:g} CPUs"
            if len(hosts) < 2
            else f"the Ray cluster's {len(hosts)} nodes have {smallest:g} CPUs each at the least"
        )
        raise UserError(
            f"{flag} {workers}: {where}; {on_each} worker(s) on a node need at least "
            f"{on_each * MIN_CPUS_PER_WORKER:g} ({MIN_CPUS_PER_WORKER:g} each) plus {reserve:g} for Ray Data there"
        )
    return ResourcePlan(
        workers,
        round(per_worker, 3),
        False,
        max(1, int(per_worker)),
        reserve * min(len(hosts), workers),
        store,
        spread=len(hosts) > 1,
    )


def data_reserve(node_cpus: float) -> float:
    """CPUs a node that runs CPU workers keeps for Ray Data: one read task's, or a quarter of a big node."""
    return 1.0 if node_cpus < 8 else node_cpus * 0.25


def holds(plan: ResourcePlan, nodes: list[dict[str, float]]) -> bool:
    """Whether `nodes` can hold the plan's workers (its fewest, for elastic training) as they were
    sized, each node keeping its reserve for Ray Data: after a node is lost, they may not."""
    need = plan.min_workers or plan.workers
    if plan.use_gpu:
        return sum(int(float(n.get("GPU", 0))) for n in nodes) >= need
    room = 0
    for node in nodes:
        cpus = float(node.get("CPU", 0))
        fits = int((cpus - data_reserve(cpus) + 1e-9) // plan.cpus_per_worker) if cpus > 0 else 0
        if plan.memory_per_worker:
            fits = min(fits, int(float(node.get("memory", 0)) // plan.memory_per_worker))
        room += max(0, fits)
    return room >= need
