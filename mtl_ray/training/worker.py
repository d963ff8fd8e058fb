"""1. The Ray Train worker loop: what every worker of a run does.

`worker_loop` is the `train_loop_per_worker` of every run's `TorchTrainer` (`mtl_ray.training.driver`),
fed one frozen `WorkerSpec`. `WorkerLoop` holds a worker's state and runs it in the stages of Ray's
benchmark `TrainLoopRunner`: `restore` (the last checkpoint of a resumed run), `train_epoch` (the
worker's stream of the `train` dataset through `mtl_ray.model.step.train_step`), `validate` (rank 0
only) and `save` (a checkpoint from rank 0 and one `ray.train.report` from every rank, as Ray Train
requires of all workers). What the workers tell the driver while it waits (each epoch's numbers, the
first user error) goes to the run's `mtl_ray.cluster.inbox.Inbox` actor.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import ray
import torch

from mtl_ray import progress
from mtl_ray.config import TrainConfig
from mtl_ray.data.shards import ShardFormat
from mtl_ray.errors import UserError
from mtl_ray.model import checkpoint
from mtl_ray.model.backbones import unwrap
from mtl_ray.model.metrics import evaluate, mean_auroc, patience_spent
from mtl_ray.model.partition import indices, network, partition_of
from mtl_ray.model.step import (
    all_reduce_sum,
    diverged,
    epoch_lr,
    mean_over_workers,
    predict_batches,
    train_step,
    whole_batches,
)
from mtl_ray.model.weighting import get as get_weighting
from mtl_ray.training import dataset, device_decode

STEP_KEY = "step_in_epoch"
"""Marks a report made inside an epoch (a step checkpoint): it has no epoch metrics, and Tune's
scheduler and the progress and MLflow callbacks pass it by."""


@dataclass(frozen=True)
class InitWeights:
    """A run's first weights (`TrainConfig.init`): the source model's state in the object store, the
    tasks its heads predict, and the lineage the run's checkpoints record."""

    state: ray.ObjectRef
    tasks: list[str]
    lineage: dict


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a run's workers are given, the same for each of them."""

    train: TrainConfig
    batch_format: ShardFormat
    """Training batches as the step takes them: raw RGB pixels at the training size."""
    encoded_format: ShardFormat | None
    """The shards' own format when the worker decodes their JPEGs (`mtl_ray.training.device_decode`)."""
    torch_threads: int
    train_rows: int
    val_rows: dict
    """Where the validation rows are ({"path", "split"}), kept in every checkpoint for the alias gate."""
    init: InitWeights | None
    inbox: ray.actor.ActorHandle
    start: object | None = None
    """A checkpoint of another run (a `ray.train.Checkpoint`) to continue from while this run has none of
    its own: a PBT trial taking a top trial's. Train V2 refuses `resume_from_checkpoint`."""


def worker_loop(config: dict) -> None:
    """Ray Train's entry point on every worker (`train_loop_config={"spec": WorkerSpec}`).

    A user error (bad input, a diverging run) is kept in the run's `Inbox` before it fails the group.
    """
    spec: WorkerSpec = config["spec"]
    if ray.get(spec.inbox.first.remote()) is not None:
        return  # a group restarted after a user error: the same input would only fail again
    try:
        WorkerLoop(spec).run()
    except UserError as exc:
        ray.get(spec.inbox.put.remote(str(exc)))
        raise


class WorkerLoop:
    """One worker's model, task weighting and optimizer, and the stages it goes through."""

    def __init__(self, spec: WorkerSpec):
        import ray.train
        import ray.train.torch

        self.spec = spec
        self.cfg = cfg = spec.train
        self.tasks = list(spec.batch_format.tasks)
        torch.set_num_threads(spec.torch_threads)
        torch.manual_seed(cfg.seed)
        self.rank = ray.train.get_context().get_world_rank()
        self.device = ray.train.torch.get_device()
        self.groups = partition_of(cfg.groups, self.tasks)
        self.model = network(cfg.backbone, self.tasks, cfg.heads, self.groups, channels_last=True)
        self.lineage = None
        if spec.init is not None:
            kept = self.model.load_initial(ray.get(spec.init.state), spec.init.tasks, self.tasks)
            self.lineage = {**spec.init.lineage, "tasks": spec.init.tasks, "heads_kept": kept}
        if cfg.trunk == "freeze":
            self.model.trunk.requires_grad_(False)
        self.weighting = get_weighting(
            cfg.weighting.name,
            len(self.tasks),
            mean_over_workers,
            indices(self.groups, self.tasks) if self.groups else None,
            **cfg.weighting.params(),
        ).to(self.device)
        self.optimizer = self._optimizer()
        self.start_epoch, self.first_epoch, self.history, self.resumes = 0, 1, [], []
        self.collate = dataset.ShardCollate(spec.batch_format)
        self.train_collate = dataset.ShardCollate(spec.encoded_format) if spec.encoded_format else self.collate

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the trunk (or the groups' trunks; at `trunk_lr_scale` × lr when it came from an init),
        the heads, and the weighting's own parameters (without weight decay, which would pull them toward 0)."""
        groups = [
            {
                "params": [p for p in self.model.shared_parameters() if p.requires_grad],
                "lr_scale": self.cfg.trunk_lr_scale if self.spec.init is not None else 1.0,
            },
            {"params": list(self.model.task_parameters()), "lr_scale": 1.0},
        ]
        if list(self.weighting.parameters()):
            groups.append({"params": list(self.weighting.parameters()), "weight_decay": 0.0, "lr_scale": 1.0})
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def run(self) -> None:
        import ray.train
        import ray.train.torch

        if self.restore():
            return
        self.model = ray.train.torch.prepare_model(self.model)
        self.train_shard = ray.train.get_dataset_shard("train")
        self.val_shard = ray.train.get_dataset_shard("val")
        for epoch in range(self.start_epoch, self.cfg.epochs):
            metrics, skipped = self.train_epoch(epoch)
            if self.rank == 0:
                metrics.update(self.validate(skipped))
                self.history.append(metrics)
                self.spec.inbox.report.remote({k: metrics[k] for k in progress.EPOCH_KEYS})
            self.save(epoch + 1, metrics)
            if self.stopping():
                break

    def stopping(self) -> bool:
        """Early stopping (`TrainConfig.patience`), decided by rank 0, which holds the validation
        metrics, and taken by every rank."""
        if self.cfg.patience is None:
            return False
        return all_reduce_sum([float(self.rank == 0 and patience_spent(self.history, self.cfg.patience))])[0] > 0

    def restore(self) -> bool:
        """Take up the last checkpoint of a resumed run, else the `start` checkpoint it was given; True
        when that run had already finished (a resumed Tune trial), whose result is then reported once
        more, for Tune."""
        import ray.train

        resumed = ray.train.get_checkpoint() or self.spec.start
        if not resumed:
            self._report_start(0, 0)
            return False
        with resumed.as_directory() as d:
            state, meta = checkpoint.load(d)
        self.model.load_state_dict(state["model"])
        self.weighting.load_state_dict(state["weighting"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch, self.history, self.resumes = state["epoch"], meta["history"], meta.get("resumes", [])
        self.first_epoch = self.start_epoch + 1
        self.resumes.append({"epoch": self.start_epoch + 1, "step": meta.get("step", 0)})
        self._report_start(self.start_epoch, meta.get("step", 0))
        if self.start_epoch >= self.cfg.epochs or patience_spent(self.history, self.cfg.patience):
            ray.train.report(meta["metrics"], checkpoint=resumed if self.rank == 0 else None)
            return True
        return False

    def _report_start(self, epoch: int, step: int) -> None:
        """Rank 0 tells the driver the group started, from which checkpoint, with how many workers."""
        import ray.train

        if self.rank == 0:
            workers = ray.train.get_context().get_world_size()
            self.spec.inbox.report.remote({"started": {"epoch": epoch, "step": step, "workers": workers}})

    def _stream(self, epoch: int):
        """This worker's batches of the epoch, locally shuffled by seed, epoch and rank."""
        cfg, encoded = self.cfg, self.spec.encoded_format
        shuffle = {}
        if cfg.shuffle_buffer:
            shuffle = {
                "local_shuffle_buffer_size": cfg.shuffle_buffer,
                "local_shuffle_seed": hash((cfg.seed, epoch, self.rank)) % 2**31,
            }
        stream = self.train_shard.iter_torch_batches(
            batch_size=cfg.batch_size,
            collate_fn=self.train_collate,
            device="cpu" if encoded else self.device,
            **shuffle,
        )
        if encoded:
            size = tuple(self.spec.batch_format.shape[:2])
            stream = device_decode.DecodeOnDevice(stream, size, cfg.resize, self.device)
        return whole_batches(stream)

    def train_epoch(self, epoch: int) -> tuple[dict, int]:
        """One pass over this worker's stream: (the epoch's metrics summed over workers, images skipped)."""
        cfg = self.cfg
        self.model.train()
        if cfg.trunk == "freeze":
            unwrap(self.model).trunk.eval()  # a kept trunk keeps its batch-norm statistics too
        for group in self.optimizer.param_groups:
            group["lr"] = epoch_lr(cfg, epoch) * group["lr_scale"]
        seen, loss_sum, batches, skipped, nonfinite, in_a_row = 0, 0.0, 0, 0, 0, 0
        terms_sum = torch.zeros(len(self.tasks), device=self.device)
        started = time.perf_counter()
        for step, batch in enumerate(self._stream(epoch), start=1):
            loss, terms, taken = train_step(
                self.model,
                self.optimizer,
                self.weighting,
                batch["image"],
                batch["labels"],
                self.device,
                cfg.loss_reduction,
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
                self.save(epoch, {STEP_KEY: step, "epochs_done": epoch}, step)
        elapsed = time.perf_counter() - started
        total_seen, total_loss, total_batches, total_skipped, total_nonfinite = all_reduce_sum(
            [seen, loss_sum, batches, skipped, nonfinite]
        )
        self.weighting.epoch_end(terms_sum / max(batches, 1))
        metrics = {
            "epoch": epoch + 1,
            "train_loss": total_loss / max(total_batches, 1),
            "train_images_per_s": total_seen / max(elapsed, 1e-9),
            "nonfinite_steps": int(total_nonfinite),
            "task_weights": dict(zip(self.tasks, self.weighting.weights(), strict=True)),
        }
        return metrics, int(total_skipped)

    def validate(self, train_skipped: int) -> dict:
        """Rank 0: per-task metrics on the `val` dataset, and the images skipped in the epoch."""
        batches = dataset.CountSkipped(
            self.val_shard.iter_torch_batches(batch_size=max(self.cfg.batch_size, 256), collate_fn=self.collate)
        )
        probs, targets = predict_batches(unwrap(self.model), batches, self.device, autocast=self.device.type == "cuda")
        per_task = evaluate(probs, targets, self.tasks)
        return {"mean_auroc": mean_auroc(per_task), "val": per_task, "skipped_images": train_skipped + batches.skipped}

    def save(self, epochs_done: int, metrics: dict, step: int = 0) -> None:
        """Rank 0 writes a checkpoint (after `epochs_done` whole epochs and `step` steps of the next)
        and every rank reports, as Ray Train requires of all workers."""
        import ray.train

        if self.rank != 0:
            ray.train.report(metrics)
            return
        cfg, spec = self.cfg, self.spec
        meta = {
            "epoch": epochs_done,
            "step": step,
            "first_epoch": self.first_epoch,
            "tasks": self.tasks,
            "backbone": cfg.backbone,
            **({"heads": cfg.heads} if cfg.heads != "linear" else {}),
            **({"groups": self.groups} if self.groups else {}),
            "config": cfg.model_dump(),
            "image": {"size": list(spec.batch_format.shape[:2]), "channels": 3, "resize": cfg.resize},
            "data": {
                "train_rows": spec.train_rows,
                "val": spec.val_rows,
                "decode": "worker" if spec.encoded_format else "tasks",
            },
            "init": self.lineage,
            "metrics": metrics if not step else (self.history[-1] if self.history else {}),
            "history": self.history,
            "resumes": self.resumes,
        }
        with tempfile.TemporaryDirectory() as d:
            checkpoint.save(d, unwrap(self.model), self.weighting, self.optimizer, meta)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
