"""`mtl-ray transfer`: does starting from a trained model pay off for a new, small task? The curve.

The lecture sets transfer learning beside multi-task learning: learn task A where data is plentiful,
then fine-tune on task B where it is scarce. It pays off when A and B take the same kind of input,
A has much more data than B, and A's low-level features help B. Here A is any model mtl-ray trained
(`models:/NAME@ALIAS` from the registry, a checkpoint, or ImageNet weights) and B the user's shards.

For each label budget — a deterministic subset of B's labeled training rows, chosen by a hash of
the row id so that 25 rows are among the 50 — B's tasks are trained twice, from scratch and from the
source (`TrainConfig.init`), with the same backbone, image size and number of optimisation steps
(every run streams as many rows per epoch as B has labeled rows). Over `seeds` runs each, the mean
and spread of the validation AUROC make the curve: AUROC against labels, both ways.

Before training, the lecture's three conditions are measured and any that fails is reported as a
warning (not a refusal): the source's input size against B's, how many images the source saw
against B's labels, and whether the source's features say anything about B at all (a linear probe
on the source trunk against one on an untrained trunk, with B's labels).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow.compute as pc

from mtl_ray import progress
from mtl_ray.config import TrainConfig
from mtl_ray.data.images import show_size
from mtl_ray.data.rows import by_row_hash
from mtl_ray.data.shards import ID_COLUMN, SPLIT_COLUMN, open_shard, split_mask
from mtl_ray.data.validate import ValidationReport, validate
from mtl_ray.errors import UserError
from mtl_ray.model.metrics import METRIC
from mtl_ray.result import Result, number, table
from mtl_ray.studies.stats import mean_std
from mtl_ray.training.driver import TrainResult, fit, init_settings

ALL = "all"
DEFAULT_LABELS = (25, 50, 100, ALL)
PROBE_ROWS = 1024
SCRATCH = {"trunk": "fine_tune", "trunk_lr_scale": 1.0}
"""With no source the whole network trains at lr, whatever the config says of a source's trunk."""
OVERLAP_MARGIN = 0.02
"""AUROC by which a probe on the source trunk must beat one on an untrained trunk to show overlap."""


def parse_labels(text: str) -> list[int | str]:
    """'25,50,all' → [25, 50, 'all']; budgets must be positive and ascending."""
    out: list[int | str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == ALL:
            out.append(ALL)
            continue
        try:
            value = int(part)
        except ValueError:
            value = 0
        if value < 1:
            raise UserError(f"--labels {text}: {part!r} is not a positive number of labels or 'all'")
        out.append(value)
    if not out:
        raise UserError(f"--labels {text}: expected budgets like 25,50,100,all")
    return out


def labeled_ids(report: ValidationReport, tasks: Sequence[str]) -> list[str]:
    """Ids of the training rows with a known label for any of `tasks`, in the order of a hash of the
    id: the first k of them are a label budget of k, the same on every run, nested across budgets."""
    ids = []
    for shard in report.shards:
        pf = open_shard(report.fs, shard.path, shard.name)
        names = pf.schema_arrow.names
        if ID_COLUMN not in names:
            raise UserError(
                f"{shard.name}: no {ID_COLUMN!r} column; label budgets pick rows by id "
                "(mtl-ray data convert writes one)"
            )
        table_ = pf.read(columns=[ID_COLUMN, *tasks] + ([SPLIT_COLUMN] if SPLIT_COLUMN in names else []))
        keep = (
            pc.or_(*[pc.is_valid(table_.column(t)) for t in tasks])
            if len(tasks) > 1
            else pc.is_valid(table_.column(tasks[0]))
        )
        if SPLIT_COLUMN in names:
            keep = pc.and_(keep, split_mask(table_.column(SPLIT_COLUMN), "train"))
        ids += table_.filter(keep).column(ID_COLUMN).to_pylist()
    return by_row_hash(ids)


@dataclass
class TransferPoint:
    """One label budget: the runs from scratch and from the source, one per seed."""

    labels: int | str
    rows: int
    scratch: list[TrainResult]
    transfer: list[TrainResult]

    def side(self, runs: list[TrainResult], tasks: list[str], several: bool) -> dict:
        """{TASK: auroc, mean: mean AUROC} as means over seeds, `*_std` beside them for several seeds."""
        out: dict = {}
        for key, get in [(t, lambda r, t=t: r.val[t][METRIC]) for t in tasks] + [("mean", lambda r: r.mean_auroc)]:
            mean, std = mean_std([get(r) for r in runs])
            out[key] = mean
            if several:
                out[f"{key}_std"] = std
        return out


@dataclass
class TransferResult(Result):
    """The curve: for each label budget, AUROC from scratch and from the source, and the warnings."""

    init: str
    lineage: dict
    tasks: list[str]
    seeds: int
    points: list[TransferPoint]
    warnings: list[str]
    checks: dict
    seconds: float
    plots: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        several = self.seeds > 1
        return {
            "init": self.init,
            "lineage": self.lineage,
            "tasks": self.tasks,
            "seeds": self.seeds,
            "points": [
                {
                    "labels": p.labels,
                    "rows": p.rows,
                    "scratch": p.side(p.scratch, self.tasks, several),
                    "transfer": p.side(p.transfer, self.tasks, several),
                }
                for p in self.points
            ],
            "conditions": self.checks,
            "warnings": self.warnings,
            "plots": self.plots,
            "seconds": self.seconds,
        }

    def render(self) -> str:
        several = self.seeds > 1

        def cell(side: dict) -> str:
            std = side.get("mean_std")
            return number(side["mean"]) + (f" ± {number(std)}" if several and std is not None else "")

        rows = []
        for p in self.to_json()["points"]:
            gain = (
                None
                if p["scratch"]["mean"] is None or p["transfer"]["mean"] is None
                else (p["transfer"]["mean"] - p["scratch"]["mean"])
            )
            rows.append(
                [str(p["labels"]), str(p["rows"]), cell(p["scratch"]), cell(p["transfer"]), number(gain, "+.3f")]
            )
        seeds = f", mean ± std over {self.seeds} seeds" if several else ""
        lines = [
            f"transfer from {self.init} to {', '.join(self.tasks)} ({METRIC}{seeds}, {self.seconds:.0f} s)",
            *table(["labels", "rows", "from scratch", "from init", "gain"], rows),
        ]
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"plot {p}" for p in self.plots]
        return "\n".join(lines)

    def write_plot(self, directory: str) -> str:
        """transfer.png: mean validation AUROC against labels, from scratch and from the source."""
        from mtl_ray import plots

        points = self.to_json()["points"]
        xs = [p["rows"] for p in points]
        lines = [
            plots.Line(f"from {label}", xs, [p[side]["mean"] for p in points], style, marker="o")
            for side, label, style in (("scratch", "scratch", "--"), ("transfer", self.init, "-"))
        ]
        return plots.curves(
            os.path.join(directory, "transfer.png"),
            lines,
            xlabel="labeled training rows",
            ylabel=f"validation {METRIC}",
            log_x=True,
            title=", ".join(self.tasks),
        )


def check_conditions(report: ValidationReport, source, tasks: list[str], labels: int) -> tuple[dict, list[str]]:
    """The lecture's conditions for transfer, measured before any training; failed ones as warnings."""
    warnings = []
    own_size, _ = report.training_size()
    checks: dict = {"input": {"source_size": list(source.size) if source.size else None, "data_size": list(own_size)}}
    if source.size is not None and tuple(source.size) != tuple(own_size):
        warnings.append(
            f"different input: the source was trained on {show_size(source.size)} (HxW) images, these "
            f"are {show_size(own_size)}; they will be resized to the source's size"
        )
    checks["amounts"] = {"source_images": source.train_rows, "labels": labels}
    if source.train_rows is not None and source.train_rows < labels:
        warnings.append(
            f"the source saw {source.train_rows:,} images, fewer than the {labels:,} labels here: transfer "
            "pays off when the source has far more data than the new task"
        )
    overlap = feature_overlap(report, source, tasks)
    checks["features"] = overlap
    if overlap["source_probe"] is not None and overlap["source_probe"] < overlap["untrained_probe"] + OVERLAP_MARGIN:
        warnings.append(
            f"little feature overlap: a linear probe on the source's trunk scores {METRIC} "
            f"{number(overlap['source_probe'])} for {overlap['task']}, one on an untrained trunk "
            f"{number(overlap['untrained_probe'])}"
        )
    return checks, warnings


def feature_overlap(report: ValidationReport, source, tasks: list[str]) -> dict:
    """A linear probe (as `mtl-ray advise` reads shared features) on the source trunk and on an
    untrained one of the same backbone, with the first task's labels on a sample of the data."""
    import torch

    from mtl_ray.model.backbones import build
    from mtl_ray.studies.probes import linear_probe, load_sample

    task = tasks[0]
    column = list(report.fmt.tasks).index(task)
    size = tuple(source.size) if source.size else report.training_size()[0]
    images, labels = load_sample(report, "train", PROBE_ROWS, size, labeled=task)
    val_split = "val" if report.rows_in("val") else "train"
    val_images, val_labels = load_sample(report, val_split, PROBE_ROWS // 2, size)
    trained = build(source.backbone, max(1, len(source.tasks)), channels_last=True, heads=source.heads)
    trained.load_initial(source.state, source.tasks, source.tasks)
    torch.manual_seed(0)
    untrained = build(source.backbone, 1, channels_last=True)
    probes = {
        name: linear_probe(model.eval(), images, labels[:, column], val_images, val_labels[:, column])
        for name, model in (("source_probe", trained), ("untrained_probe", untrained))
    }
    return {"task": task, **probes}


def transfer(
    data: str,
    init: str,
    *,
    labels: Sequence[int | str] = DEFAULT_LABELS,
    seeds: int = 1,
    config: TrainConfig | None = None,
    val: str | None = None,
    plots: str | None = None,
    storage_path: str | None = None,
) -> TransferResult:
    """Train `data`'s tasks from scratch and from `init` at each label budget; see the module docstring."""
    from mtl_ray.registry.sources import resolve_init

    if seeds < 1:
        raise UserError(f"--seeds {seeds}: expected a positive integer")
    started = time.perf_counter()
    base = config or TrainConfig()
    source = resolve_init(init, base.backbone)
    base = init_settings(base.model_copy(update={"init": init}), source)
    report = validate(data)
    report.raise_if_unusable()
    tasks = list(report.fmt.tasks)
    ranked = labeled_ids(report, tasks)
    if not ranked:
        raise UserError(f"{data}: no training row has a known label")
    budgets = [len(ranked) if k == ALL else k for k in labels]
    too_many = [k for k in budgets if k > len(ranked)]
    if too_many:
        raise UserError(f"--labels {too_many[0]}: {data} has only {len(ranked)} labeled training rows")
    checks, warnings = check_conditions(report, source, tasks, max(budgets))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    points = []
    for label, rows in zip(labels, budgets, strict=True):
        ids = frozenset(ranked[:rows])
        point = TransferPoint(label, rows, [], [])
        for k in range(seeds):
            for side, runs in (("scratch", point.scratch), ("transfer", point.transfer)):
                of = f"seed {k + 1}/{seeds}, " if seeds > 1 else ""
                progress.say(f"transfer {label} labels, {of}{'from scratch' if side == 'scratch' else 'from ' + init}")
                cfg = base.model_copy(
                    update={
                        "seed": base.seed + k,
                        "epoch_rows": len(ranked),
                        "init": init if side == "transfer" else None,
                        **({} if side == "transfer" else SCRATCH),
                    }
                )
                runs.append(
                    fit(
                        data,
                        val=val,
                        config=cfg,
                        storage_path=storage_path,
                        ids=ids,
                        name=f"transfer-{stamp}-{label}-{side}-s{cfg.seed}",
                        source=source if side == "transfer" else None,  # loaded once, above
                    )
                )
        points.append(point)
    result = TransferResult(
        init=init,
        lineage=source.lineage,
        tasks=tasks,
        seeds=seeds,
        points=points,
        warnings=warnings,
        checks=checks,
        seconds=time.perf_counter() - started,
    )
    if plots:
        result.plots = [result.write_plot(plots)]
    return result
