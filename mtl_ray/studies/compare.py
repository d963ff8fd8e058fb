"""Multi-task vs separate single-task networks on the user's data: does sharing pay off here?

`compare` trains the multi-task model and one single-task network per task with the same backbone
and config. A single-task network sees only the rows where its label is known, so each of its
epochs streams those rows as often as it takes to match the multi-task run's epoch
(`TrainConfig.epoch_rows`): otherwise a task labeled on 5 % of the rows would get a twentieth of the
steps, and the comparison would measure under-training, not sharing. Each single-task network then
trains to its own best: up to `stl_epochs` such epochs, stopped after `stl_patience` epochs without
a better validation AUROC, and judged at its best epoch (reported), while the multi-task model is
judged at its last, the one it would register. A baseline that kept training past its best, or
stopped before it, would inflate the multi-task gain, the opposite of what the comparison is for.
Task weighting does not apply to one task, so single-task networks use `equal`. The report gives
per-task metrics both ways and Δm % (Maninis et al. 2019), the average relative gain of the
multi-task model over the single-task ones on a higher-is-better metric:

    Δm % = (1/T) Σₜ (M_mtl,t − M_stl,t) / M_stl,t × 100     (positive = multi-task wins)

`control="shuffle"` adds Caruana's control: the multi-task model retrained with every task's
training labels except one focus task permuted across rows (same label rates, no signal), so any
gain that came from the other tasks should vanish. `seeds=N` runs every side N times (training
seeds seed … seed+N−1) and reports the mean and standard deviation of each number, so that a gain
can be told from seed noise.

`groups` adds a third arm, a partition of the tasks into networks (`a,b|c`, or `auto`: the one
`mtl-ray advise --groups` recommends from inter-task affinity). Each group of two or more tasks is a
multi-task network of its own, trained on the rows where one of its tasks is known with as many
steps per epoch and epochs as the all-task network, judged at its last epoch; a task alone is its
single-task network. The arm's Δm is against the single-task networks, as the all-task network's,
so the two arms and the separate networks compare on one scale, with each arm's wall time.

`stl_tasks` trains single-task networks for those tasks only: with 100 tasks, a sample of them (the
starved ones, a few well-labeled) costs a tenth of the whole set. Δm, the per-task Δ and the groups'
Δm are then over the sampled tasks, and the report names them.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mtl_ray import progress
from mtl_ray.config import AFFINITY_STEPS, STL_PATIENCE, TrainConfig, WeightingConfig
from mtl_ray.data.validate import ValidationReport, validate
from mtl_ray.errors import UserError
from mtl_ray.model.metrics import METRIC
from mtl_ray.model.partition import show
from mtl_ray.registry import tracking
from mtl_ray.result import Result, number, table
from mtl_ray.studies.groups import requested
from mtl_ray.studies.stats import delta_m, mean_std
from mtl_ray.training.driver import TrainResult, fit

METRICS = (METRIC, "accuracy", "f1")


@dataclass
class CompareRun:
    """One seed's runs: the multi-task model, one single-task network per task, the control."""

    seed: int
    mtl: TrainResult
    stl: dict[str, TrainResult]
    control: TrainResult | None = None
    grouped: dict[str, TrainResult] = field(default_factory=dict)
    """The networks of the groups of two or more tasks, by their tasks joined with ','."""

    @property
    def stl_tasks(self) -> list[str]:
        """The tasks that have a single-task network (all of them unless `stl_tasks` sampled some)."""
        return list(self.stl)

    @property
    def stl_val(self) -> dict[str, dict]:
        """Each single-task network's metrics on its own task, at its best epoch."""
        return {t: r.best["val"][t] for t, r in self.stl.items()}

    @property
    def delta_m_pct(self) -> float | None:
        return delta_m(self.mtl.val, self.stl_val)

    def delta_pct(self, task: str) -> float | None:
        return delta_m({task: self.mtl.val[task]}, {task: self.stl_val[task]})

    def grouped_val(self, partition: list[list[str]]) -> dict[str, dict]:
        """Each task's metrics from its group's network at its last epoch (a task alone: its
        single-task network at its best)."""
        out = {}
        for group in partition:
            for t in group:
                if len(group) > 1:
                    out[t] = self.grouped[",".join(group)].val[t]
                elif t in self.stl:
                    out[t] = self.stl_val[t]
        return out

    def grouped_seconds(self, partition: list[list[str]]) -> float:
        return sum(self.grouped[",".join(g)].seconds if len(g) > 1 else self.stl[g[0]].seconds for g in partition)


@dataclass
class CompareResult(Result):
    """Both sides' per-task metrics (means over seeds, with their spread when there are several),
    Δm %, costs, and the shuffle control when asked for."""

    tasks: list[str]
    runs: list[CompareRun]
    focus: str | None = None
    groups: dict | None = None
    """With `groups`: {"partition", "source": "given" | "auto"} (and, for auto, advise's affinity)."""
    plots: list[str] = field(default_factory=list)
    tracking: dict[str, str] | None = None
    """This comparison's own MLflow run ({"run_id", "uri"}), or {"error"} when logging it failed."""

    @property
    def several(self) -> bool:
        return len(self.runs) > 1

    def _stat(self, get: Callable[[CompareRun], float | None]) -> tuple[float | None, float | None]:
        return mean_std([get(run) for run in self.runs])

    @property
    def stl_tasks(self) -> list[str]:
        return self.runs[0].stl_tasks

    def _side(self, val_of: Callable[[CompareRun], dict[str, dict]], tasks: list[str] | None = None) -> dict[str, dict]:
        """{task: {metric: mean, metric_std: std (several seeds), n_labeled}} for one side."""
        out = {}
        for t in tasks or self.tasks:
            entry: dict = {}
            for name in METRICS:
                mean, std = self._stat(lambda run, t=t, name=name: val_of(run)[t][name])
                entry[name] = mean
                if self.several:
                    entry[f"{name}_std"] = std
            entry["n_labeled"] = val_of(self.runs[0])[t]["n_labeled"]
            out[t] = entry
        return out

    @property
    def mtl(self) -> dict[str, dict]:
        return self._side(lambda run: run.mtl.val)

    @property
    def stl(self) -> dict[str, dict]:
        return self._side(lambda run: run.stl_val, self.stl_tasks)

    @property
    def control(self) -> dict[str, dict] | None:
        return self._side(lambda run: run.control.val) if self.runs[0].control else None

    @property
    def delta_m_pct(self) -> float | None:
        return self._stat(lambda run: run.delta_m_pct)[0]

    def _with_std(self, key: str, get: Callable[[CompareRun], float | None]) -> dict:
        mean, std = self._stat(get)
        return {key: mean, f"{key}_std": std} if self.several else {key: mean}

    def to_json(self) -> dict:
        out = {
            "tasks": self.tasks,
            "metric": METRIC,
            "seeds": [run.seed for run in self.runs],
            "mtl": self.mtl,
            "stl": self.stl,
            "stl_tasks": self.stl_tasks,
            **self._with_std("delta_m_pct", lambda run: run.delta_m_pct),
            "delta_pct": {t: self._stat(lambda run, t=t: run.delta_pct(t))[0] for t in self.stl_tasks},
            **self._with_std("mtl_seconds", lambda run: run.mtl.seconds),
            **self._with_std("stl_seconds", lambda run: sum(r.seconds for r in run.stl.values())),
            "mtl_params": self.runs[0].mtl.params,
            "stl_params": sum(r.params for r in self.runs[0].stl.values()),
            "stl_epochs": {
                t: [{"best": run.stl[t].best["epoch"], "trained": run.stl[t].epochs} for run in self.runs]
                for t in self.stl_tasks
            },
            "mtl_checkpoint": self.runs[0].mtl.checkpoint,
            "plots": self.plots,
            "tracking": self.tracking,
        }
        if self.several:
            out["delta_pct_std"] = {t: self._stat(lambda run, t=t: run.delta_pct(t))[1] for t in self.stl_tasks}
        if self.groups is not None:
            partition = self.groups["partition"]
            out["groups"] = {
                **self.groups,
                "grouped": self._side(
                    lambda run: run.grouped_val(partition), list(self.runs[0].grouped_val(partition))
                ),
                **self._with_std("delta_m_pct", lambda run: delta_m(run.grouped_val(partition), run.stl_val)),
                **self._with_std("seconds", lambda run: run.grouped_seconds(partition)),
                "networks": len(partition),
            }
        if self.control is not None:
            focus = {}
            for side, get in (
                ("mtl", lambda run: run.mtl.val),
                ("stl", lambda run: run.stl_val),
                ("control", lambda run: run.control.val),
            ):
                focus.update(self._with_std(side, lambda run, get=get: get(run)[self.focus][METRIC]))
            out["control"] = {
                "kind": "shuffle",
                "focus": self.focus,
                "val": self.control,
                "focus_auroc": focus,
                **self._with_std("seconds", lambda run: run.control.seconds),
            }
        return out

    def _cell(self, get: Callable[[CompareRun], float | None], fmt: str = ".3f") -> str:
        mean, std = self._stat(get)
        return number(mean, fmt) + (f" ± {number(std, fmt.lstrip('+'))}" if self.several and std is not None else "")

    def render(self) -> str:
        head = ["task", "mtl auroc", "stl auroc", "Δ %"] + (["control auroc"] if self.control else [])
        rows = []
        for t in self.tasks:
            row = [
                t,
                self._cell(lambda run, t=t: run.mtl.val[t][METRIC]),
                self._cell(lambda run, t=t: run.stl_val[t][METRIC] if t in run.stl else None),
                self._cell(lambda run, t=t: run.delta_pct(t) if t in run.stl else None, "+.1f"),
            ]
            if self.control:
                shown = self._cell(lambda run, t=t: run.control.val[t][METRIC])
                row.append(shown + (" (focus)" if t == self.focus else " (shuffled)"))
            rows.append(row)
        lines = table(head, rows)
        dm = self.delta_m_pct
        verdict = "multi-task wins" if dm and dm > 0 else "single-task wins" if dm is not None else "no metric"
        seeds = f" over {len(self.runs)} seeds (mean ± std)" if self.several else ""
        sampled = len(self.stl_tasks) < len(self.tasks)
        over = (
            f" over the {len(self.stl_tasks)} of {len(self.tasks)} tasks with a single-task network" if sampled else ""
        )
        lines.append(f"Δm {self._cell(lambda run: run.delta_m_pct, '+.1f')} %{over} ({verdict}){seeds}")
        first = self.runs[0]
        stl_params = sum(r.params for r in first.stl.values())
        stl_seconds = statistics.fmean(sum(r.seconds for r in run.stl.values()) for run in self.runs)
        mtl_seconds = statistics.fmean(run.mtl.seconds for run in self.runs)
        lines.append(
            f"multi-task: 1 network, {first.mtl.params:,} parameters, {mtl_seconds:.0f} s; "
            f"single-task: {len(first.stl)} networks, {stl_params:,} parameters, {stl_seconds:.0f} s"
            + (" (per seed)" if self.several else "")
        )
        if self.groups is not None:
            partition = self.groups["partition"]
            seconds = statistics.fmean(run.grouped_seconds(partition) for run in self.runs)
            lines.append(
                f"groups {show(partition)} ({self.groups['source']}): {len(partition)} networks, {seconds:.0f} s, "
                f"Δm {self._cell(lambda run: delta_m(run.grouped_val(partition), run.stl_val), '+.1f')} % "
                f"against the single-task networks (one network for all: "
                f"Δm {self._cell(lambda run: run.delta_m_pct, '+.1f')} %, {mtl_seconds:.0f} s)"
            )
        lines.append(
            "single-task best epoch of trained: "
            + ", ".join(
                f"{t} " + "/".join(f"{run.stl[t].best['epoch']} of {run.stl[t].epochs}" for run in self.runs)
                for t in self.stl_tasks
            )
        )
        lines += [f"plot {p}" for p in self.plots]
        return "\n".join(lines + tracking.result_line(self.tracking))

    def write_plots(self, directory: str) -> list[str]:
        """metrics.png (per-task AUROC, each side, seed means), curves.png (validation AUROC per epoch,
        multi-task solid, single-task dashed, seed means) and task_weights.png (the multi-task run's
        weights, seed means)."""
        from mtl_ray import plots

        sides = {"multi-task": self.mtl, "single-task": self.stl}
        if self.control is not None:
            sides["shuffle control"] = self.control
        dm = self.delta_m_pct
        bars = plots.bars(
            os.path.join(directory, "metrics.png"),
            self.tasks,
            {label: [val[t][METRIC] if t in val else float("nan") for t in self.tasks] for label, val in sides.items()},
            ylabel=f"validation {METRIC}",
            ylim=(0.4, 1.0),
            title=f"Δm = {dm:+.1f} %" if dm is not None else "Δm: no metric",
        )

        def mean_history(histories: list[list[dict]], value: Callable[[dict], float | None]) -> tuple[list, list]:
            """(epochs, seed mean of `value` per epoch) over the epochs every seed ran (early stopping
            may end single-task runs at different epochs)."""
            common = range(min(map(len, histories)))
            epochs = [histories[0][k]["epoch"] for k in common]
            return epochs, [mean_std([value(h[k]) for h in histories])[0] for k in common]

        lines = []
        for i, t in enumerate(self.tasks):
            for side, style in (("mtl", "-"), ("stl", "--")):
                if side == "stl" and t not in self.stl_tasks:
                    continue
                histories = [(run.mtl if side == "mtl" else run.stl[t]).history for run in self.runs]
                epochs, y = mean_history(histories, lambda h, t=t: h["val"][t][METRIC])
                lines.append(plots.Line(f"{t} ({side})", epochs, y, style, f"C{i % 10}"))
        curves = plots.curves(
            os.path.join(directory, "curves.png"), lines, xlabel="epoch", ylabel=f"validation {METRIC}"
        )
        mtl_histories = [run.mtl.history for run in self.runs]
        weight_lines = [
            plots.Line(t, *mean_history(mtl_histories, lambda h, t=t: h["task_weights"][t]), marker="o")
            for t in self.tasks
        ]
        weights = plots.curves(
            os.path.join(directory, "task_weights.png"), weight_lines, xlabel="epoch", ylabel="task weight"
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
    seeds: int = 1,
    stl_epochs: int | None = None,
    stl_patience: int = STL_PATIENCE,
    stl_tasks: Sequence[str] | None = None,
    groups: str | None = None,
    max_groups: int | None = None,
    affinity_steps: int = AFFINITY_STEPS,
    track: bool = False,
) -> CompareResult:
    """Train the multi-task model and one single-task network per task, `seeds` times; see the module
    docstring (`stl_epochs` default: the multi-task run's epochs; `groups` a partition `a,b|c` or
    `auto`, with at most `max_groups` networks, from an `affinity_steps`-step joint run; `stl_tasks` the
    tasks that get a single-task network, default all). `track`
    logs the comparison as an MLflow run of its own (`tracking.log_result_run`)."""
    cfg = config or TrainConfig()
    if cfg.groups is not None:
        raise UserError(
            f"compare: the config sets groups {cfg.groups!r}; compare's multi-task side is one shared network: "
            "leave groups unset and pass the partition as --groups to train it beside"
        )
    stl_epochs = stl_epochs or cfg.epochs
    report, focus, sampled = _checked(data, control, seeds, focus, stl_tasks)
    tasks = list(report.fmt.tasks)
    chosen = requested(groups, report, cfg, max_groups, affinity_steps, sampled) if groups else None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = []
    for k in range(seeds):
        run_cfg = cfg.model_copy(update={"seed": cfg.seed + k})
        single_cfg = run_cfg.model_copy(
            update={
                "weighting": WeightingConfig(name="equal"),
                "epoch_rows": report.rows_in("train"),
                "epochs": stl_epochs,
                "patience": stl_patience,
            }
        )
        prefix = f"compare-{stamp}-s{run_cfg.seed}"
        common = dict(val=val, storage_path=storage_path)
        of = f"seed {k + 1}/{seeds}: " if seeds > 1 else ""
        progress.say(f"compare {of}multi-task: {', '.join(tasks)}")
        mtl = fit(data, name=f"{prefix}-mtl", config=run_cfg, **common)
        stl = {}
        for i, t in enumerate(sampled, start=1):
            progress.say(f"compare {of}single-task {i}/{len(sampled)}: {t}")
            stl[t] = fit(data, name=f"{prefix}-stl-{t}", tasks=[t], labeled_only=True, config=single_cfg, **common)
        shuffled = None
        if control == "shuffle":
            others = [t for t in tasks if t != focus]
            progress.say(f"compare {of}shuffle control: {', '.join(others)} labels shuffled")
            shuffled = fit(data, name=f"{prefix}-shuffle", shuffle_labels=others, config=run_cfg, **common)
        grouped = _fit_groups(chosen, data, report, run_cfg, prefix, of, common) if chosen else {}
        runs.append(CompareRun(run_cfg.seed, mtl, stl, shuffled, grouped))
    result = CompareResult(tasks=tasks, runs=runs, focus=focus, groups=chosen)
    if plots:
        result.plots = result.write_plots(plots)
    if track:
        with tempfile.TemporaryDirectory() as d:
            result.tracking = tracking.log_result_run(
                "compare",
                result.to_json(),
                result.render(),
                params=cfg.model_dump()  # its `groups` (always unset here) gives way to compare's partition
                | {"data": data, "val": val, "seeds": seeds, "control": control, "focus": focus}
                | ({"stl_tasks": ",".join(sampled)} if len(sampled) < len(tasks) else {})
                | {"stl_epochs": stl_epochs, "stl_patience": stl_patience}
                | ({"groups": show(chosen["partition"]), "groups_source": chosen["source"]} if chosen else {}),
                artifacts=result.plots or result.write_plots(d),
            )
    return result


def _checked(
    data: str, control: str | None, seeds: int, focus: str | None, stl_tasks: Sequence[str] | None
) -> tuple[ValidationReport, str | None, list[str]]:
    """The shards' validation report, the shuffle control's focus task and the tasks that get a
    single-task network, or a UserError for what cannot be compared."""
    if control not in (None, "shuffle"):
        raise UserError(f"--control {control!r}: expected 'shuffle'")
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: expected a positive integer")
    report = validate(data)
    report.raise_if_unusable()
    tasks = list(report.fmt.tasks)
    unknown = [t for t in stl_tasks or () if t not in tasks]
    if unknown:
        raise UserError(f"--stl-tasks: {unknown[0]!r} is not a task of {data} (tasks: {', '.join(tasks)})")
    sampled = [t for t in tasks if t in set(stl_tasks or tasks)]
    train_counts = report.labeled_in("train")
    empty = [t for t in sampled if train_counts[t] == 0]
    if empty:
        raise UserError(
            f"{data}: task {empty[0]!r} has no known label in the training rows; "
            "a single-task network cannot be trained for it"
        )
    if focus is not None and focus not in tasks:
        raise UserError(f"--focus {focus!r}: tasks are {', '.join(tasks)}")
    focus = focus or min(train_counts, key=train_counts.get) if control else None
    if focus is not None and focus not in sampled:
        raise UserError(
            f"--control shuffle: its focus task {focus!r} needs a single-task network; add it to --stl-tasks"
        )
    return report, focus, sampled


def _fit_groups(
    chosen: dict, data: str, report: ValidationReport, cfg: TrainConfig, prefix: str, of: str, common: dict
) -> dict[str, TrainResult]:
    """One network per group of two or more tasks, with the all-task network's steps per epoch."""
    grouped = {}
    for group in [g for g in chosen["partition"] if len(g) > 1]:
        progress.say(f"compare {of}group: {', '.join(group)}")
        grouped[",".join(group)] = fit(
            data,
            name=f"{prefix}-group-{'-'.join(group)}",
            tasks=group,
            labeled_only=True,
            config=cfg.model_copy(update={"epoch_rows": report.rows_in("train")}),
            **common,
        )
    return grouped
