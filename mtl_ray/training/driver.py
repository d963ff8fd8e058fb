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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import ray

from mtl_ray import progress
from mtl_ray.cluster.inbox import Inbox, reported
from mtl_ray.cluster.resources import ResourcePlan, plan_resources
from mtl_ray.cluster.runtime import ensure_ray, run_storage
from mtl_ray.config import TrainConfig
from mtl_ray.data.images import show_size
from mtl_ray.errors import UserError
from mtl_ray.model import checkpoint
from mtl_ray.model.backbones import build
from mtl_ray.result import Result, number, table
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

    def fit(self, on_epoch: Callable[[dict], None] | None = None):
        """`trainer.fit()`, with a worker's user error raised here as one `UserError`; `on_epoch` is
        called on this process with each epoch's report while the run goes on."""
        return reported(self.inbox, on_epoch, self.trainer.fit, lambda result: result.error)


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
    (tasks: Ray Data tasks; worker: the training worker, `mtl_ray.device_decode`)}"""
    skipped_images: int = 0
    init: dict | None = None
    """Where the first weights came from (`TrainConfig.init`): URI, resolved version, heads kept."""
    history: list[dict] = field(default_factory=list)
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

    init = None if source is None else InitWeights(ray.put(source.state), source.tasks, source.lineage)
    cached = inputs.cached(plan.object_store_bytes)
    in_worker = device_decode.in_worker(cfg.decode, inputs.train.fmt.encoding, plan.use_gpu, cfg.strict, cached)
    inbox = Inbox.remote()
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
            )
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
    from mtl_ray.registry.sources import resolve_init

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

