"""Short in-process probes of what a trunk has learned, without Ray: a sample of shard rows as
tensors, a few hundred plain training steps, per-task gradient cosines, and a linear probe on the
pooled output of every trunk stage. `mtl-ray advise` and `mtl-ray transfer` read the data with them."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from mtl_ray.config import TrainConfig
from mtl_ray.data.shards import SPLIT_COLUMN, decode_column, labels_of, open_shard, split_mask
from mtl_ray.data.validate import ValidationReport
from mtl_ray.errors import UserError
from mtl_ray.model.backbones import build, to_input
from mtl_ray.model.losses import task_terms
from mtl_ray.model.metrics import task_metrics
from mtl_ray.model.step import train_step
from mtl_ray.model.weighting import get as get_weighting

PROBE_BATCH = 32
REDUCTION = TrainConfig().loss_reduction
"""The product's loss reduction, so that a probe trains as `mtl-ray train` does by default."""


def load_sample(
    report: ValidationReport, split: str, rows: int, size: tuple[int, int], labeled: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `rows` rows of one split (training rows include unassigned ones) as uint8 images at `size`
    (letterboxed) and labels, only rows where task `labeled` is known if given; rows whose image
    cannot be read are left out, as training leaves them."""
    fmt = report.fmt
    images, labels, have = [], [], 0
    for shard in report.shards:
        pf = open_shard(report.fs, shard.path, shard.name)
        names = pf.schema_arrow.names
        columns = [fmt.image_column, *fmt.tasks] + ([SPLIT_COLUMN] if SPLIT_COLUMN in names else [])
        for batch in pf.iter_batches(batch_size=256, columns=columns):
            if SPLIT_COLUMN in names:
                batch = batch.filter(split_mask(batch.column(SPLIT_COLUMN), split))
            if labeled is not None:
                batch = batch.filter(batch.column(labeled).is_valid())
            if batch.num_rows == 0:
                continue
            decoded = decode_column(batch.column(fmt.image_column), fmt, size)
            images.append(decoded.images[~decoded.bad])
            labels.append(labels_of(batch, fmt.tasks, where=shard.name)[~decoded.bad])
            have += int((~decoded.bad).sum())
            if have >= rows:
                break
        if have >= rows:
            break
    if not have:
        raise UserError(f"{report.path}: no rows in split {split!r} to probe")
    return torch.from_numpy(np.concatenate(images)[:rows]), torch.from_numpy(np.concatenate(labels)[:rows])


def probe_fit(
    backbone: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    seed: int = 0,
    reduction: str = REDUCTION,
) -> torch.nn.Module:
    """A few hundred steps of plain in-process training (equal weighting) on the rows with any known
    label."""
    torch.manual_seed(seed)
    rows = ~torch.isnan(labels).all(dim=1)
    images, labels = images[rows], labels[rows]
    model = build(backbone, labels.shape[1], channels_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    weighting = get_weighting("equal", labels.shape[1])
    order = torch.randperm(len(images))
    model.train()
    for step in range(steps):
        idx = order[(step * PROBE_BATCH) % len(order) :][:PROBE_BATCH]
        train_step(model, optimizer, weighting, images[idx], labels[idx], torch.device("cpu"), reduction)
    return model.eval()


def auroc_of(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, output: int = 0) -> float | None:
    """AUROC of the model's `output` column against `labels` [N] (NaN = unknown)."""
    with torch.no_grad():
        scores = torch.sigmoid(model(to_input(images, channels_last=True)))[:, output].numpy()
    return task_metrics(scores, labels.numpy().astype(np.float64))["auroc"]


def gradient_cosines(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, tasks: list[str]
) -> dict[str, float]:
    """Pairwise cosine of per-task gradients on the shared trunk, for tasks with known labels."""
    shared = [p for p in model.shared_parameters() if p.requires_grad]
    terms = task_terms(model(to_input(images, channels_last=True)), labels, "per_task")
    known = (~torch.isnan(labels)).any(dim=0)
    grads = {}
    for j, task in enumerate(tasks):
        if known[j]:
            g = torch.autograd.grad(terms[j], shared, retain_graph=True, allow_unused=True)
            grads[task] = torch.cat(
                [(torch.zeros_like(p) if x is None else x).reshape(-1) for p, x in zip(shared, g, strict=True)]
            )
    return {
        f"{a}~{b}": float(torch.nn.functional.cosine_similarity(grads[a], grads[b], dim=0))
        for a, b in itertools.combinations(grads, 2)
    }


def stage_features(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    """The pooled output of every stage of the trunk, concatenated: [N, Σ stage widths].

    Late stages alone hold what the trunk's own tasks needed; earlier ones keep the general parts
    (edges, colours, lamps) another task can build on.
    """
    pooled: list[torch.Tensor] = []
    hooks = [s.register_forward_hook(lambda m, i, out: pooled.append(out.mean(dim=(2, 3)))) for s in model.stages()]
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), 256):
                pooled.clear()
                model.trunk(to_input(images[start : start + 256], channels_last=True))
                out.append(torch.cat(pooled, dim=1).numpy())
    finally:
        for hook in hooks:
            hook.remove()
    return np.concatenate(out)


def linear_probe(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
) -> float | None:
    """Validation AUROC of a logistic regression on `stage_features`, fitted on the known `labels` [N]."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    known = ~torch.isnan(labels)
    y = labels[known].numpy().astype(int)
    if len(set(y.tolist())) < 2:
        return None
    scaler = StandardScaler().fit(stage_features(model, images[known]))
    fitted = LogisticRegression(C=0.1, max_iter=3000).fit(scaler.transform(stage_features(model, images[known])), y)
    scores = fitted.predict_proba(scaler.transform(stage_features(model, val_images)))[:, 1]
    return task_metrics(scores, val_labels.numpy().astype(np.float64))["auroc"]
