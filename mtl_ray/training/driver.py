"""2. The driver of one training run: `fit` (what `mtl-ray train` calls) and the pieces the Tune
trials of `mtl_ray.training.tune` share with it.

`fit` checks the inputs before Ray starts (`mtl_ray.training.inputs.prepare`), sizes workers so that
Ray Data always keeps CPUs (`mtl_ray.cluster.resources`), builds the `TorchTrainer` of
`mtl_ray.training.worker.worker_loop` (`build_trainer`), relays its workers' epoch reports as
progress lines while it runs (`Run.fit`) and turns its last checkpoint into a `TrainResult`.
Rerunning `fit` with the same `name` and `storage` resumes from the last checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from mtl_ray.cluster.capacity import NodeWatch, wait_s, when_ready
from mtl_ray.cluster.inbox import new_inbox, reported
from mtl_ray.cluster.resources import GPU_WORKER_CPUS, ResourcePlan, plan_resources
from mtl_ray.cluster.runtime import check_shared, ensure_ray, run_storage
from mtl_ray.config import DEFAULT_STORAGE, TrainConfig
from mtl_ray.data.images import show_size
from mtl_ray.errors import UserError
from mtl_ray.model import checkpoint
from mtl_ray.model.metrics import best_epoch
from mtl_ray.model.partition import show
from mtl_ray.progress import RunProgress
from mtl_ray.result import Result, number, plural, table
from mtl_ray.training import dataset, device_decode
from mtl_ray.training.inputs import Inputs, prepare
from mtl_ray.training.worker import InitWeights, WorkerSpec, worker_loop

if TYPE_CHECKING:
    from mtl_ray.registry.sources import InitSource


@dataclass
class Run:
    """A `TorchTrainer` and the `Inbox` its workers report to."""

    trainer: object
    inbox: object

    def fit(self, on_epoch: Callable[[dict], None] | None = None, watch: Callable[[], str | None] | None = None):
        """`trainer.fit()`, with a worker's user error raised here as one `UserError`; `on_epoch` is
        called on this process with each of the workers' reports while the run goes on, and `watch`
        every few seconds (`mtl_ray.cluster.inbox.reported`)."""
        return reported(self.inbox, on_epoch, self.trainer.fit, lambda result: result.error, watch)


@dataclass
class TrainResult(Result):
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
    (tasks: Ray Data tasks; worker: the training worker, `mtl_ray.training.device_decode`)}"""
    skipped_images: int = 0
    init: dict | None = None
    """Where the first weights came from (`TrainConfig.init`): URI, resolved version, heads kept."""
    history: list[dict] = field(default_factory=list)
    restarts: int = 0
    """Times this command's worker group was started again from a checkpoint (a lost worker or node)."""
    groups: list[list[str]] | None = None
    """The task groups, one network each (`TrainConfig.groups`); None for one shared network."""

    @property
    def best(self) -> dict:
        """The epoch with the best validation mean AUROC ({"epoch", "mean_auroc", "val"}), the last when
        none has one: what early stopping (`TrainConfig.patience`) looks for, and what `compare`
        reports of a single-task network."""
        best = best_epoch(self.history) or {"epoch": self.epochs, "mean_auroc": self.mean_auroc, "val": self.val}
        return {k: best[k] for k in ("epoch", "mean_auroc", "val")}

    def to_json(self) -> dict:
        return {**super().to_json(), "best": self.best}

    def render(self) -> str:
        head = ["task", "auroc", "accuracy", "f1", "n_labeled"]
        rows = [
            [t, number(m["auroc"]), number(m["accuracy"]), number(m["f1"]), str(m["n_labeled"])]
            for t, m in self.val.items()
        ]
        return "\n".join(
            [
                f"run {self.name}: epochs {self.first_epoch}-{self.epochs}, {len(self.tasks)} tasks, "
                + (f"{len(self.groups)} networks ({show(self.groups)}), " if self.groups else "")
                + f"{self.seconds:.0f} s, {self.train_images_per_s:,.0f} train images/s"
                + (f"; worker group restarted {plural(self.restarts, 'time')}" if self.restarts else ""),
                f"images {show_size(self.image['size'])} (HxW), {self.image['why']}, {self.image['resize']}",
                *table(head, rows),
                f"mean_auroc {number(self.mean_auroc)}",
                *(
                    [f"best epoch {self.best['epoch']}: mean_auroc {number(self.best['mean_auroc'])}"]
                    if self.best["epoch"] != self.epochs
                    else []
                ),
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
    resume_from: object | None = None,
):
    """The `TorchTrainer` of one run (a `Run`): `worker_loop` on `plan`'s workers, checkpoints under
    storage/name, starting from `source`'s weights when given (its state goes to the workers through the
    object store), or continuing from the Ray checkpoint `resume_from` when the run has none of its own."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    init = None if source is None else InitWeights(ray.put(source.state), source.tasks, source.lineage)
    cached = inputs.cached(plan.object_store_bytes)
    in_worker = device_decode.in_worker(cfg.decode, inputs.train.fmt.encoding, plan.use_gpu, cfg.strict, cached)
    inbox = new_inbox()
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "spec": WorkerSpec(
                train=cfg,
                batch_format=dataset.decoded_format(inputs.train.fmt, inputs.size),
                encoded_format=inputs.train.fmt if in_worker else None,
                torch_threads=plan.torch_threads,
                train_rows=inputs.train_rows,
                val_rows=inputs.val_rows(),
                init=init,
                inbox=inbox,
                start=resume_from,
            )
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=plan.num_workers,
            use_gpu=plan.use_gpu,
            resources_per_worker=plan.resources_per_worker,
            placement_strategy="SPREAD" if plan.spread else "PACK",
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
        # This process's options (`configure_data`: in order): the controller that splits the rows
        # would otherwise apply its own process's defaults.
        dataset_config=ray.train.DataConfig(
            datasets_to_split=["train"], execution_options=ray.data.DataContext.get_current().execution_options
        ),
    )
    return Run(trainer, inbox)


def result_from_checkpoint(
    directory: str, *, name: str, location: str, seconds: float, size_reason: str = "from the checkpoint"
) -> TrainResult:
    """A `TrainResult` from a checkpoint directory's `meta.json`."""
    meta = checkpoint.load_meta(directory)
    metrics = meta["metrics"]
    size, resize = checkpoint.input_spec(meta)
    params = sum(p.numel() for p in checkpoint.network(meta).parameters())
    return TrainResult(
        name=name,
        tasks=meta["tasks"],
        groups=meta.get("groups"),
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
    from mtl_ray.registry.sources import resolve_init

    if cfg.init is None:
        return cfg, None
    source = resolve_init(cfg.init, cfg.backbone)
    return init_settings(cfg, source), source


def init_settings(cfg: TrainConfig, source: InitSource) -> TrainConfig:
    """`cfg` with `source`'s backbone, image size and resize mode: a run that starts from another model
    takes them; one of them set explicitly to something else is an error naming both."""
    taken: dict = {"backbone": source.backbone, **({"heads": source.heads} if source.tasks else {})}
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
    shared = {"--data": inputs.data, "--val": val, "--storage": storage_path or DEFAULT_STORAGE}
    check_shared(shared, cfg.storage_shared)
    plan, wait = when_ready_to_train(cfg)
    run_name = name or f"train-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = build_trainer(
        inputs, cfg, plan, name=run_name, storage_dir=storage_dir, storage_fs=storage_fs, source=source
    )
    watch = RunProgress(run_name, cfg.epochs)
    started = time.perf_counter()
    result = trainer.fit(on_epoch=watch, watch=NodeWatch(run_name, plan, wait))
    seconds = time.perf_counter() - started
    with result.checkpoint.as_directory() as d:
        location = f"{shown}{result.checkpoint.path}"
        done = result_from_checkpoint(
            d, name=run_name, location=location, seconds=seconds, size_reason=inputs.size_reason
        )
    return replace(done, first_epoch=watch.first_epoch or done.first_epoch, restarts=watch.restarts)


def when_ready_to_train(cfg: TrainConfig, reserve_cpus: float = 0.0) -> tuple[ResourcePlan, float]:
    """The run's workers on the cluster as it is, or as it grows within the wait (`capacity`), each
    node's CPUs less `reserve_cpus` (a Tune trial's driver); the wait."""
    wait = wait_s(cfg.resource_wait_s)
    low = cfg.workers[0] if isinstance(cfg.workers, tuple) else cfg.workers or 1
    ask = {"GPU": 1.0, "CPU": GPU_WORKER_CPUS} if cfg.gpu else {"CPU": 1.0}

    def make(nodes: list[dict[str, float]]) -> ResourcePlan:
        return plan_resources(cfg, [{**n, "CPU": float(n.get("CPU", 0)) - reserve_cpus} for n in nodes])

    return when_ready(make, wait, [ask] * low), wait
