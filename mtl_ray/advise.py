"""`mtl-ray advise`: the three conditions under which multi-task learning pays off, measured.

1. **shared_features** — the other tasks teach features the task you care about can use: a trunk
   trained on the other tasks only, then a logistic-regression probe on that task's own labels
   (over the pooled output of every stage of the trunk), against a single-task network trained on
   the same labels for as many steps. "yes" when the probe wins: what the other tasks learned is
   worth more to this task than its own labels can teach, which is what Caruana's shuffle control
   in `mtl-ray compare` then confirms. The cosine between the tasks' gradients on the shared trunk
   is a second, cheaper reading (positive: they pull it the same way).
2. **data_amounts** — the other tasks together hold much more data than the task you care about:
   labeled counts per task and how many labels the other tasks add (from the validator's table).
3. **capacity** — the shared network must be big enough: for the task with the fewest labels,
   the multi-task minus single-task AUROC gap in short probes with a small and a bigger
   backbone. "yes" means size matters here (the gap grows with the bigger backbone).

The probes train in this process on a sample of the shards (no Ray): they are a quick reading,
not a verdict; `mtl-ray compare` is the full measurement.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from mtl_ray import progress, tracking
from mtl_ray.errors import UserError
from mtl_ray.losses import task_terms
from mtl_ray.metrics import task_metrics
from mtl_ray.models import build, to_input
from mtl_ray.shards import SPLIT_COLUMN, decode_column, labels_of, open_shard, split_mask
from mtl_ray.step import train_step
from mtl_ray.text import number
from mtl_ray.validate import ValidationReport, validate
from mtl_ray.weighting import get as get_weighting

PROBE_ROWS = 2048
PROBE_STEPS = 300
PROBE_BATCH = 32
PROBE_BACKBONE = "s"
SMALL, BIG = "xs", "m"
MANY_MORE = 5.0
"""Other tasks' labels per own label from which the data-amount condition holds."""
PROBE_MARGIN = 0.01
"""AUROC by which the probe must beat the single-task network for a "yes" ("weak" within 0.02 below)."""


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


def probe_fit(backbone: str, images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int = 0) -> torch.nn.Module:
    """A few hundred steps of plain in-process training (equal weighting, `sqrt` reduction) on the
    rows with any known label."""
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
        train_step(model, optimizer, weighting, images[idx], labels[idx], torch.device("cpu"), "sqrt")
    return model.eval()


def _auroc(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, output: int = 0) -> float | None:
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


def data_amounts(labeled: dict[str, int]) -> dict[str, dict]:
    """Per task: own labels, the other tasks' labels, and their ratio."""
    total = sum(labeled.values())
    return {
        t: {"labeled": n, "others_labeled": total - n, "ratio": (total - n) / n if n else None}
        for t, n in labeled.items()
    }


@dataclass
class Advice:
    """Verdict and evidence per condition, and what to do about it."""

    conditions: dict[str, dict]
    recommendation: str
    tracking: dict[str, str] | None = None
    """This advice's own MLflow run ({"run_id", "uri"}), or {"error"} when logging it failed."""
    exit_code: int = 0

    def to_json(self) -> dict:
        return {"conditions": self.conditions, "recommendation": self.recommendation, "tracking": self.tracking}

    def render(self) -> str:
        lines = [f"{name:<16} {c['verdict']:<4} {c['summary']}" for name, c in self.conditions.items()]
        return "\n".join([*lines, f"recommendation: {self.recommendation}", *tracking.result_line(self.tracking)])


def advise(
    data: str,
    *,
    rows: int = PROBE_ROWS,
    steps: int = PROBE_STEPS,
    size: tuple[int, int] | None = None,
    track: bool = False,
) -> Advice:
    """Measure the three conditions on the shards at `data` (see the module docstring); `track` logs
    the advice as an MLflow run of its own (`tracking.log_result_run`)."""
    report = validate(data)
    report.raise_if_unusable()
    tasks = list(report.fmt.tasks)
    if len(tasks) < 2:
        raise UserError(f"{data}: one task only; multi-task learning needs at least two")
    size = size or report.training_size()[0]
    labeled = report.labeled_in("train")
    focus = min(labeled, key=labeled.get)
    j = tasks.index(focus)
    others = [k for k in range(len(tasks)) if k != j]

    amounts = data_amounts(labeled)
    ratio = amounts[focus]["ratio"] or 0.0
    data_verdict = "yes" if ratio >= MANY_MORE else "weak" if ratio >= 1 else "no"

    images, labels = load_sample(report, "train", rows, size)
    focus_images, focus_labels = load_sample(report, "train", rows, size, labeled=focus)
    val_split = "val" if report.rows_in("val") else "train"
    val_images, val_labels = load_sample(report, val_split, rows // 2, size)

    progress.say(f"advise 1/4: a trunk trained on the other tasks, probed for {focus}")
    trunk = probe_fit(PROBE_BACKBONE, images, labels[:, others], steps)
    probe_auroc = linear_probe(trunk, focus_images, focus_labels[:, j], val_images, val_labels[:, j])
    alone = _auroc(probe_fit(PROBE_BACKBONE, focus_images, focus_labels[:, [j]], steps), val_images, val_labels[:, j])
    if probe_auroc is None or alone is None:
        shared_verdict = "weak"
    else:
        shared_verdict = (
            "yes"
            if probe_auroc >= alone + PROBE_MARGIN
            else "weak"
            if probe_auroc >= alone - 2 * PROBE_MARGIN
            else "no"
        )
    progress.say(f"advise 2/4: gradient cosines between tasks ({SMALL})")
    multi = probe_fit(SMALL, images, labels, steps)
    cosines = gradient_cosines(multi, val_images[:256], val_labels[:256], tasks)
    mean_cos = float(np.mean(list(cosines.values()))) if cosines else 0.0

    gaps = {}
    for step, backbone in enumerate((SMALL, BIG), start=3):
        progress.say(f"advise {step}/4: multi-task against single-task on {focus}, backbone {backbone}")
        mtl = _auroc(
            multi if backbone == SMALL else probe_fit(backbone, images, labels, steps), val_images, val_labels[:, j], j
        )
        stl = _auroc(probe_fit(backbone, focus_images, focus_labels[:, [j]], steps), val_images, val_labels[:, j])
        gaps[backbone] = {"mtl_auroc": mtl, "stl_auroc": stl, "gap": None if mtl is None or stl is None else mtl - stl}
    small_gap, big_gap = gaps[SMALL]["gap"], gaps[BIG]["gap"]
    capacity_verdict = "yes" if small_gap is not None and big_gap is not None and big_gap > small_gap + 0.01 else "no"

    probe_summary = (
        f"{focus}: a linear probe on a trunk trained on the other tasks scores AUROC "
        f"{number(probe_auroc)} with its {int((~torch.isnan(focus_labels[:, j])).sum())} labels, a "
        f"single-task network {number(alone)}; gradient cosine between tasks {mean_cos:+.3f}"
    )
    conditions = {
        "shared_features": {
            "verdict": shared_verdict,
            "evidence": {
                "focus": focus,
                "probe_auroc": probe_auroc,
                "stl_auroc": alone,
                "labels": int((~torch.isnan(focus_labels[:, j])).sum()),
                "backbone": PROBE_BACKBONE,
                "steps": steps,
                "mean_cosine": mean_cos,
                "pairs": cosines,
            },
            "summary": probe_summary,
        },
        "data_amounts": {
            "verdict": data_verdict,
            "evidence": {"focus": focus, "tasks": amounts},
            "summary": f"{focus} has {labeled[focus]:,} labels; the other tasks add "
            f"{amounts[focus]['others_labeled']:,} ({ratio:.1f}x)",
        },
        "capacity": {
            "verdict": capacity_verdict,
            "evidence": {"focus": focus, "probes": gaps, "steps": steps},
            "summary": f"{focus}: multi-task minus single-task AUROC {number(small_gap, '+.3f')} with {SMALL}, "
            f"{number(big_gap, '+.3f')} with {BIG}",
        },
    }
    advice = Advice(conditions, _recommend(shared_verdict, data_verdict, capacity_verdict, focus))
    if track:
        verdicts = {f"{name}.verdict": c["verdict"] for name, c in conditions.items()}
        advice.tracking = tracking.log_result_run(
            "advise",
            advice.to_json(),
            advice.render(),
            params={"data": data, "rows": rows, "steps": steps, "focus": focus, **verdicts},
        )
    return advice


def _recommend(shared: str, amounts: str, capacity: str, focus: str) -> str:
    if shared == "no":
        return (
            f"the other tasks teach {focus} less than its own labels do: expect little from sharing; "
            "train separate networks, or check with mtl-ray compare --control shuffle"
        )
    if amounts == "no":
        return (
            f"{focus} already has as many labels as the other tasks together: expect little from sharing; "
            "confirm with mtl-ray compare"
        )
    advice = f"multi-task learning is likely to help {focus}; confirm with mtl-ray compare --control shuffle"
    if capacity == "yes":
        advice += f" and prefer a backbone of at least {BIG}"
    return advice
