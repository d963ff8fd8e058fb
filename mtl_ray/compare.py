"""Multi-task vs separate single-task networks on the user's data: does sharing pay off here?

`compare` trains the multi-task model once and one single-task network per task (same backbone,
epochs and config, except that task weighting does not apply to one task, so single-task networks
use `equal`; each on only the rows where its label is known), then reports per-task
metrics both ways and Δm % (Maninis et al. 2019), the average relative gain of the multi-task
model over the single-task ones on a higher-is-better metric:

    Δm % = (1/T) Σₜ (M_mtl,t − M_stl,t) / M_stl,t × 100     (positive = multi-task wins)

`control="shuffle"` adds Caruana's control: the multi-task model retrained with every task's
training labels except one focus task permuted across rows (same label rates, no signal), so any
gain that came from the other tasks should vanish.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from mtl_ray.config import TrainConfig, WeightingConfig
from mtl_ray.errors import UserError
from mtl_ray.metrics import METRIC
from mtl_ray.text import number, table
from mtl_ray.train import TrainResult, fit
from mtl_ray.validate import validate


def delta_m(mtl: dict[str, dict], stl: dict[str, dict], metric: str = METRIC) -> float | None:
    """Δm % over the tasks where both sides have the metric (None if no task has)."""
    gains = [
        (mtl[t][metric] - stl[t][metric]) / stl[t][metric] * 100
        for t in stl
        if mtl.get(t, {}).get(metric) is not None and stl[t].get(metric)
    ]
    return sum(gains) / len(gains) if gains else None


@dataclass
class CompareResult:
    """Both sides' per-task metrics, Δm %, costs, and the shuffle control when asked for."""

    tasks: list[str]
    mtl: TrainResult
    stl: dict[str, TrainResult]
    control: TrainResult | None = None
    focus: str | None = None
    plots: list[str] = field(default_factory=list)
    exit_code: int = 0

    @property
    def stl_val(self) -> dict[str, dict]:
        """Each single-task network's metrics on its own task."""
        return {t: r.val[t] for t, r in self.stl.items()}

    @property
    def delta_m_pct(self) -> float | None:
        return delta_m(self.mtl.val, self.stl_val)

    def delta_pct(self, task: str) -> float | None:
        """One task's relative gain of the multi-task model, in %."""
        return delta_m({task: self.mtl.val[task]}, {task: self.stl_val[task]})

    @property
    def stl_seconds(self) -> float:
        return sum(r.seconds for r in self.stl.values())

    @property
    def stl_params(self) -> int:
        return sum(r.params for r in self.stl.values())

    def to_json(self) -> dict:
        out = {
            "tasks": self.tasks,
            "metric": METRIC,
            "mtl": self.mtl.val,
            "stl": self.stl_val,
            "delta_m_pct": self.delta_m_pct,
            "delta_pct": {t: self.delta_pct(t) for t in self.tasks},
            "mtl_seconds": self.mtl.seconds,
            "stl_seconds": self.stl_seconds,
            "mtl_params": self.mtl.params,
            "stl_params": self.stl_params,
            "mtl_checkpoint": self.mtl.checkpoint,
            "plots": self.plots,
        }
        if self.control is not None:
            out["control"] = {
                "kind": "shuffle",
                "focus": self.focus,
                "val": self.control.val,
                "focus_auroc": {
                    "mtl": self.mtl.val[self.focus][METRIC],
                    "stl": self.stl_val[self.focus][METRIC],
                    "control": self.control.val[self.focus][METRIC],
                },
                "seconds": self.control.seconds,
            }
        return out

    def render(self) -> str:
        head = ["task", "mtl auroc", "stl auroc", "Δ %"] + (["control auroc"] if self.control else [])
        rows = []
        for t in self.tasks:
            row = [
                t,
                number(self.mtl.val[t][METRIC]),
                number(self.stl_val[t][METRIC]),
                number(self.delta_pct(t), "+.1f"),
            ]
            if self.control:
                row.append(number(self.control.val[t][METRIC]) + (" (focus)" if t == self.focus else " (shuffled)"))
            rows.append(row)
        lines = table(head, rows)
        dm = self.delta_m_pct
        verdict = "multi-task wins" if dm and dm > 0 else "single-task wins" if dm is not None else "no metric"
        lines.append(f"Δm {number(dm, '+.1f')} % ({verdict})")
        lines.append(
            f"multi-task: 1 network, {self.mtl.params:,} parameters, {self.mtl.seconds:.0f} s; "
            f"single-task: {len(self.stl)} networks, {self.stl_params:,} parameters, {self.stl_seconds:.0f} s"
        )
        lines += [f"plot {p}" for p in self.plots]
        return "\n".join(lines)

    def write_plots(self, directory: str) -> list[str]:
        """metrics.png (per-task AUROC, each side), curves.png (validation AUROC per epoch,
        multi-task solid, single-task dashed) and task_weights.png (the multi-task run's weights)."""
        from mtl_ray import plots

        sides = {"multi-task": self.mtl.val, "single-task": self.stl_val}
        if self.control is not None:
            sides["shuffle control"] = self.control.val
        dm = self.delta_m_pct
        bars = plots.bars(
            os.path.join(directory, "metrics.png"),
            self.tasks,
            {label: [val[t][METRIC] for t in self.tasks] for label, val in sides.items()},
            ylabel=f"validation {METRIC}",
            ylim=(0.4, 1.0),
            title=f"Δm = {dm:+.1f} %" if dm is not None else "Δm: no metric",
        )
        lines = []
        for i, t in enumerate(self.tasks):
            for side, run, style in (("mtl", self.mtl, "-"), ("stl", self.stl[t], "--")):
                lines.append(
                    plots.Line(
                        f"{t} ({side})",
                        [h["epoch"] for h in run.history],
                        [h["val"][t][METRIC] for h in run.history],
                        style,
                        f"C{i % 10}",
                    )
                )
        curves = plots.curves(
            os.path.join(directory, "curves.png"), lines, xlabel="epoch", ylabel=f"validation {METRIC}"
        )
        epochs = [h["epoch"] for h in self.mtl.history]
        weights = plots.curves(
            os.path.join(directory, "task_weights.png"),
            [plots.Line(t, epochs, [h["task_weights"][t] for h in self.mtl.history], marker="o") for t in self.tasks],
            xlabel="epoch",
            ylabel="task weight",
        )
        return [bars, curves, weights]


def compare(
    data: str,
    *,
    val: str | None = None,
    config: TrainConfig | None = None,
    control: str | None = None,
    plots: str | None = None,
    storage_path: str | None = None,
    focus: str | None = None,
) -> CompareResult:
    """Train the multi-task model and one single-task network per task; see the module docstring."""
    cfg = config or TrainConfig()
    if control not in (None, "shuffle"):
        raise UserError(f"--control {control!r}: expected 'shuffle'")
    report = validate(data)
    report.raise_if_unusable()
    tasks = list(report.fmt.tasks)
    train_counts = report.labeled_in("train")
    empty = [t for t, n in train_counts.items() if n == 0]
    if empty:
        raise UserError(
            f"{data}: task {empty[0]!r} has no known label in the training rows; "
            "a single-task network cannot be trained for it"
        )
    if focus is not None and focus not in tasks:
        raise UserError(f"--focus {focus!r}: tasks are {', '.join(tasks)}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = dict(val=val, config=cfg, storage_path=storage_path)
    mtl = fit(data, name=f"compare-{stamp}-mtl", **runs)
    single = dict(runs, config=cfg.model_copy(update={"weighting": WeightingConfig()}))
    stl = {t: fit(data, name=f"compare-{stamp}-stl-{t}", tasks=[t], labeled_only=True, **single) for t in tasks}
    result = CompareResult(tasks=tasks, mtl=mtl, stl=stl)
    if control == "shuffle":
        result.focus = focus or min(train_counts, key=train_counts.get)
        others = [t for t in tasks if t != result.focus]
        result.control = fit(data, name=f"compare-{stamp}-shuffle", shuffle_labels=others, **runs)
    if plots:
        result.plots = result.write_plots(plots)
    return result
