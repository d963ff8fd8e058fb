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

With `groups`, also which tasks should share a network: inter-task affinity from one short joint
run and the partition it recommends (`mtl_ray.studies.groups`).

The probes train in this process on a sample of the shards (no Ray): they are a quick reading,
not a verdict; `mtl-ray compare` is the full measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mtl_ray import progress
from mtl_ray.config import AFFINITY_STEPS
from mtl_ray.data.validate import validate
from mtl_ray.errors import UserError
from mtl_ray.model.partition import show
from mtl_ray.registry import tracking
from mtl_ray.result import Result, number
from mtl_ray.studies.groups import AFFINITY_BACKBONE, recommend
from mtl_ray.studies.probes import auroc_of, gradient_cosines, linear_probe, load_sample, probe_fit

PROBE_ROWS = 2048
PROBE_STEPS = 300
PROBE_BACKBONE = "s"
SMALL, BIG = "xs", "m"
MANY_MORE = 5.0
"""Other tasks' labels per own label from which the data-amount condition holds."""
PROBE_MARGIN = 0.01
"""AUROC by which the probe must beat the single-task network for a "yes" ("weak" within 0.02 below)."""


def data_amounts(labeled: dict[str, int]) -> dict[str, dict]:
    """Per task: own labels, the other tasks' labels, and their ratio."""
    total = sum(labeled.values())
    return {
        t: {"labeled": n, "others_labeled": total - n, "ratio": (total - n) / n if n else None}
        for t, n in labeled.items()
    }


@dataclass
class Advice(Result):
    """Verdict and evidence per condition, and what to do about it."""

    conditions: dict[str, dict]
    recommendation: str
    groups: dict | None = None
    """With `--groups`: {"partition": [[TASK, ...], ...], "affinity": {TASK: {TASK: Z}}, ...}, where
    affinity[a][b] is the share of b's loss that a step on a's gradient removed."""
    tracking: dict[str, str] | None = None
    """This advice's own MLflow run ({"run_id", "uri"}), or {"error"} when logging it failed."""

    def render(self) -> str:
        lines = [f"{name:<16} {c['verdict']:<4} {c['summary']}" for name, c in self.conditions.items()]
        if self.groups:
            g = self.groups
            lines.append(
                f"{'groups':<16} {len(g['partition'])}    {show(g['partition'])}: within-group affinity score "
                f"{g['score']:+.4f}, one network for all {g['score_all']:+.4f} (mtl-ray compare --groups "
                f"'{show(g['partition'])}' measures it)"
            )
        return "\n".join([*lines, f"recommendation: {self.recommendation}", *tracking.result_line(self.tracking)])


@dataclass(frozen=True)
class _Sample:
    """The probes' rows: a sample of the training rows, those with the focus task's label, and
    validation rows; `j` is the focus task's column."""

    tasks: list[str]
    focus: str
    j: int
    images: torch.Tensor
    labels: torch.Tensor
    focus_images: torch.Tensor
    focus_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor

    @property
    def others(self) -> list[int]:
        return [k for k in range(len(self.tasks)) if k != self.j]

    @property
    def focus_count(self) -> int:
        return int((~torch.isnan(self.focus_labels[:, self.j])).sum())

    def focus_auroc(self, model: torch.nn.Module, output: int = 0) -> float | None:
        return auroc_of(model, self.val_images, self.val_labels[:, self.j], output)


def _shared_features(sample: _Sample, steps: int) -> tuple[dict, torch.nn.Module]:
    """Condition 1, and the small multi-task probe network that condition 3 reuses."""
    focus, j = sample.focus, sample.j
    progress.say(f"advise 1/4: a trunk trained on the other tasks, probed for {focus}")
    trunk = probe_fit(PROBE_BACKBONE, sample.images, sample.labels[:, sample.others], steps)
    probe_auroc = linear_probe(
        trunk, sample.focus_images, sample.focus_labels[:, j], sample.val_images, sample.val_labels[:, j]
    )
    alone = sample.focus_auroc(probe_fit(PROBE_BACKBONE, sample.focus_images, sample.focus_labels[:, [j]], steps))
    if probe_auroc is None or alone is None:
        verdict = "weak"
    else:
        verdict = (
            "yes"
            if probe_auroc >= alone + PROBE_MARGIN
            else "weak"
            if probe_auroc >= alone - 2 * PROBE_MARGIN
            else "no"
        )
    progress.say(f"advise 2/4: gradient cosines between tasks ({SMALL})")
    multi = probe_fit(SMALL, sample.images, sample.labels, steps)
    cosines = gradient_cosines(multi, sample.val_images[:256], sample.val_labels[:256], sample.tasks)
    mean_cos = float(np.mean(list(cosines.values()))) if cosines else 0.0
    return {
        "verdict": verdict,
        "evidence": {
            "focus": focus,
            "probe_auroc": probe_auroc,
            "stl_auroc": alone,
            "labels": sample.focus_count,
            "backbone": PROBE_BACKBONE,
            "steps": steps,
            "mean_cosine": mean_cos,
            "pairs": cosines,
        },
        "summary": f"{focus}: a linear probe on a trunk trained on the other tasks scores AUROC "
        f"{number(probe_auroc)} with its {sample.focus_count} labels, a single-task network {number(alone)}; "
        f"gradient cosine between tasks {mean_cos:+.3f}",
    }, multi


def _data_amounts(labeled: dict[str, int], focus: str) -> dict:
    """Condition 2, from the label counts alone."""
    amounts = data_amounts(labeled)
    ratio = amounts[focus]["ratio"] or 0.0
    return {
        "verdict": "yes" if ratio >= MANY_MORE else "weak" if ratio >= 1 else "no",
        "evidence": {"focus": focus, "tasks": amounts},
        "summary": f"{focus} has {labeled[focus]:,} labels; the other tasks add "
        f"{amounts[focus]['others_labeled']:,} ({ratio:.1f}x)",
    }


def _capacity(sample: _Sample, steps: int, small_multi: torch.nn.Module) -> dict:
    """Condition 3: the multi-task minus single-task gap on the focus task, small and big backbone."""
    gaps = {}
    for step, backbone in enumerate((SMALL, BIG), start=3):
        progress.say(f"advise {step}/4: multi-task against single-task on {sample.focus}, backbone {backbone}")
        multi = small_multi if backbone == SMALL else probe_fit(backbone, sample.images, sample.labels, steps)
        mtl = sample.focus_auroc(multi, sample.j)
        stl = sample.focus_auroc(probe_fit(backbone, sample.focus_images, sample.focus_labels[:, [sample.j]], steps))
        gaps[backbone] = {"mtl_auroc": mtl, "stl_auroc": stl, "gap": None if mtl is None or stl is None else mtl - stl}
    small_gap, big_gap = gaps[SMALL]["gap"], gaps[BIG]["gap"]
    return {
        "verdict": "yes" if small_gap is not None and big_gap is not None and big_gap > small_gap + 0.01 else "no",
        "evidence": {"focus": sample.focus, "probes": gaps, "steps": steps},
        "summary": f"{sample.focus}: multi-task minus single-task AUROC {number(small_gap, '+.3f')} with {SMALL}, "
        f"{number(big_gap, '+.3f')} with {BIG}",
    }


def advise(
    data: str,
    *,
    rows: int = PROBE_ROWS,
    steps: int = PROBE_STEPS,
    size: tuple[int, int] | None = None,
    track: bool = False,
    groups: bool = False,
    max_groups: int | None = None,
    affinity_steps: int = AFFINITY_STEPS,
) -> Advice:
    """Measure the three conditions on the shards at `data` (see the module docstring); `groups` also
    recommends which tasks share a network (at most `max_groups` networks, default one per task);
    `track` logs the advice as an MLflow run of its own (`tracking.log_result_run`)."""
    report = validate(data)
    report.raise_if_unusable()
    tasks = list(report.fmt.tasks)
    if len(tasks) < 2:
        raise UserError(f"{data}: one task only; multi-task learning needs at least two")
    size = size or report.training_size()[0]
    labeled = report.labeled_in("train")
    focus = min(labeled, key=labeled.get)
    amounts = _data_amounts(labeled, focus)
    val_split = "val" if report.rows_in("val") else "train"
    sample = _Sample(
        tasks,
        focus,
        tasks.index(focus),
        *load_sample(report, "train", rows, size),
        *load_sample(report, "train", rows, size, labeled=focus),
        *load_sample(report, val_split, rows // 2, size),
    )
    shared, multi = _shared_features(sample, steps)
    conditions = {"shared_features": shared, "data_amounts": amounts, "capacity": _capacity(sample, steps, multi)}
    verdicts = [c["verdict"] for c in conditions.values()]
    advice = Advice(conditions, _recommend(*verdicts, focus))
    if groups:
        progress.say(f"advise groups: inter-task affinity over a {affinity_steps}-step joint run ({AFFINITY_BACKBONE})")
        advice.groups = recommend(
            sample.images,
            sample.labels,
            tasks,
            backbone=AFFINITY_BACKBONE,
            steps=affinity_steps,
            max_groups=max_groups,
        )
    if track:
        advice.tracking = tracking.log_result_run(
            "advise",
            advice.to_json(),
            advice.render(),
            params={
                "data": data,
                "rows": rows,
                "steps": steps,
                "focus": focus,
                **{f"{name}.verdict": c["verdict"] for name, c in conditions.items()},
                **({"groups": show(advice.groups["partition"])} if advice.groups else {}),
            },
            pairwise=("conditions.shared_features.evidence.pairs", "groups.affinity"),
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
