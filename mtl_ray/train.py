"""Distributed multi-task training with Ray Train V2.

Numbered like Ray's `train_tune_interop.py`:
1. `worker_loop` runs on every Ray Train worker: DDP model, streamed batches, masked loss
   (`mtl_ray.step`), validation on rank 0, and one `ray.train.report` (metrics + checkpoint) per
   epoch.
2. `fit` is the driver: it validates the shards before Ray starts (`prepare`), sizes resources so
   Ray Data always keeps CPU (`mtl_ray.runtime`), builds the `TorchTrainer` (`build_trainer`) and
   turns its `Result` into a `TrainResult`. `mtl_ray.tune` runs the same trainer once per trial.
Rerunning `fit` with the same `name` and `storage` resumes from the last checkpoint.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import ray
import torch

from mtl_ray import checkpoint, dataset, device_decode, progress, storage
from mtl_ray.config import TrainConfig
from mtl_ray.errors import UserError
from mtl_ray.images import show_size
from mtl_ray.runtime import (
    ResourcePlan,
    check_model_config,
    ensure_ray,
    plan_resources,
    run_storage,
    user_error_in,
)
from mtl_ray.shards import ShardFormat
from mtl_ray.step import (
    all_reduce_sum,
    diverged,
    epoch_lr,
    mean_over_workers,
    predict_batches,
    train_step,
    whole_batches,
)
from mtl_ray.text import number, table
from mtl_ray.validate import ValidationReport, validate

if TYPE_CHECKING:
    from mtl_ray.registry import InitSource
from mtl_ray.weighting import get as get_weighting

# ---- 1. the worker loop ---------------------------------------------------------------------

STEP_KEY = "step_in_epoch"
"""Marks a report made inside an epoch (a step checkpoint): it has no epoch metrics, and Tune's
scheduler and the progress and MLflow callbacks pass it by."""


def worker_loop(config: dict) -> None:
    """Train on this worker's stream of the `train` dataset; rank 0 validates and checkpoints.

    A user error (bad input, a diverging run) is kept in the run's `Inbox` before it fails the group.
    """
    if ray.get(config["inbox"].first.remote()) is not None:
        return  # a group restarted after a user error: the same input would only fail again
    try:
        _train(config)
    except UserError as exc:
        ray.get(config["inbox"].put.remote(str(exc)))
        raise


def _train(config: dict) -> None:
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
    init = config["init"]
    if init is not None:
        init["heads_kept"] = model.load_initial(ray.get(init["state"]), init["tasks"], tasks)
    if cfg.trunk == "freeze":
        model.trunk.requires_grad_(False)
    weighting = get_weighting(cfg.weighting.name, len(tasks), mean_over_workers, **cfg.weighting.params()).to(device)
    groups = [
        {
            "params": [p for p in model.trunk.parameters() if p.requires_grad],
            "lr_scale": cfg.trunk_lr_scale if init is not None else 1.0,  # a trunk from scratch trains at lr
        },
        {"params": list(model.heads.parameters()), "lr_scale": 1.0},
    ]
    if list(weighting.parameters()):
        groups.append({"params": list(weighting.parameters()), "weight_decay": 0.0, "lr_scale": 1.0})
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, history, resumes = 0, [], []
    resumed = ray.train.get_checkpoint()
    if resumed:
        with resumed.as_directory() as d:
            state, meta = checkpoint.load(d)
        model.load_state_dict(state["model"])
        weighting.load_state_dict(state["weighting"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history, resumes = state["epoch"], meta["history"], meta.get("resumes", [])
        resumes.append({"epoch": start_epoch + 1, "step": meta.get("step", 0)})
        if start_epoch >= cfg.epochs:  # it had finished (a resumed Tune trial): its result once more, for Tune
            ray.train.report(meta["metrics"], checkpoint=resumed if rank == 0 else None)
            return
    first_epoch = start_epoch + 1
    lineage = None if init is None else {k: v for k, v in init.items() if k != "state"}
    model = ray.train.torch.prepare_model(model)
    collate = dataset.ShardCollate(fmt)
    encoded: ShardFormat | None = config["encoded_format"]
    train_collate = dataset.ShardCollate(encoded) if encoded else collate

    def save(epochs_done: int, metrics: dict, step: int = 0) -> None:
        """Rank 0 writes a checkpoint (after `epochs_done` whole epochs and `step` steps of the next)
        and every rank reports, as Ray Train requires of all workers."""
        if rank != 0:
            ray.train.report(metrics)
            return
        meta = {
            "epoch": epochs_done,
            "step": step,
            "first_epoch": first_epoch,
            "tasks": tasks,
            "backbone": cfg.backbone,
            "config": cfg.model_dump(),
            "image": {"size": list(fmt.shape[:2]), "channels": 3, "resize": cfg.resize},
            "data": {
                "train_rows": config["train_rows"],
                "val": config["val_rows"],
                "decode": "worker" if encoded else "tasks",
            },
            "init": lineage,
            "metrics": metrics if not step else (history[-1] if history else {}),
            "history": history,
            "resumes": resumes,
        }
        with tempfile.TemporaryDirectory() as d:
            checkpoint.save(d, unwrap(model), weighting, optimizer, meta)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        if cfg.trunk == "freeze":
            unwrap(model).trunk.eval()  # a kept trunk keeps its batch-norm statistics too
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr(cfg, epoch) * group["lr_scale"]
        shuffle = {}
        if cfg.shuffle_buffer:
            shuffle = {
                "local_shuffle_buffer_size": cfg.shuffle_buffer,
                "local_shuffle_seed": hash((cfg.seed, epoch, rank)) % 2**31,
            }
        seen, loss_sum, batches, skipped, nonfinite, in_a_row = 0, 0.0, 0, 0, 0, 0
        terms_sum = torch.zeros(len(tasks), device=device)
        started = time.perf_counter()
        stream = train_shard.iter_torch_batches(
            batch_size=cfg.batch_size, collate_fn=train_collate, device="cpu" if encoded else device, **shuffle
        )
        if encoded:
            stream = device_decode.DecodeOnDevice(stream, tuple(fmt.shape[:2]), cfg.resize, device)
        for step, batch in enumerate(whole_batches(stream), start=1):
            loss, terms, taken = train_step(
                model, optimizer, weighting, batch["image"], batch["labels"], device, cfg.loss_reduction
            )
            seen += len(batch["image"])
            skipped += int(batch["skipped"])
            if taken:
                in_a_row = 0
                loss_sum += float(loss)
                terms_sum += terms
                batches += 1
            else:
                nonfinite, in_a_row = nonfinite + 1, in_a_row + 1
                if in_a_row >= cfg.max_nonfinite_steps:
                    raise UserError(diverged(cfg, epoch + 1, step))
            if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:  # the same steps on every rank
                save(epoch, {STEP_KEY: step, "epochs_done": epoch}, step)
        elapsed = time.perf_counter() - started
        total_seen, total_loss, total_batches, total_skipped, total_nonfinite = all_reduce_sum(
            [seen, loss_sum, batches, skipped, nonfinite]
        )
        weighting.epoch_end(terms_sum / max(batches, 1))
        metrics = {
            "epoch": epoch + 1,
            "train_loss": total_loss / max(total_batches, 1),
            "train_images_per_s": total_seen / max(elapsed, 1e-9),
            "nonfinite_steps": int(total_nonfinite),
            "task_weights": dict(zip(tasks, weighting.weights(), strict=True)),
        }
        if rank == 0:
            val_batches = dataset.CountSkipped(
                val_shard.iter_torch_batches(batch_size=max(cfg.batch_size, 256), collate_fn=collate)
            )
            probs, targets = predict_batches(unwrap(model), val_batches, device, autocast=on_gpu)
            per_task = evaluate(probs, targets, tasks)
            metrics.update(
                {
                    "mean_auroc": mean_auroc(per_task),
                    "val": per_task,
                    "skipped_images": int(total_skipped) + val_batches.skipped,
                }
            )
            history.append(metrics)
            config["inbox"].report.remote({k: metrics[k] for k in progress.EPOCH_KEYS})
        save(epoch + 1, metrics)


# ---- 2. the driver --------------------------------------------------------------------------

PROGRESS_POLL_S = 1.0


@ray.remote(num_cpus=0)
class Inbox:
    """What a run's workers tell its driver: each epoch's report (for the progress lines) and the
    first user error (bad input, a diverging run).

    Ray Train restarts the worker group after any worker error (`max_failures`); the restarted
    workers find the error here and stop at once instead of failing the same way again.
    """

    def __init__(self) -> None:
        self.message: str | None = None
        self.reports: list[dict] = []

    def put(self, message: str) -> None:
        self.message = self.message or message

    def first(self) -> str | None:
        return self.message

    def report(self, metrics: dict) -> None:
        self.reports.append(metrics)

    def take(self) -> list[dict]:
        taken, self.reports = self.reports, []
        return taken


@dataclass
class Run:
    """A `TorchTrainer` and the `Inbox` its workers report to."""

    trainer: object
    inbox: object

    def fit(self, on_epoch: Callable[[dict], None] | None = None):
        """`trainer.fit()`, with a worker's user error raised here as one `UserError`; `on_epoch` is
        called on this process with each epoch's report while the run goes on."""
        stop = threading.Event()

        def relay() -> None:  # until the run ends, then once more for its last reports
            while True:
                ended = stop.wait(PROGRESS_POLL_S)
                for metrics in ray.get(self.inbox.take.remote()):
                    on_epoch(metrics)
                if ended:
                    return

        watcher = threading.Thread(target=relay, daemon=True) if on_epoch else None
        if watcher:
            watcher.start()
        try:
            result = self.trainer.fit()
            failure = result.error
        except Exception as exc:  # a UserError raised in a Ray Data task arrives wrapped
            result, failure = None, exc
        finally:
            stop.set()
        if watcher:
            watcher.join()
        message = ray.get(self.inbox.first.remote())
        ray.kill(self.inbox)
        if message:
            raise UserError(message)
        if failure is not None:
            raise user_error_in(failure) or failure from None
        return result


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
    image: dict = field(default_factory=dict)
    """{"size": [H, W], "resize": mode, "why": how the size was chosen, "decode": where JPEGs were decoded
    (tasks: Ray Data tasks; worker: the training worker, `mtl_ray.device_decode`)}"""
    skipped_images: int = 0
    init: dict | None = None
    """Where the first weights came from (`TrainConfig.init`): URI, resolved version, heads kept."""
    history: list[dict] = field(default_factory=list)
    exit_code: int = 0

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "tasks": self.tasks,
            "params": self.params,
            "epochs": self.epochs,
            "first_epoch": self.first_epoch,
            "val": self.val,
            "mean_auroc": self.mean_auroc,
            "checkpoint": self.checkpoint,
            "train_images_per_s": self.train_images_per_s,
            "seconds": self.seconds,
            "image": self.image,
            "skipped_images": self.skipped_images,
            "init": self.init,
            "history": self.history,
        }

    def render(self) -> str:
        head = ["task", "auroc", "accuracy", "f1", "n_labeled"]
        rows = [
            [t, number(m["auroc"]), number(m["accuracy"]), number(m["f1"]), str(m["n_labeled"])]
            for t, m in self.val.items()
        ]
        return "\n".join(
            [
                f"run {self.name}: epochs {self.first_epoch}-{self.epochs}, {len(self.tasks)} tasks, "
                f"{self.seconds:.0f} s, {self.train_images_per_s:,.0f} train images/s",
                f"images {show_size(self.image['size'])} (HxW), {self.image['why']}, {self.image['resize']}",
                *table(head, rows),
                f"mean_auroc {number(self.mean_auroc)}",
                *(
                    [f"skipped {self.skipped_images} unreadable image(s) in every epoch (--strict makes them an error)"]
                    if self.skipped_images
                    else []
                ),
                *(
                    [
                        f"started from {self.init['uri']}"
                        + (f" version {self.init['version']}" if self.init.get("version") else "")
                        + f"; heads kept: {', '.join(self.init.get('heads_kept') or []) or 'none'}"
                    ]
                    if self.init
                    else []
                ),
                f"checkpoint {self.checkpoint}",
            ]
        )


@dataclass(frozen=True)
class Inputs:
    """A run's validated inputs: where train and validation rows come from, and the image size."""

    data: str
    train: dataset.Source
    val: dataset.Source
    size: tuple[int, int]
    """(height, width) every image is brought to."""
    size_reason: str
    train_rows: int
    """Training rows one pass streams (for a `labeled_only` subset, those of its best-labeled task)."""
    profiles: dict[str, dict] = field(default_factory=dict)
    """{"training"|"validation": `ValidationReport.profile`} of the data as a whole, for the tracker."""

    def val_rows(self) -> dict:
        """Where the validation rows are, for the checkpoint: the alias gate scores a champion on them."""
        profile = self.profiles["validation"]
        path = profile["source"]
        return {
            "path": path if storage.is_s3(path) else os.path.abspath(path),
            "split": None if profile["split"] == "all" else profile["split"],
        }

    def cached(self, object_store_bytes: float) -> bool:
        """Whether the training rows are small enough to read once and serve from memory every epoch."""
        return dataset.cached(self.train_rows, self.size, object_store_bytes)

    def passes(self, cfg: TrainConfig) -> int:
        """Passes over the training rows per epoch: enough for `cfg.epoch_rows` rows, at least one."""
        return max(1, round(cfg.epoch_rows / max(self.train_rows, 1))) if cfg.epoch_rows else 1


def _select_sources(
    data: str, val: str | None, report: ValidationReport
) -> tuple[dataset.Source, dataset.Source, dict]:
    """Train rows (split train or unassigned), validation rows (--val, or the data's val split), and
    the validation rows' `ValidationReport.profile`."""
    if report.rows_in("train") == 0:
        raise UserError(f"{data}: no training rows (split 'train' or unassigned)")
    train_src = dataset.Source(report.fs, tuple(report.paths), report.fmt, "train", report.has_split_column)
    if val is None:
        if report.rows_in("val") == 0:
            raise UserError(f"{data}: empty validation split: no rows with split 'val'; add some or pass --val PATH")
        val_src = dataset.Source(report.fs, tuple(report.paths), report.fmt, "val", report.has_split_column)
        return train_src, val_src, report.profile("val")
    val_report = validate(val)
    val_report.raise_if_unusable()
    if list(val_report.fmt.tasks) != list(report.fmt.tasks):
        raise UserError(
            f"{val}: validation tasks {list(val_report.fmt.tasks)} differ from training tasks "
            f"{list(report.fmt.tasks)} ({data})"
        )
    if val_report.rows == 0:
        raise UserError(f"{val}: empty validation data")
    split = "val" if val_report.rows_in("val") else None
    val_src = dataset.Source(val_report.fs, tuple(val_report.paths), val_report.fmt, split, val_report.has_split_column)
    return train_src, val_src, val_report.profile(split)


def prepare(
    data: str,
    cfg: TrainConfig,
    *,
    val: str | None = None,
    tasks: Sequence[str] | None = None,
    labeled_only: bool = False,
    shuffle_labels: Sequence[str] = (),
    ids: frozenset[str] | None = None,
) -> Inputs:
    """Validate the shards and `cfg` before Ray starts; choose the train/validation rows and the image
    size (`cfg.image_size`, else `ValidationReport.training_size`). See `fit` for the keywords."""
    report = validate(data)
    report.raise_if_unusable()
    train_src, val_src, val_profile = _select_sources(data, val, report)
    if tasks is not None:
        unknown = [t for t in tasks if t not in report.fmt.tasks]
        if unknown:
            raise UserError(f"{data}: no task {unknown[0]!r}; tasks are {', '.join(report.fmt.tasks)}")
        train_src = replace(train_src, fmt=replace(train_src.fmt, tasks=tuple(tasks)))
        val_src = replace(val_src, fmt=replace(val_src.fmt, tasks=tuple(tasks)))
    train_src = replace(
        train_src,
        labeled_only=labeled_only,
        shuffle=tuple(shuffle_labels),
        seed=cfg.seed,
        strict=cfg.strict,
        ids=ids,
    )
    val_src = replace(val_src, strict=cfg.strict)
    size, reason = (cfg.size(), "configured") if cfg.image_size else report.training_size()
    check_model_config(cfg, len(train_src.fmt.tasks), size)
    labeled = report.labeled_in("train")
    rows = max(labeled[t] for t in train_src.fmt.tasks) if labeled_only else report.rows_in("train")
    rows = len(ids) if ids is not None else rows
    profiles = {"training": report.profile("train"), "validation": val_profile}
    for profile in profiles.values():
        profile["tasks"] = {t: profile["tasks"][t] for t in train_src.fmt.tasks}
    return Inputs(data, train_src, val_src, size, reason, rows, profiles)


def build_trainer(
    inputs: Inputs,
    cfg: TrainConfig,
    plan: ResourcePlan,
    *,
    name: str,
    storage_dir: str,
    storage_fs: object | None,
    callbacks: Sequence[object] = (),
    source: InitSource | None = None,
):
    """The `TorchTrainer` of one run (a `Run`): `worker_loop` on `plan`'s workers, checkpoints under
    storage/name, starting from `source`'s weights when given (its state goes to the workers through the
    object store)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    init = None
    if source is not None:
        init = {**source.lineage, "state": ray.put(source.state), "tasks": source.tasks}
    cached = inputs.cached(plan.object_store_bytes)
    in_worker = device_decode.in_worker(cfg.decode, inputs.train.fmt.encoding, plan.use_gpu, cfg.strict, cached)
    inbox = Inbox.remote()
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "train": cfg.model_dump(),
            "batch_format": dataset.decoded_format(inputs.train.fmt, inputs.size),
            "encoded_format": inputs.train.fmt if in_worker else None,
            "torch_threads": plan.torch_threads,
            "train_rows": inputs.train_rows,
            "val_rows": inputs.val_rows(),
            "init": init,
            "inbox": inbox,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=plan.workers, use_gpu=plan.use_gpu, resources_per_worker={"CPU": plan.cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_dir,
            storage_filesystem=storage_fs,
            callbacks=list(callbacks),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.num_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
        ),
        datasets={
            "train": dataset.read(
                inputs.train,
                inputs.size,
                cfg.resize,
                inputs.passes(cfg),
                cache=cached,
                encoded=in_worker,
            ),
            "val": dataset.read(inputs.val, inputs.size, cfg.resize),
        },
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    return Run(trainer, inbox)


def result_from_checkpoint(
    directory: str, *, name: str, location: str, seconds: float, size_reason: str = "from the checkpoint"
) -> TrainResult:
    """A `TrainResult` from a checkpoint directory's `meta.json`."""
    from mtl_ray.models import build

    meta = checkpoint.load_meta(directory)
    metrics = meta["metrics"]
    size, resize = checkpoint.input_spec(meta)
    params = sum(p.numel() for p in build(meta["backbone"], len(meta["tasks"])).parameters())
    return TrainResult(
        name=name,
        tasks=meta["tasks"],
        params=params,
        epochs=meta["epoch"],
        first_epoch=meta["first_epoch"],
        val=metrics["val"],
        mean_auroc=metrics["mean_auroc"],
        checkpoint=location,
        train_images_per_s=metrics["train_images_per_s"],
        seconds=seconds,
        image={
            "size": list(size),
            "resize": resize,
            "why": size_reason,
            "decode": meta.get("data", {}).get("decode", "tasks"),
        },
        skipped_images=metrics.get("skipped_images", 0),
        init=meta.get("init"),
        history=meta["history"],
    )


def with_init(cfg: TrainConfig) -> tuple[TrainConfig, InitSource | None]:
    """`cfg` and its `init` source, loaded (see `init_settings`)."""
    from mtl_ray.registry import resolve_init

    if cfg.init is None:
        return cfg, None
    source = resolve_init(cfg.init, cfg.backbone)
    return init_settings(cfg, source), source


def init_settings(cfg: TrainConfig, source: InitSource) -> TrainConfig:
    """`cfg` with `source`'s backbone, image size and resize mode: a run that starts from another model
    takes them; one of them set explicitly to something else is an error naming both."""
    taken: dict = {"backbone": source.backbone}
    if source.size is not None:
        taken.update(image_size=source.size, resize=source.resize)
    for key, value in taken.items():
        mine = cfg.size() if key == "image_size" else getattr(cfg, key)
        if key in cfg.model_fields_set and mine is not None and mine != value:
            raise UserError(f"{key} {mine!r} conflicts with --init {cfg.init}, which was trained with {key} {value!r}")
    return cfg.model_copy(update=taken)


def fit(
    data: str,
    *,
    val: str | None = None,
    config: TrainConfig | None = None,
    storage_path: str | None = None,
    name: str | None = None,
    tasks: Sequence[str] | None = None,
    labeled_only: bool = False,
    shuffle_labels: Sequence[str] = (),
    ids: frozenset[str] | None = None,
    source: InitSource | None = None,
) -> TrainResult:
    """Train one multi-task model on the shards at `data`; resume if `name` already has checkpoints.

    `tasks` trains on a subset of the data's tasks (one task = a single-task baseline) and
    `labeled_only` keeps only rows where one of them is known; `shuffle_labels` permutes those
    tasks' training labels across rows (the shuffle control of `mtl-ray compare`); `ids` keeps only
    the training rows with those ids (a label budget of `mtl-ray transfer`); `source` is `config.init`
    already loaded, so that runs of one comparison start from the very same weights.
    """
    cfg, source = (init_settings(config, source), source) if source else with_init(config or TrainConfig())
    inputs = prepare(data, cfg, val=val, tasks=tasks, labeled_only=labeled_only, shuffle_labels=shuffle_labels, ids=ids)
    storage_dir, storage_fs, shown = run_storage(storage_path)

    ensure_ray()
    plan = plan_resources(cfg, ray.cluster_resources())
    run_name = name or f"train-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = build_trainer(
        inputs, cfg, plan, name=run_name, storage_dir=storage_dir, storage_fs=storage_fs, source=source
    )
    started = time.perf_counter()
    result = trainer.fit(on_epoch=progress.EpochPrinter(run_name, cfg.epochs))
    seconds = time.perf_counter() - started
    with result.checkpoint.as_directory() as d:
        location = f"{shown}{result.checkpoint.path}"
        return result_from_checkpoint(
            d, name=run_name, location=location, seconds=seconds, size_reason=inputs.size_reason
        )
