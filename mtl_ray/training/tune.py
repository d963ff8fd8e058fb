"""Ray Tune over backbone size, task weighting and learning rate; MLflow tracking; the best registered.

Numbered like Ray's `train_tune_interop.py`:
1. `mtl_ray.training.worker.worker_loop` runs on every Ray Train worker of a trial, as in `mtl-ray train`.
2. `mtl_ray.training.trial.train_driver` is one Tune trial: it builds and fits a `TorchTrainer` whose
   `TuneReportCallback` hands each epoch's report (rank 0's metrics and checkpoint) to Tune. The Train
   run is named after the trial id, so a trial that Tune restarts resumes from its last checkpoint.
3. `tune` is the job, in named steps: `plan_job` checks the data, the search space and the registry
   names before Ray starts; `open_parent_run` makes (or, resuming, finds) the job's MLflow run;
   `run_search` sizes trials so Ray Data keeps its CPUs and runs the Tuner with ASHA, logging to
   MLflow from this process only (`TrialLogger`); `register_best` registers the best trial's
   checkpoint behind the gated alias (`mtl_ray.registry.register`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback

from mtl_ray import progress
from mtl_ray.cluster.runtime import alive_nodes, check_shared, ensure_ray, here, run_storage
from mtl_ray.config import TuneConfig
from mtl_ray.data.images import show_size
from mtl_ray.errors import UserError, describe
from mtl_ray.registry import tracking
from mtl_ray.registry.register import RegisterResult, check_name, register_checkpoint
from mtl_ray.registry.sources import InitSource
from mtl_ray.result import Result, number, table
from mtl_ray.training.driver import when_ready_to_train
from mtl_ray.training.inputs import Inputs, prepare
from mtl_ray.training.search import (
    REPORTED_METRICS,
    build_scheduler,
    check_pbt,
    check_search,
    init_sources,
    param_space,
    search_algorithm,
)
from mtl_ray.training.trial import (
    DRIVER_CPUS,
    concurrent_trials,
    overcommitted,
    train_driver,
    trial_bundles,
    trial_limiter,
)
from mtl_ray.training.trial_callbacks import FollowCluster, TrialLogger, TrialProgress, short, trial_error

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


@dataclass
class TuneResult(Result):
    name: str
    metric: str
    best: TrialSummary
    trials: list[TrialSummary]
    registered: RegisterResult | None
    tracking_uri: str
    parent_run_id: str | None
    seconds: float
    tracking_failures: list[str] = field(default_factory=list)
    registration_error: str | None = None
    """Why registering the best trial failed (its checkpoint stays on storage); the exit code is then 1."""

    @property
    def exit_code(self) -> int:
        return 1 if self.registration_error else 0

    def to_json(self) -> dict:
        keys = ("config", "mean_auroc", "trial_id", "checkpoint", "run_id", "epochs")
        return {
            **super().to_json(),
            "best": {k: getattr(self.best, k) for k in keys},
            "tracking_uri": tracking.masked(self.tracking_uri),
        }

    def render(self) -> str:
        keys = sorted({k for t in self.trials for k in t.config})
        rows = [
            [t.trial_id, *(short(t.config.get(k)) for k in keys), str(t.epochs), t.status, number(t.mean_auroc)]
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


@dataclass(frozen=True)
class TuneJob:
    """A tune job checked before Ray starts: what it searches, on which inputs, where it writes."""

    cfg: TuneConfig
    data: str
    name: str
    mode: str
    max_epochs: int
    base: dict
    """TrainConfig keys every trial starts from (`train:`, with the scheduler's epochs)."""
    inputs: Inputs
    forms: dict[str, tuple[str, list[Any]]]
    sources: dict[str, InitSource]
    storage_dir: str
    storage_fs: object | None
    shown: str
    """The storage's display prefix (`s3://` or none)."""
    uri: str
    resume: bool
    search_alg: object | None
    """Optuna's searcher when `search_alg: optuna`, else None (Tune's grid and random search)."""

    @property
    def storage_path(self) -> str:
        return f"{self.shown}{self.storage_dir}"

    @property
    def experiment_dir(self) -> str:
        return f"{self.storage_dir.rstrip('/')}/{self.name}"


def plan_job(
    data: str | None,
    *,
    val: str | None,
    config: TuneConfig | None,
    source: str,
    name: str | None,
    storage_path: str | None,
    resume: str | None,
) -> TuneJob:
    """Every check that needs no running Ray: data, the search space, `init` sources, registry names,
    the search algorithm, and for `resume` that the search exists."""
    import ray.tune

    cfg = config or TuneConfig()
    data, val = cfg.data_path(data, source), val or cfg.val
    max_epochs = cfg.scheduler.max_epochs or cfg.train.epochs
    sources = init_sources(cfg, source)
    inputs = prepare(data, cfg.train, val=val)
    forms = check_search(cfg, list(inputs.train.fmt.tasks), source, inputs.size)
    if cfg.scheduler.name == "pbt":
        check_pbt(forms, source)
    for init, found in sources.items():
        trained = found.size or inputs.size
        if tuple(trained) != tuple(inputs.size):
            raise UserError(
                f"{source}: init {init} was trained at {show_size(trained)} (HxW) but this search "
                f"prepares {show_size(inputs.size)}: set train.image_size to match"
            )
    if cfg.registry.enabled:
        check_name(cfg.registry.name)
        check_name(cfg.registry.alias, "alias")
    alg = search_algorithm(cfg.search_alg)
    storage_dir, storage_fs, shown = run_storage(storage_path or cfg.storage)
    if resume and name and name != resume:
        raise UserError(f"--resume {resume} and --name {name}: a resumed search keeps its name")
    if resume and not ray.tune.Tuner.can_restore(f"{storage_dir.rstrip('/')}/{resume}", storage_filesystem=storage_fs):
        raise UserError(f"--resume {resume}: no search of that name under {shown}{storage_dir}")
    return TuneJob(
        cfg=cfg,
        data=data,
        name=resume or name or cfg.name or f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
        mode=cfg.mode or REPORTED_METRICS.get(cfg.metric, "max"),
        max_epochs=max_epochs,
        base={**cfg.train.model_dump(), "epochs": max_epochs},
        inputs=inputs,
        forms=forms,
        sources=sources,
        storage_dir=storage_dir,
        storage_fs=storage_fs,
        shown=shown,
        uri=tracking.tracking_uri(cfg.tracking.uri),
        resume=bool(resume),
        search_alg=alg,
    )


def open_parent_run(job: TuneJob, client) -> tuple[str, str]:
    """(experiment id, parent run id): the job's MLflow run with its search parameters, or the run a
    resumed job made the first time."""
    cfg = job.cfg
    experiment = tracking.experiment_id(client, cfg.tracking.experiment)
    parent_id = _parent_run(client, experiment, job.name) if job.resume else None
    if parent_id is not None:
        return experiment, parent_id
    parent_id = client.create_run(
        experiment, run_name=job.name, tags={"mtl_ray.data": job.data, "mtl_ray.kind": "tune"}
    ).info.run_id
    params = {
        "search": json.dumps(cfg.search),
        "search_alg": cfg.search_alg,
        "metric": cfg.metric,
        "mode": job.mode,
        "scheduler": cfg.scheduler.name,
        "max_epochs": str(job.max_epochs),
        "num_samples": str(cfg.num_samples),
        **tracking.flat_params(cfg.train.model_dump(), "train."),
    }
    tracking.log_params(client, parent_id, params)
    return experiment, parent_id


def run_search(job: TuneJob, logger: TrialLogger, callbacks: Sequence[Callback]):
    """Start or join Ray, size the trials, and run (or restore) the Tuner; its `ResultGrid`."""
    import ray
    import ray.tune

    cfg = job.cfg
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0, Tune prints no tables of its own
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # step checkpoints report no metric
    ensure_ray()
    paths = {"--data": job.data, "--val": job.inputs.val_rows()["path"], "--storage": job.storage_path}
    check_shared(paths, cfg.train.storage_shared)
    plan, wait = when_ready_to_train(cfg.train, reserve_cpus=DRIVER_CPUS)
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(
            train_driver,
            inputs=job.inputs,
            base=job.base,
            plan=plan,
            run_prefix=job.name,
            storage_path=job.storage_path,
            sources=job.sources,
            from_tune_checkpoint=cfg.scheduler.name == "pbt",
        ),
        here(DRIVER_CPUS),  # trial drivers, and their Train controllers, stay on this node
    )
    if job.resume:  # the restored run config keeps the first run's callbacks: a TrialLogger on the same parent run
        return _restored(job, trainable).fit()
    snapshots = f"{job.experiment_dir}-pbt-snapshots"
    scheduler = build_scheduler(cfg.scheduler, job.max_epochs, job.forms, snapshots, job.storage_fs)
    following = []
    search_alg = job.search_alg
    fits = concurrent_trials(plan, alive_nodes())
    if warning := overcommitted(cfg.max_concurrent_trials, fits, plan):
        progress.say(warning)
    if cfg.max_concurrent_trials is None:
        search_alg = trial_limiter(search_alg, fits)
        grid = math.prod(len(values) for form, values in job.forms.values() if form == "grid")
        following = [
            FollowCluster(
                search_alg,
                lambda nodes: concurrent_trials(plan, nodes),
                wanted=cfg.num_samples * (grid if job.search_alg is None else 1),
                ask=trial_bundles(plan) if wait > 0 else None,  # a cluster this job joined may grow
            )
        ]
    tuner = ray.tune.Tuner(
        trainable,
        param_space=param_space(job.forms),
        tune_config=ray.tune.TuneConfig(
            metric=cfg.metric,
            mode=job.mode,
            scheduler=scheduler,
            search_alg=search_alg,
            num_samples=cfg.num_samples,
            max_concurrent_trials=cfg.max_concurrent_trials,
        ),
        run_config=ray.tune.RunConfig(
            name=job.name,
            storage_path=job.storage_dir,
            storage_filesystem=job.storage_fs,
            callbacks=[logger, TrialProgress(job.max_epochs, cfg.scheduler.name), *following, *callbacks],
            failure_config=ray.tune.FailureConfig(max_failures=cfg.trial_max_failures),
            verbose=0,
        ),
    )
    return tuner.fit()


def _restored(job: TuneJob, trainable):
    """The Tuner of an interrupted search (Tune's restore: finished trials kept, unfinished ones
    resumed, errored ones restarted). Its saved state names the classes of the code that started it:
    a search started before mtl-ray's packages by stage names modules that no longer exist."""
    import ray.tune

    try:
        return ray.tune.Tuner.restore(
            job.experiment_dir,
            trainable,
            resume_unfinished=True,
            restart_errored=True,
            param_space=param_space(job.forms),
            storage_filesystem=job.storage_fs,
        )
    except (ModuleNotFoundError, AttributeError) as exc:
        raise UserError(
            f"--resume {job.name}: the search was started by another version of mtl-ray and its saved state "
            f"cannot be read by this one ({describe(exc)}); finish it with that version, or start a new search"
        ) from None


def summarise(results, job: TuneJob, logger: TrialLogger) -> list[TrialSummary]:
    """One `TrialSummary` per trial of the `ResultGrid`, with its MLflow run."""
    if job.resume:
        logger.run_ids.update(logger.trial_runs())  # the trials the first run logged
    out = []
    for r in results:
        m = r.metrics or {}
        trial_id = m.get("trial_id") or os.path.basename(r.path.rstrip("/"))
        epochs = int(m.get("epoch", 0))
        status = "error" if r.error else ("stopped_early" if epochs < job.max_epochs else "completed")
        ckpt = m.get("checkpoint_path")
        out.append(
            TrialSummary(
                trial_id=trial_id,
                config={k: r.config.get(k) for k in job.cfg.search},
                status=status,
                epochs=epochs,
                mean_auroc=m.get("mean_auroc"),
                metric=m.get(job.cfg.metric),
                checkpoint=f"{job.shown}{ckpt}" if ckpt else None,
                run_id=logger.run_ids.get(trial_id),
                error=trial_error(r.error) if r.error else None,
            )
        )
    return out


def _best(trials: list[TrialSummary], metric: str, mode: str) -> TrialSummary:
    scored = [t for t in trials if t.metric is not None and t.checkpoint]
    if not scored:
        errors = [f"{t.trial_id}: {t.error}" for t in trials if t.error]
        raise UserError(f"tune: no trial reported {metric}" + (f"; first failure: {errors[0]}" if errors else ""))
    return (max if mode == "max" else min)(scored, key=lambda t: t.metric)


def register_best(job: TuneJob, best: TrialSummary) -> tuple[RegisterResult | None, str | None]:
    """(the registration, why it failed): a failure leaves the search's checkpoints on storage."""
    if not job.cfg.registry.enabled:
        return None, None
    try:
        return (
            register_checkpoint(
                best.checkpoint,
                name=job.cfg.registry.name,
                alias=job.cfg.registry.alias,
                run_id=best.run_id,
                data=job.data,
                tracking_uri=job.uri,
                experiment=job.cfg.tracking.experiment,
            ),
            None,
        )
    except UserError as exc:
        return None, str(exc)


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
    interrupted search under the same storage to finish, logging into its MLflow runs.
    """
    job = plan_job(data, val=val, config=config, source=source, name=name, storage_path=storage_path, resume=resume)
    client = tracking.connect(job.uri)
    experiment, parent_id = open_parent_run(job, client)
    logger = TrialLogger(job.uri, experiment, parent_id, job.max_epochs, job.shown, job.inputs.profiles)
    started = time.perf_counter()
    results = run_search(job, logger, callbacks)
    seconds = time.perf_counter() - started
    trials = summarise(results, job, logger)
    failures = [logger.last_failure] if logger.failures else []
    try:
        best = _best(trials, job.cfg.metric, job.mode)
    finally:
        _close_parent(client, parent_id, trials, failures)
    registered, registration_error = register_best(job, best)
    return TuneResult(
        name=job.name,
        metric=job.cfg.metric,
        best=best,
        trials=trials,
        registered=registered,
        tracking_uri=job.uri,
        parent_run_id=parent_id,
        seconds=seconds,
        tracking_failures=failures,
        registration_error=registration_error,
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
