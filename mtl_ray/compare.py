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

import time
from dataclasses import dataclass, field

from mtl_ray.config import TrainConfig, WeightingConfig
from mtl_ray.errors import UserError
from mtl_ray.text import number, table
from mtl_ray.train import TrainResult, fit
from mtl_ray.validate import validate

METRIC = "auroc"


def delta_m(mtl: dict[str, dict], stl: dict[str, dict], metric: str = METRIC) -> float | None:
    """Δm % over the tasks where both sides have the metric (None if no task has)."""
    gains = [(mtl[t][metric] - stl[t][metric]) / stl[t][metric] * 100 for t in stl
             if mtl.get(t, {}).get(metric) is not None and stl[t].get(metric)]
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
    def delta_m_pct(self) -> float | None:
        return delta_m(self.mtl.val, self._stl_val())

    def _stl_val(self) -> dict[str, dict]:
        return {t: r.val[t] for t, r in self.stl.items()}

    def to_json(self) -> dict:
        out = {
            "tasks": self.tasks,
            "metric": METRIC,
            "mtl": self.mtl.val,
            "stl": self._stl_val(),
            "delta_m_pct": self.delta_m_pct,
            "delta_pct": {t: delta_m({t: self.mtl.val[t]}, {t: self.stl[t].val[t]}) for t in self.tasks},
            "mtl_seconds": self.mtl.seconds,
            "stl_seconds": sum(r.seconds for r in self.stl.values()),
            "mtl_params": self.mtl.params,
            "stl_params": sum(r.params for r in self.stl.values()),
            "mtl_checkpoint": self.mtl.checkpoint,
            "plots": self.plots,
        }
        if self.control is not None:
            out["control"] = {
                "kind": "shuffle", "focus": self.focus, "val": self.control.val,
                "focus_auroc": {"mtl": self.mtl.val[self.focus][METRIC], "stl": self.stl[self.focus].val[self.focus][METRIC],
                                "control": self.control.val[self.focus][METRIC]},
                "seconds": self.control.seconds,
            }
        return out

    def render(self) -> str:
        head = ["task", "mtl auroc", "stl auroc", "Δ %"] + (["control auroc"] if self.control else [])
        rows = []
        for t in self.tasks:
            m, s = self.mtl.val[t][METRIC], self.stl[t].val[t][METRIC]
            row = [t, number(m), number(s), number(delta_m({t: self.mtl.val[t]}, {t: self.stl[t].val[t]}), "+.1f")]
            if self.control:
                row.append(number(self.control.val[t][METRIC]) + (" (focus)" if t == self.focus else " (shuffled)"))
            rows.append(row)
        lines = table(head, rows)
        dm = self.delta_m_pct
        lines.append(f"Δm {number(dm, '+.1f')} % ({'multi-task wins' if dm and dm > 0 else 'single-task wins' if dm is not None else 'no metric'})")
        stl_seconds = sum(r.seconds for r in self.stl.values())
        stl_params = sum(r.params for r in self.stl.values())
        lines.append(f"multi-task: 1 network, {self.mtl.params:,} parameters, {self.mtl.seconds:.0f} s; "
                     f"single-task: {len(self.stl)} networks, {stl_params:,} parameters, {stl_seconds:.0f} s")
        lines += [f"plot {p}" for p in self.plots]
        return "\n".join(lines)


def compare(data: str, *, val: str | None = None, config: TrainConfig | None = None, control: str | None = None,
            plots: str | None = None, storage_path: str | None = None, focus: str | None = None) -> CompareResult:
    """Train the multi-task model and one single-task network per task; see the module docstring."""
    cfg = config or TrainConfig()
    if control not in (None, "shuffle"):
        raise UserError(f"--control {control!r}: expected 'shuffle'")
    report = validate(data)
    report.raise_if_unusable()
    tasks = list(report.fmt.tasks)
    train_counts = {t: sum(s["tasks"][t]["labeled"] for name, s in report.splits.items() if name in ("train", "unassigned")) for t in tasks}
    empty = [t for t, n in train_counts.items() if n == 0]
    if empty:
        raise UserError(f"{data}: task {empty[0]!r} has no known label in the training rows; a single-task network cannot be trained for it")
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
        result.control = fit(data, name=f"compare-{stamp}-shuffle", shuffle_labels=[t for t in tasks if t != result.focus], **runs)
    if plots:
        from mtl_ray.plots import comparison_plots

        result.plots = comparison_plots(result, plots)
    return result
