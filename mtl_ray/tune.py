"""Ray Tune over backbone size, task weighting and learning rate; MLflow tracking; the best registered.

Numbered like Ray's `train_tune_interop.py`:
1. `mtl_ray.train.worker_loop` runs on every Ray Train worker of a trial, as in `mtl-ray train`.
2. `train_driver` is one Tune trial: it builds and fits a `TorchTrainer` whose `TuneReportCallback`
   hands each epoch's report (rank 0's metrics and checkpoint) to Tune. The Train run is named after
   the trial id, so a trial that Tune restarts resumes from its last checkpoint.
3. `tune` is the job: it checks the search space before Ray starts, sizes trials so Ray Data keeps
   its CPUs, runs ASHA, logs to MLflow from this process only (`TrialLogger`) and
   registers the best trial's checkpoint behind the gated alias (`mtl_ray.registry`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback

from mtl_ray import progress, registry, tracking
from mtl_ray.config import TrainConfig, TuneConfig, parse
from mtl_ray.errors import UserError, describe
from mtl_ray.images import show_size
from mtl_ray.runtime import (
    ResourcePlan,
    check_model_config,
    configure_data,
    ensure_ray,
    plan_resources,
    run_storage,
    user_error_in,
)
from mtl_ray.text import number, table
from mtl_ray.train import STEP_KEY, Inputs, build_trainer, init_settings, prepare

REPORTED_METRICS = {"mean_auroc": "max", "train_loss": "min"}
DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")
DRIVER_CPUS = 0.01  # a trial's driver only waits on its TorchTrainer; Tune refuses zero resources
log = logging.getLogger(__name__)
NOT_SEARCHABLE = (
    "epochs",
    "workers",
    "gpu",
    "cpus_per_worker",
    "num_to_keep",
    "max_failures",
    "image_size",
    "strict",
    "epoch_rows",
)


# ---- the search space ------------------------------------------------------------------------


def _normalise(key: str, value: Any) -> Any:
    return {"name": value} if key == "weighting" and isinstance(value, str) else value


def _candidates(key: str, value: Any, where: str) -> tuple[str, list[Any]]:
    """(form, values to check): form is 'grid' for a list, else the distribution's name."""
    if isinstance(value, list):
        if not value:
            raise UserError(f"{where}: empty list; give at least one value")
        return "grid", [_normalise(key, v) for v in value]
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS:
        kind, args = next(iter(value.items()))
        if kind == "choice":
            if not isinstance(args, list) or not args:
                raise UserError(f"{where}: choice: expected a non-empty list of values")
            return kind, [_normalise(key, v) for v in args]
        if not (
            isinstance(args, list)
            and len(args) == 2
            and all(isinstance(a, (int, float)) for a in args)
            and args[0] < args[1]
        ):
            raise UserError(f"{where}: {kind}: expected [low, high] with low < high")
        if kind == "loguniform" and args[0] <= 0:
            raise UserError(f"{where}: loguniform: low must be positive")
        return kind, list(args)
    raise UserError(f"{where}: expected a list of values or one of {{{': [..]}, {'.join(DISTRIBUTIONS)}: [..]}}")


def check_search(
    cfg: TuneConfig, num_tasks: int, source: str, size: tuple[int, int] | None = None
) -> dict[str, tuple[str, list[Any]]]:
    """Every search key and value checked as a TrainConfig would check it (at image `size`), before Ray starts."""
    if not cfg.search:
        raise UserError(f"{source}: search: empty search space; give at least one key, e.g. backbone: [xs, s]")
    searchable = [k for k in TrainConfig.model_fields if k not in NOT_SEARCHABLE]
    if cfg.metric not in REPORTED_METRICS:
        raise UserError(
            f"{source}: metric {cfg.metric!r}: no trial reports it; trials report {', '.join(REPORTED_METRICS)}"
        )
    forms = {}
    base = cfg.train.model_dump()
    for key, value in cfg.search.items():
        where = f"{source}: search.{key}"
        if key in NOT_SEARCHABLE:
            raise UserError(f"{where}: not searchable (set train.{key}; the scheduler's max_epochs bounds epochs)")
        if key not in searchable:
            raise UserError(f"{source}: search: unknown key {key!r}; searchable keys are {', '.join(searchable)}")
        form, values = _candidates(key, value, where)
        if cfg.search_alg == "optuna" and form == "grid":
            form = "choice"
        for v in values:
            try:
                check_model_config(parse(TrainConfig, {**base, key: v}, where), num_tasks, size)
            except UserError as exc:
                raise UserError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
        forms[key] = (form, values)
    return forms


def param_space(forms: dict[str, tuple[str, list[Any]]]) -> dict[str, Any]:
    """Tune domains: lists become grid axes (choices with Optuna), the rest Tune's distributions."""
    from ray import tune

    builders = {
        "grid": tune.grid_search,
        "choice": tune.choice,
        "loguniform": lambda v: tune.loguniform(*v),
        "uniform": lambda v: tune.uniform(*v),
        "randint": lambda v: tune.randint(int(v[0]), int(v[1])),
    }
    return {key: builders[form](values) for key, (form, values) in forms.items()}


def concurrent_trials(plan: ResourcePlan, cluster: dict[str, float]) -> int:
    """Trials that fit side by side, each with its workers and its own CPU reserve for Ray Data."""
    per_trial = DRIVER_CPUS + plan.workers * plan.cpus_per_worker + plan.data_cpus
    fits = max(1, int(float(cluster.get("CPU", 0)) // per_trial))
    if plan.use_gpu:
        fits = min(fits, max(1, int(float(cluster.get("GPU", 0)) // plan.workers)))
    return fits


# ---- 2. the driver of one trial ----------------------------------------------------------------


def train_driver(
    config: dict,
    *,
    inputs: Inputs,
    base: dict,
    plan: ResourcePlan,
    run_prefix: str,
    storage_path: str | None,
    sources: dict[str, registry.InitSource],
) -> None:
    """One Tune trial: fit a TorchTrainer on `base` updated with this trial's `config`, starting from
    the weights of its `init` (resolved once by the tune job, in `sources`)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    configure_data()
    cfg = TrainConfig(**{**base, **config})
    source = sources.get(cfg.init) if cfg.init else None
    if source is not None:
        cfg = init_settings(cfg, source)
    storage_dir, storage_fs, _ = run_storage(storage_path)
    trial_id = ray.tune.get_context().get_trial_id()
    trainer = build_trainer(
        inputs,
        cfg,
        plan,
        name=f"{run_prefix}-{trial_id}",
        storage_dir=storage_dir,
        storage_fs=storage_fs,
        callbacks=[TuneReportCallback()],
        source=source,
    )
    trainer.fit()  # a Run: a user error in a worker fails this trial with its one line


# ---- MLflow: one child run per trial ------------------------------------------------------------


class TrialLogger(Callback):
    """Ray Tune callback: one MLflow child run per trial under the tune job's parent run, with the
    trial's parameters, the data it used (dataset inputs), its per-epoch metrics and, at its end,
    their curves as PNGs.

    A failure to log never stops tuning: it is counted in `failures` (reported by `mtl-ray tune`)
    and the checkpoints stay on storage for `mtl-ray register --checkpoint`.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        parent_run_id: str,
        max_epochs: int,
        checkpoint_prefix: str = "",
        profiles: dict[str, dict] | None = None,
    ):
        self.uri = uri
        self.profiles = profiles or {}
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.max_epochs = max_epochs
        self.checkpoint_prefix = checkpoint_prefix
        self.run_ids: dict[str, str] = {}
        self.epochs: dict[str, int] = {}
        self.failures = 0
        self.last_failure = ""

    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)

    def _safely(self, what: str, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:  # tracking must not take the tune job down with it
            self.failures += 1
            self.last_failure = f"{what}: {describe(exc)}"
            log.warning("mtl-ray: MLflow %s", self.last_failure)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._safely("start trial run", self._start, trial)

    def _start(self, trial) -> None:
        if trial.trial_id in self.run_ids:
            return
        client = self._client()
        found = self.trial_runs(client, trial.trial_id)  # a resumed search continues the trial's run
        if found:
            self.run_ids.update(found)
            return
        run = client.create_run(
            self.experiment,
            run_name=trial.trial_id,
            tags={tracking.PARENT_TAG: self.parent_run_id, tracking.TRIAL_TAG: trial.trial_id},
        )
        self.run_ids[trial.trial_id] = run.info.run_id
        for key, value in tracking.flat_params(trial.config).items():
            client.log_param(run.info.run_id, key, value)
        if self.profiles:
            tracking.log_datasets(client, run.info.run_id, self.profiles)

    def trial_runs(self, client=None, trial_id: str | None = None) -> dict[str, str]:
        """{trial id: run id} of the parent's child runs (of one trial when `trial_id` is given)."""
        query = f"tags.`{tracking.PARENT_TAG}` = '{self.parent_run_id}'"
        if trial_id:
            query += f" and tags.`{tracking.TRIAL_TAG}` = '{trial_id}'"
        runs = (client or self._client()).search_runs([self.experiment], filter_string=query, max_results=1000)
        return {r.data.tags[tracking.TRIAL_TAG]: r.info.run_id for r in runs if tracking.TRIAL_TAG in r.data.tags}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._safely("log epoch", self._result, trial, result)

    def _result(self, trial, result) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None or STEP_KEY in result:
            return
        from mlflow.entities import Metric

        epoch = int(result.get("epoch", 0))
        self.epochs[trial.trial_id] = epoch
        now = int(time.time() * 1000)
        client = self._client()
        client.log_batch(run_id, metrics=[Metric(k, v, now, epoch) for k, v in tracking.epoch_metrics(result).items()])
        if result.get("checkpoint_path"):
            client.set_tag(run_id, tracking.CHECKPOINT_TAG, self.checkpoint_prefix + result["checkpoint_path"])

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._safely("end trial run", self._end, trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._safely("end trial run", self._end, trial, "FAILED")

    def _end(self, trial, status: str) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        client = self._client()
        epochs = self.epochs.get(trial.trial_id, 0)
        client.set_tag(run_id, "mtl_ray.epochs", str(epochs))
        if status == "FINISHED" and epochs < self.max_epochs:
            client.set_tag(run_id, "mtl_ray.stopped_early", "true")
        client.set_terminated(run_id, status)
        tracking.log_curves(client, run_id)  # after the status, so a plotting failure cannot leave the run open


class TrialProgress(Callback):
    """Ray Tune callback: progress lines on the tune driver, a trial's start, each of its epochs, and
    its end with the reason (finished, stopped early by the scheduler, failed)."""

    def __init__(self, max_epochs: int, scheduler: str):
        self.max_epochs = max_epochs
        self.scheduler = scheduler
        self.printers: dict[str, progress.EpochPrinter] = {}

    def _printer(self, trial) -> progress.EpochPrinter:
        if trial.trial_id not in self.printers:
            self.printers[trial.trial_id] = progress.EpochPrinter(f"trial {trial.trial_id}", self.max_epochs)
        return self.printers[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._printer(trial)
        searched = ", ".join(f"{k}={_short(v)}" for k, v in trial.config.items())
        progress.say(f"trial {trial.trial_id} started: {searched}")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if STEP_KEY not in result:
            self._printer(trial)(result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        epochs = int((trial.last_result or {}).get("epoch", 0))
        why = "finished" if epochs >= self.max_epochs else f"stopped early by {self.scheduler}"
        progress.say(f"trial {trial.trial_id} {why} at epoch {epochs}/{self.max_epochs}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        error = trial.get_error()
        progress.say(f"trial {trial.trial_id} failed: {_trial_error(error) if error else 'see its error file'}")


# ---- 3. the tune job -------------------------------------------------------------------------


@dataclass
class TrialSummary:
    trial_id: str
    config: dict
    status: str  # completed | stopped_early | error
    epochs: int
    mean_auroc: float | None
    metric: float | None
    checkpoint: str | None
    run_id: str | None
    error: str | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TuneResult:
    name: str
    metric: str
    best: TrialSummary
    trials: list[TrialSummary]
    registered: registry.RegisterResult | None
    tracking_uri: str
    parent_run_id: str | None
    seconds: float
    tracking_failures: list[str] = field(default_factory=list)
    registration_error: str | None = None
    """Why registering the best trial failed (its checkpoint stays on storage); the exit code is then 1."""
    exit_code: int = 0

    def to_json(self) -> dict:
        best = {
            "config": self.best.config,
            "mean_auroc": self.best.mean_auroc,
            "trial_id": self.best.trial_id,
            "checkpoint": self.best.checkpoint,
            "run_id": self.best.run_id,
            "epochs": self.best.epochs,
        }
        return {
            "name": self.name,
            "metric": self.metric,
            "best": best,
            "trials": [t.to_json() for t in self.trials],
            "registered": self.registered.to_json() if self.registered else None,
            "registration_error": self.registration_error,
            "tracking_uri": tracking.masked(self.tracking_uri),
            "parent_run_id": self.parent_run_id,
            "seconds": self.seconds,
            "tracking_failures": self.tracking_failures,
        }

    def render(self) -> str:
        keys = sorted({k for t in self.trials for k in t.config})
        rows = [
            [t.trial_id, *(_short(t.config.get(k)) for k in keys), str(t.epochs), t.status, number(t.mean_auroc)]
            for t in self.trials
        ]
        lines = [
            f"tune {self.name}: {len(self.trials)} trials in {self.seconds:.0f} s, best by {self.metric}",
            *table(["trial", *keys, "epochs", "status", "mean_auroc"], rows),
            f"best {self.best.trial_id}: mean_auroc {number(self.best.mean_auroc)}, checkpoint {self.best.checkpoint}",
        ]
        if self.registered:
            lines.append(self.registered.render())
        if self.registration_error:
            lines.append(f"not registered: {self.registration_error}")
        shown = tracking.masked(self.tracking_uri)
        lines.append(f"tracking {shown} (browse: mlflow ui --backend-store-uri {shown})")
        lines += [f"warning: MLflow {f}" for f in self.tracking_failures]
        return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{v}" if k == "name" else f"{k}={v}" for k, v in value.items())
    return number(value) if isinstance(value, float) else str(value)


def init_sources(cfg: TuneConfig, where: str) -> dict[str, registry.InitSource]:
    """Every `init` the search can start from (`train.init`, or the values of `search.init`), loaded
    once here so that trials get their weights through Ray's object store."""
    values = [cfg.train.init]
    searched = cfg.search.get("init")
    if isinstance(searched, list):
        values += searched
    elif isinstance(searched, dict):
        values += list(searched.get("choice", []))
    starts = [v for v in dict.fromkeys(values) if v not in (None, "scratch", "none")]
    if "backbone" in cfg.search and starts:
        raise UserError(f"{where}: search.backbone and init together: a run from init takes the init's backbone")
    return {v: registry.resolve_init(v, cfg.train.backbone) for v in starts}


def _summaries(results, cfg: TuneConfig, max_epochs: int, logger: TrialLogger, prefix: str) -> list[TrialSummary]:
    out = []
    for r in results:
        m = r.metrics or {}
        trial_id = m.get("trial_id") or os.path.basename(r.path.rstrip("/"))
        epochs = int(m.get("epoch", 0))
        status = "error" if r.error else ("stopped_early" if epochs < max_epochs else "completed")
        ckpt = m.get("checkpoint_path")
        out.append(
            TrialSummary(
                trial_id=trial_id,
                config={k: r.config.get(k) for k in cfg.search},
                status=status,
                epochs=epochs,
                mean_auroc=m.get("mean_auroc"),
                metric=m.get(cfg.metric),
                checkpoint=f"{prefix}{ckpt}" if ckpt else None,
                run_id=logger.run_ids.get(trial_id),
                error=_trial_error(r.error) if r.error else None,
            )
        )
    return out


def _trial_error(error: BaseException) -> str:
    """A failed trial's one line: the user's mistake it hit (a bad image, say), else the exception's."""
    found = user_error_in(error)
    return str(found) if found else describe(error)


def _best(trials: list[TrialSummary], metric: str, mode: str) -> TrialSummary:
    scored = [t for t in trials if t.metric is not None and t.checkpoint]
    if not scored:
        errors = [f"{t.trial_id}: {t.error}" for t in trials if t.error]
        raise UserError(f"tune: no trial reported {metric}" + (f"; first failure: {errors[0]}" if errors else ""))
    return (max if mode == "max" else min)(scored, key=lambda t: t.metric)


def tune(
    data: str | None = None,
    *,
    val: str | None = None,
    config: TuneConfig | None = None,
    source: str = "config",
    name: str | None = None,
    storage_path: str | None = None,
    callbacks: Sequence[Callback] = (),
    resume: str | None = None,
) -> TuneResult:
    """Search `config.search` with Ray Tune, log every trial to MLflow, register the best.

    `data`/`val` default to the config's `data`/`val` keys (how `jobs/configs` name their shards);
    `callbacks` are more Ray Tune callbacks, called after the MLflow trial logger. `resume` names an
    interrupted search under the same storage to finish (Tune's restore: finished trials kept,
    unfinished ones resumed, errored ones restarted), logging into its MLflow runs.
    """
    import ray
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    cfg = config or TuneConfig()
    data, val = cfg.data_path(data, source), val or cfg.val
    mode = cfg.mode or REPORTED_METRICS.get(cfg.metric, "max")
    max_epochs = cfg.scheduler.max_epochs or cfg.train.epochs
    base = {**cfg.train.model_dump(), "epochs": max_epochs}
    sources = init_sources(cfg, source)
    inputs = prepare(data, cfg.train, val=val)
    forms = check_search(cfg, len(inputs.train.fmt.tasks), source, inputs.size)
    for init, found in sources.items():
        trained = found.size or inputs.size
        if tuple(trained) != tuple(inputs.size):
            raise UserError(
                f"{source}: init {init} was trained at {show_size(trained)} (HxW) but this search "
                f"prepares {show_size(inputs.size)}: set train.image_size to match"
            )
    if cfg.registry.enabled:
        registry.check_name(cfg.registry.name)
        registry.check_name(cfg.registry.alias, "alias")
    search_alg = search_algorithm(cfg.search_alg)
    storage_dir, storage_fs, shown = run_storage(storage_path or cfg.storage)
    storage_path = f"{shown}{storage_dir}"
    uri = tracking.tracking_uri(cfg.tracking.uri)
    client = tracking.connect(uri)

    if resume and name and name != resume:
        raise UserError(f"--resume {resume} and --name {name}: a resumed search keeps its name")
    tune_name = resume or name or cfg.name or f"tune-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment_dir = f"{storage_dir.rstrip('/')}/{tune_name}"
    if resume and not ray.tune.Tuner.can_restore(experiment_dir, storage_filesystem=storage_fs):
        raise UserError(f"--resume {resume}: no search of that name under {storage_path}")
    experiment = tracking.experiment_id(client, cfg.tracking.experiment)
    parent_id = _parent_run(client, experiment, tune_name) if resume else None
    if parent_id is None:
        parent = client.create_run(experiment, run_name=tune_name, tags={"mtl_ray.data": data, "mtl_ray.kind": "tune"})
        parent_id = parent.info.run_id
    for key, value in {
        "search": json.dumps(cfg.search),
        "search_alg": cfg.search_alg,
        "metric": cfg.metric,
        "mode": mode,
        "scheduler": cfg.scheduler.name,
        "max_epochs": str(max_epochs),
        "num_samples": str(cfg.num_samples),
        **tracking.flat_params(cfg.train.model_dump(), "train."),
    }.items():
        if not resume:
            client.log_param(parent_id, key, value)

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0, Tune prints no tables of its own
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # step checkpoints report no metric
    ensure_ray()
    cluster = ray.cluster_resources()
    plan = plan_resources(cfg.train, {**cluster, "CPU": cluster.get("CPU", 0) - DRIVER_CPUS})
    concurrency = cfg.max_concurrent_trials or concurrent_trials(plan, cluster)
    scheduler = (
        ASHAScheduler(
            time_attr="epoch",
            max_t=max_epochs,
            grace_period=min(cfg.scheduler.grace_period, max_epochs),
            reduction_factor=cfg.scheduler.reduction_factor,
        )
        if cfg.scheduler.name == "asha"
        else FIFOScheduler()
    )
    logger = TrialLogger(uri, experiment, parent_id, max_epochs, shown, inputs.profiles)
    trainable = ray.tune.with_parameters(
        train_driver,
        inputs=inputs,
        base=base,
        plan=plan,
        run_prefix=tune_name,
        storage_path=storage_path,
        sources=sources,
    )
    if resume:  # the restored run config keeps the first run's callbacks: a TrialLogger on the same parent run
        tuner = ray.tune.Tuner.restore(
            experiment_dir,
            ray.tune.with_resources(trainable, {"CPU": DRIVER_CPUS}),
            resume_unfinished=True,
            restart_errored=True,
            param_space=param_space(forms),
            storage_filesystem=storage_fs,
        )
    else:
        tuner = ray.tune.Tuner(
            ray.tune.with_resources(trainable, {"CPU": DRIVER_CPUS}),
            param_space=param_space(forms),
            tune_config=ray.tune.TuneConfig(
                metric=cfg.metric,
                mode=mode,
                scheduler=scheduler,
                search_alg=search_alg,
                num_samples=cfg.num_samples,
                max_concurrent_trials=concurrency,
            ),
            run_config=ray.tune.RunConfig(
                name=tune_name,
                storage_path=storage_dir,
                storage_filesystem=storage_fs,
                callbacks=[logger, TrialProgress(max_epochs, cfg.scheduler.name), *callbacks],
                failure_config=ray.tune.FailureConfig(max_failures=cfg.trial_max_failures),
                verbose=0,
            ),
        )
    started = time.perf_counter()
    results = tuner.fit()
    seconds = time.perf_counter() - started

    if resume:
        logger.run_ids.update(logger.trial_runs())  # the trials the first run logged
    trials = _summaries(results, cfg, max_epochs, logger, shown)
    failures = [logger.last_failure] if logger.failures else []
    try:
        best = _best(trials, cfg.metric, mode)
    finally:
        _close_parent(client, parent_id, trials, failures)
    registered, registration_error = None, None
    if cfg.registry.enabled:
        try:
            registered = registry.register_checkpoint(
                best.checkpoint,
                name=cfg.registry.name,
                alias=cfg.registry.alias,
                run_id=best.run_id,
                data=data,
                tracking_uri=uri,
                experiment=cfg.tracking.experiment,
            )
        except UserError as exc:  # the search is done and its best checkpoint kept: say so, then fail
            registration_error = str(exc)
    return TuneResult(
        name=tune_name,
        metric=cfg.metric,
        best=best,
        trials=trials,
        registered=registered,
        tracking_uri=uri,
        parent_run_id=parent_id,
        seconds=seconds,
        tracking_failures=failures,
        registration_error=registration_error,
        exit_code=1 if registration_error else 0,
    )


def _parent_run(client, experiment: str, name: str) -> str | None:
    """The MLflow parent run of the tune job `name`, if one was created."""
    runs = client.search_runs(
        [experiment], filter_string=f"tags.`mtl_ray.kind` = 'tune' and attributes.run_name = '{name}'", max_results=1
    )
    return runs[0].info.run_id if runs else None


def _close_parent(client, parent_id: str, trials: list[TrialSummary], failures: list[str]) -> None:
    """Best trial's numbers on the parent run; a tracking failure here only adds to `failures`."""
    try:
        scored = [t for t in trials if t.mean_auroc is not None]
        if scored:
            top = max(scored, key=lambda t: t.mean_auroc)
            client.log_metric(parent_id, "best_mean_auroc", float(top.mean_auroc))
            client.set_tag(parent_id, "mtl_ray.best_trial", top.trial_id)
        client.set_tag(
            parent_id,
            "mtl_ray.trials",
            json.dumps({s: sum(t.status == s for t in trials) for s in ("completed", "stopped_early", "error")}),
        )
        client.set_terminated(parent_id, "FINISHED")
    except Exception as exc:  # the trials' checkpoints are safe on storage either way
        failures.append(f"closing the parent run: {describe(exc)}")


def search_algorithm(name: str):
    if name != "optuna":
        return None
    try:
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch()
    except (ImportError, AssertionError):
        raise UserError("search_alg optuna needs the optuna package: pip install 'mtl-ray[optuna]'") from None
