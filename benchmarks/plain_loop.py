"""The floor a user checks mtl-ray against: twenty lines of PyTorch on the same files.

The training rows read into memory once (`mtl_ray.studies.probes.load_sample`), the same backbone
size, AdamW at a constant learning rate, the same epochs and batch size, the masked BCE mean over
the known labels (`masked_bce`'s "labeled" reduction; multi-task) or one task's labeled rows only
(single-task), one process, no Ray. Validation AUROC per task by scikit-learn, as mtl-ray reports it.
"""

from __future__ import annotations

import torch

from mtl_ray.data.validate import validate
from mtl_ray.model.backbones import build, to_input
from mtl_ray.model.losses import masked_bce
from mtl_ray.model.metrics import evaluate, mean_auroc
from mtl_ray.model.step import predict_batches
from mtl_ray.studies.probes import load_sample

LR = 1e-3
ROWS = 10**9


def fit(data: str, tasks: list[str] | None = None, *, backbone: str, epochs: int, batch_size: int, seed: int) -> dict:
    """Train on `data`'s training rows (only `tasks`, on rows that know one of them, when given) and
    return {"val": per-task metrics, "mean_auroc": …, "epochs": [mean AUROC after each epoch]}."""
    report = validate(data)
    size = tuple(report.fmt.shape[:2])
    names = list(report.fmt.tasks)
    columns = [names.index(t) for t in tasks] if tasks else list(range(len(names)))
    images, labels = load_sample(report, "train", ROWS, size)
    labels = labels[:, columns]
    keep = ~torch.isnan(labels).all(dim=1)
    images, labels = images[keep], labels[keep]
    val_images, val_labels = load_sample(report, "val", ROWS, size)
    val_labels = val_labels[:, columns]
    torch.manual_seed(seed)
    model = build(backbone, len(columns))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    order = torch.Generator().manual_seed(seed)
    curve = []
    for _ in range(epochs):
        model.train()
        for rows in torch.randperm(len(images), generator=order).split(batch_size):
            if len(rows) < 2:
                continue
            loss = masked_bce(model(to_input(images[rows])), labels[rows], reduction="labeled")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        batches = ({"image": x, "labels": y} for x, y in zip(val_images.split(256), val_labels.split(256), strict=True))
        metrics = evaluate(
            *predict_batches(model, batches, torch.device("cpu"), autocast=False), [names[c] for c in columns]
        )
        curve.append(mean_auroc(metrics))
    return {"val": metrics, "mean_auroc": curve[-1], "epochs": curve}
