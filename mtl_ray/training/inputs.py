"""A run's inputs, checked on the driver before Ray starts: which shards and rows it trains and
validates on, and the image size (`prepare` → `Inputs`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from mtl_ray.config import TrainConfig
from mtl_ray.data import storage
from mtl_ray.data.validate import ValidationReport, validate
from mtl_ray.errors import UserError
from mtl_ray.model.checks import check_model_config
from mtl_ray.training import dataset


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
        return {"path": profile["source"], "split": None if profile["split"] == "all" else profile["split"]}

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
    size (`cfg.image_size`, else `ValidationReport.training_size`). See `fit` for the keywords. Local
    paths are made absolute here, on the driver (`storage.absolute`)."""
    data, val = storage.absolute(data), val and storage.absolute(val)
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
    check_model_config(cfg, list(train_src.fmt.tasks), size)
    labeled = report.labeled_in("train")
    rows = max(labeled[t] for t in train_src.fmt.tasks) if labeled_only else report.rows_in("train")
    rows = len(ids) if ids is not None else rows
    profiles = {"training": report.profile("train"), "validation": val_profile}
    for profile in profiles.values():
        profile["tasks"] = {t: profile["tasks"][t] for t in train_src.fmt.tasks}
    return Inputs(data, train_src, val_src, size, reason, rows, profiles)
