"""2. One Tune trial's driver, as in Ray's `train_tune_interop.py`: a plain function that builds and
fits the `TorchTrainer` of `mtl_ray.training.worker.worker_loop` with the trial's config, its Train
run named after the trial id so that a trial Tune restarts resumes from its last checkpoint."""

from __future__ import annotations

import hashlib

from mtl_ray.cluster.resources import ResourcePlan
from mtl_ray.cluster.runtime import configure_data, run_storage
from mtl_ray.config import TrainConfig
from mtl_ray.registry.sources import InitSource
from mtl_ray.training.driver import build_trainer, init_settings
from mtl_ray.training.inputs import Inputs

DRIVER_CPUS = 0.01  # a trial's driver only waits on its TorchTrainer; Tune refuses zero resources


def concurrent_trials(plan: ResourcePlan, nodes: list[dict[str, float]]) -> int:
    """Trials that fit side by side on `nodes`, each with its workers and its own CPU reserve for Ray Data."""
    per_trial = DRIVER_CPUS + plan.workers * plan.cpus_per_worker + plan.data_cpus
    fits = max(1, int(sum(float(n.get("CPU", 0)) for n in nodes) // per_trial))
    if plan.use_gpu:
        fits = min(fits, max(1, int(sum(float(n.get("GPU", 0)) for n in nodes) // plan.workers)))
    return fits


def overcommitted(requested: int | None, fits: int, plan: ResourcePlan) -> str | None:
    """The line to print when `max_concurrent_trials` asks for more trials than `fits`: the extra
    trials' workers take the CPUs Ray Data needs, and a trial whose stream gets none waits without end."""
    if requested is None or requested <= fits:
        return None
    return (
        f"max_concurrent_trials {requested}: this cluster holds {fits} trial(s) side by side, each with "
        f"{plan.workers} worker(s) and {plan.data_cpus:g} CPU(s) for Ray Data; the others take CPUs their Ray Data "
        "streams need and may wait for them without end (seen on 2 cores: both trials stuck before epoch 1)"
    )


def trial_bundles(plan: ResourcePlan) -> list[dict[str, float]]:
    """One trial's resources as autoscaler bundles: each worker (with its GPU) and its Ray Data CPUs."""
    worker = {**plan.resources_per_worker, **({"GPU": 1.0} if plan.use_gpu else {})}
    return [worker] * plan.workers + [{"CPU": plan.data_cpus}]


def trial_limiter(search_alg, limit: int):
    """The search algorithm behind a concurrency limit that can change while the search runs
    (`FollowCluster`): Tune's `BasicVariantGenerator` for random/grid search, else a `ConcurrencyLimiter`."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if search_alg is None:
        return BasicVariantGenerator(max_concurrent=limit)
    return ConcurrencyLimiter(search_alg, max_concurrent=limit)


def train_driver(
    config: dict,
    *,
    inputs: Inputs,
    base: dict,
    plan: ResourcePlan,
    run_prefix: str,
    storage_path: str | None,
    sources: dict[str, InitSource],
    from_tune_checkpoint: bool = False,
) -> None:
    """One Tune trial: fit a TorchTrainer on `base` updated with this trial's `config`, starting from
    the weights of its `init` (resolved once by the tune job, in `sources`).

    With `from_tune_checkpoint` (PBT), a trial Tune hands a checkpoint to (another trial's, which it
    exploits, or its own on a restart) continues from it in a Train run named after the checkpoint:
    a run under the trial's own name would resume its own last checkpoint instead."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    configure_data()
    cfg = TrainConfig(**{**base, **config})
    source = sources.get(cfg.init) if cfg.init else None
    if source is not None:
        cfg = init_settings(cfg, source)
    storage_dir, storage_fs, _ = run_storage(storage_path)
    trial_id = ray.tune.get_context().get_trial_id()
    start = ray.tune.get_checkpoint() if from_tune_checkpoint else None
    name = f"{run_prefix}-{trial_id}"
    if start is not None:
        name += "-from-" + hashlib.sha1(start.path.encode()).hexdigest()[:8]
    trainer = build_trainer(
        inputs,
        cfg,
        plan,
        name=name,
        resume_from=start,
        storage_dir=storage_dir,
        storage_fs=storage_fs,
        callbacks=[TuneReportCallback()],
        source=source,
    )
    trainer.fit()  # a Run: a user error in a worker fails this trial with its one line
