"""Distributed multi-task training with Ray Train V2.

Numbered like Ray's `train_tune_interop.py`:
1. `worker_loop` runs on every Ray Train worker: DDP model, streamed batches, masked loss,
   validation on rank 0, and one `ray.train.report` (metrics + checkpoint) per epoch.
2. `fit` is the driver: it validates the shards before Ray starts, sizes resources so Ray Data
   always keeps CPU, builds the `TorchTrainer` and turns its `Result` into a `TrainResult`.
Rerunning `fit` with the same `name` and `storage` resumes from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from mtl_ray import checkpoint, dataset, storage
from mtl_ray.config import TrainConfig
from mtl_ray.errors import UserError
from mtl_ray.format import ShardFormat
from mtl_ray.text import number, table
from mtl_ray.validate import ValidationReport, validate
from mtl_ray.weighting import Weighting, distributed_mean, known_tasks
from mtl_ray.weighting import get as get_weighting

MIN_CPUS_PER_WORKER = 0.25
DEFAULT_STORAGE = "mtl-ray-runs"


# ---- 1. the worker loop ---------------------------------------------------------------------

def _all_reduce_sum(values: list[float]) -> list[float]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def predict_batches(model: torch.nn.Module, batches, device: torch.device, autocast: bool) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and targets over an iterable of {"image", "labels"} batches."""
    from mtl_ray.models import to_input

    model.eval()
    probs, targets = [], []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        for batch in batches:
            logits = model(to_input(batch["image"].to(device, non_blocking=True), channels_last=True))
            probs.append(torch.sigmoid(logits.float()).cpu().numpy())
            targets.append(batch["labels"].cpu().numpy())
    return np.concatenate(probs), np.concatenate(targets)


def _all_reduce_gradients(model: torch.nn.Module) -> None:
    """Average `.grad` over workers by hand, for steps that ran under DDP's `no_sync()`."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, weighting: Weighting, images: torch.Tensor,
               labels: torch.Tensor, device: torch.device, reduction: str = "seed") -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step: uint8 images moved as bytes, normalised on the device, bf16 on GPU.

    The weighting method turns the per-task loss terms into gradients. Methods that edit gradients
    (GradNorm, PCGrad) run under DDP's `no_sync()` and the gradients are averaged here instead.
    Returns the weighted loss and the per-task terms, detached.
    """
    from mtl_ray.losses import task_terms
    from mtl_ray.models import to_input

    x = to_input(images.to(device, non_blocking=True), channels_last=True)
    labels = labels.to(device, non_blocking=True)
    by_hand = weighting.manipulates_gradients and isinstance(model, torch.nn.parallel.DistributedDataParallel)
    optimizer.zero_grad(set_to_none=True)
    with model.no_sync() if by_hand else contextlib.nullcontext():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x)
        terms = task_terms(logits, labels, reduction)
        loss = weighting.backward(terms, known_tasks(labels), model)
    if by_hand:
        _all_reduce_gradients(model)
    optimizer.step()
    return loss, terms.detach()


def epoch_lr(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate for 0-based `epoch`: constant, or cosine from `lr` at epoch 0 toward 0 after the last.

    Set per epoch rather than stepped by a scheduler object, so a resumed run needs no scheduler state.
    """
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))


def worker_loop(config: dict) -> None:
    """Train on this worker's stream of the `train` dataset; rank 0 validates and checkpoints."""
    import ray.train
    import ray.train.torch

    from mtl_ray.metrics import evaluate, mean_auroc
    from mtl_ray.models import build, unwrap

    cfg = TrainConfig(**config["train"])
    fmt: ShardFormat = config["batch_format"]
    tasks = list(fmt.tasks)
    torch.set_num_threads(config["torch_threads"])
    torch.manual_seed(cfg.seed)
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"

    model = build(cfg.backbone, len(tasks), channels_last=True)
    weighting = get_weighting(cfg.weighting.name, len(tasks), distributed_mean, **cfg.weighting.params()).to(device)
    groups = [{"params": list(model.parameters())}]
    if list(weighting.parameters()):
        groups.append({"params": list(weighting.parameters()), "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, history = 0, []
    resumed = ray.train.get_checkpoint()
    if resumed:
        with resumed.as_directory() as d:
            state, meta = checkpoint.load(d)
        model.load_state_dict(state["model"])
        weighting.load_state_dict(state["weighting"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"], meta["history"]
    first_epoch = start_epoch + 1
    model = ray.train.torch.prepare_model(model)
    collate = dataset.ShardCollate(fmt)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr(cfg, epoch)
        shuffle = {}
        if cfg.shuffle_buffer:
            shuffle = {"local_shuffle_buffer_size": cfg.shuffle_buffer, "local_shuffle_seed": hash((cfg.seed, epoch, rank)) % 2**31}
        seen, loss_sum, batches = 0, 0.0, 0
        terms_sum = torch.zeros(len(tasks), device=device)
        started = time.perf_counter()
        for batch in train_shard.iter_torch_batches(batch_size=cfg.batch_size, collate_fn=collate, device=device, **shuffle):
            loss, terms = train_step(model, optimizer, weighting, batch["image"], batch["labels"], device, cfg.loss_reduction)
            seen += len(batch["image"])
            loss_sum += float(loss)
            terms_sum += terms
            batches += 1
        elapsed = time.perf_counter() - started
        total_seen, total_loss, total_batches = _all_reduce_sum([seen, loss_sum, batches])
        weighting.epoch_end(terms_sum / max(batches, 1))
        metrics = {
            "epoch": epoch + 1,
            "train_loss": total_loss / max(total_batches, 1),
            "train_images_per_s": total_seen / max(elapsed, 1e-9),
            "task_weights": dict(zip(tasks, weighting.weights())),
        }
        if rank == 0:
            probs, targets = predict_batches(unwrap(model), val_shard.iter_torch_batches(batch_size=max(cfg.batch_size, 256), collate_fn=collate), device, autocast=on_gpu)
            per_task = evaluate(probs, targets, tasks)
            metrics.update({"mean_auroc": mean_auroc(per_task), "val": per_task})
            history.append(metrics)
            with tempfile.TemporaryDirectory() as d:
                meta = {"epoch": epoch + 1, "first_epoch": first_epoch, "tasks": tasks, "backbone": cfg.backbone,
                        "config": cfg.model_dump(), "image": {"size": fmt.shape[0], "channels": 3},
                        "metrics": metrics, "history": history}
                checkpoint.save(d, unwrap(model), weighting, optimizer, meta)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


# ---- 2. the driver --------------------------------------------------------------------------

@dataclass(frozen=True)
class ResourcePlan:
    """How many Ray Train workers, with how many CPUs/GPUs each, and torch threads per worker."""

    workers: int
    cpus_per_worker: float
    use_gpu: bool
    torch_threads: int
    data_cpus: float


def plan_resources(cfg: TrainConfig, cluster: dict[str, float]) -> ResourcePlan:
    """Size workers so the request fits the cluster and at least one CPU stays free for Ray Data.

    On a 2-CPU machine two CPU workers get 0.5 CPU each: whole-CPU workers would take every CPU and
    Ray Data's read/decode tasks would never be scheduled (the run hangs; Ray issue 29662).
    """
    cpus = float(cluster.get("CPU", 0))
    gpus = float(cluster.get("GPU", 0))
    if cfg.gpu:
        workers = cfg.workers or max(1, int(gpus))
        if gpus < workers:
            raise UserError(f"--gpu: {workers} training worker(s) need {workers} GPU(s) but the Ray cluster has {gpus:g}")
    else:
        workers = cfg.workers or 2
    data_cpus = 1.0 if cpus < 8 else max(1.0, cpus * 0.25)
    if cfg.cpus_per_worker is not None:
        per_worker = cfg.cpus_per_worker
    else:
        per_worker = min(1.0 if not cfg.gpu else max(1.0, (cpus - data_cpus) / workers), (cpus - data_cpus) / workers)
    need = workers * max(per_worker, MIN_CPUS_PER_WORKER) + data_cpus
    if per_worker < MIN_CPUS_PER_WORKER or need > cpus + 1e-9:
        raise UserError(
            f"--workers {workers}: the Ray cluster has {cpus:g} CPUs; {workers} workers need at least "
            f"{workers * MIN_CPUS_PER_WORKER:g} ({MIN_CPUS_PER_WORKER:g} each) plus {data_cpus:g} for Ray Data"
        )
    return ResourcePlan(workers, round(per_worker, 3), cfg.gpu, max(1, int(per_worker)), data_cpus)


@dataclass
class TrainResult:
    """What one run produced: final validation metrics, the checkpoint, and throughput."""

    name: str
    tasks: list[str]
    params: int
    epochs: int
    first_epoch: int
    val: dict[str, dict]
    mean_auroc: float | None
    checkpoint: str
    train_images_per_s: float
    seconds: float
    history: list[dict] = field(default_factory=list)
    exit_code: int = 0

    def to_json(self) -> dict:
        return {
            "name": self.name, "tasks": self.tasks, "params": self.params, "epochs": self.epochs, "first_epoch": self.first_epoch, "val": self.val,
            "mean_auroc": self.mean_auroc, "checkpoint": self.checkpoint,
            "train_images_per_s": self.train_images_per_s, "seconds": self.seconds, "history": self.history,
        }

    def render(self) -> str:
        head = ["task", "auroc", "accuracy", "f1", "n_labeled"]
        rows = [[t, number(m["auroc"]), number(m["accuracy"]), number(m["f1"]), str(m["n_labeled"])] for t, m in self.val.items()]
        return "\n".join([
            f"run {self.name}: epochs {self.first_epoch}-{self.epochs}, {len(self.tasks)} tasks, {self.seconds:.0f} s, {self.train_images_per_s:,.0f} train images/s",
            *table(head, rows),
            f"mean_auroc {number(self.mean_auroc)}",
            f"checkpoint {self.checkpoint}",
        ])


def _select_sources(data: str, val: str | None, train_report: ValidationReport) -> tuple[dataset.Source, dataset.Source]:
    """Train rows (split train or unassigned) and validation rows (--val, or the data's val split)."""
    fmt = train_report.fmt
    has_split = _has_split_column(train_report)
    train_rows = sum(train_report.splits.get(s, {}).get("rows", 0) for s in ("train", "unassigned"))
    if train_rows == 0:
        raise UserError(f"{data}: no training rows (split 'train' or unassigned)")
    train_src = dataset.Source(train_report.fs, tuple(train_report.paths), fmt, "train", has_split)
    if val is None:
        if train_report.splits.get("val", {}).get("rows", 0) == 0:
            raise UserError(f"{data}: empty validation split: no rows with split 'val'; add some or pass --val PATH")
        return train_src, dataset.Source(train_report.fs, tuple(train_report.paths), fmt, "val", has_split)
    val_report = validate(val)
    val_report.raise_if_unusable()
    if list(val_report.fmt.tasks) != list(fmt.tasks):
        raise UserError(f"{val}: validation tasks {list(val_report.fmt.tasks)} differ from training tasks {list(fmt.tasks)} ({data})")
    val_rows = val_report.splits.get("val", {}).get("rows", 0)
    split = "val" if val_rows else None
    if val_report.rows == 0:
        raise UserError(f"{val}: empty validation data")
    return train_src, dataset.Source(val_report.fs, tuple(val_report.paths), val_report.fmt, split, _has_split_column(val_report))


def _has_split_column(report: ValidationReport) -> bool:
    return any(s in report.splits for s in ("train", "val", "test"))


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
        raise UserError(f"RAY_ADDRESS={address} is a Ray Jobs URL: run this as a job with `mtl-ray submit -- ...`, "
                        "or unset RAY_ADDRESS to use a local Ray")
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
    import socket

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


def run_storage(path: str | None) -> tuple[str, object | None, str]:
    """(storage_path, storage_filesystem, display prefix) for RunConfig; local paths made absolute,
    because Tune runs trial drivers in directories of their own."""
    path = path or DEFAULT_STORAGE
    fs, inner = storage.prepare_output(path)
    if storage.is_s3(path):
        return inner, fs, "s3://"
    return os.path.abspath(inner), None, ""


def check_model_config(cfg: TrainConfig, num_tasks: int) -> None:
    """Backbone and weighting errors surface here, before Ray starts, not inside a worker."""
    from mtl_ray.models import available

    if cfg.backbone not in available():
        raise UserError(f"unknown backbone {cfg.backbone!r}: available are {', '.join(available())}")
    get_weighting(cfg.weighting.name, num_tasks, **cfg.weighting.params())


@dataclass(frozen=True)
class Inputs:
    """A run's validated inputs: where train and validation rows come from, and the image size."""

    data: str
    train: dataset.Source
    val: dataset.Source
    size: int


def prepare(data: str, *, val: str | None = None, image_size: int | None = None, tasks: Sequence[str] | None = None,
            labeled_only: bool = False, shuffle_labels: Sequence[str] = (), seed: int = 0) -> Inputs:
    """Validate the shards before Ray starts and choose the train/validation rows (see `fit`)."""
    report = validate(data)
    report.raise_if_unusable()
    train_src, val_src = _select_sources(data, val, report)
    if tasks is not None:
        unknown = [t for t in tasks if t not in report.fmt.tasks]
        if unknown:
            raise UserError(f"{data}: no task {unknown[0]!r}; tasks are {', '.join(report.fmt.tasks)}")
        train_src = replace(train_src, fmt=replace(train_src.fmt, tasks=tuple(tasks)))
        val_src = replace(val_src, fmt=replace(val_src.fmt, tasks=tuple(tasks)))
    train_src = replace(train_src, labeled_only=labeled_only, shuffle=tuple(shuffle_labels), seed=seed)
    size = image_size or (report.fmt.shape[0] if report.fmt.shape else 64)
    return Inputs(data, train_src, val_src, size)


def build_trainer(inputs: Inputs, cfg: TrainConfig, plan: ResourcePlan, *, name: str, storage_dir: str,
                  storage_fs: object | None, callbacks: Sequence[object] = ()):
    """The `TorchTrainer` of one run: `worker_loop` on `plan`'s workers, checkpoints under storage/name."""
    import ray.train
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        worker_loop,
        train_loop_config={
            "train": cfg.model_dump(),
            "batch_format": dataset.decoded_format(inputs.train.fmt, inputs.size),
            "torch_threads": plan.torch_threads,
        },
        scaling_config=ray.train.ScalingConfig(num_workers=plan.workers, use_gpu=plan.use_gpu, resources_per_worker={"CPU": plan.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_dir, storage_filesystem=storage_fs, callbacks=list(callbacks),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.num_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
        ),
        datasets={"train": dataset.read(inputs.train, inputs.size), "val": dataset.read(inputs.val, inputs.size)},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )


def result_from_checkpoint(directory: str, *, name: str, location: str, seconds: float) -> TrainResult:
    """A `TrainResult` from a checkpoint directory's `meta.json`."""
    from mtl_ray.models import build

    meta = checkpoint.load_meta(directory)
    metrics = meta["metrics"]
    return TrainResult(
        name=name, tasks=meta["tasks"], params=sum(p.numel() for p in build(meta["backbone"], len(meta["tasks"])).parameters()),
        epochs=meta["epoch"], first_epoch=meta["first_epoch"], val=metrics["val"],
        mean_auroc=metrics["mean_auroc"], checkpoint=location,
        train_images_per_s=metrics["train_images_per_s"], seconds=seconds, history=meta["history"],
    )


def fit(data: str, *, val: str | None = None, config: TrainConfig | None = None, storage_path: str | None = None,
        name: str | None = None, tasks: Sequence[str] | None = None, labeled_only: bool = False,
        shuffle_labels: Sequence[str] = ()) -> TrainResult:
    """Train one multi-task model on the shards at `data`; resume if `name` already has checkpoints.

    `tasks` trains on a subset of the data's tasks (one task = a single-task baseline) and
    `labeled_only` keeps only rows where one of them is known; `shuffle_labels` permutes those
    tasks' training labels across rows (the shuffle control of `mtl-ray compare`).
    """
    import ray

    cfg = config or TrainConfig()
    inputs = prepare(data, val=val, image_size=cfg.image_size, tasks=tasks, labeled_only=labeled_only,
                     shuffle_labels=shuffle_labels, seed=cfg.seed)
    check_model_config(cfg, len(inputs.train.fmt.tasks))
    storage_dir, storage_fs, shown = run_storage(storage_path)

    ensure_ray()
    plan = plan_resources(cfg, ray.cluster_resources())
    run_name = name or f"train-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = build_trainer(inputs, cfg, plan, name=run_name, storage_dir=storage_dir, storage_fs=storage_fs)
    started = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - started
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as d:
        return result_from_checkpoint(d, name=run_name, location=f"{shown}{result.checkpoint.path}", seconds=seconds)
