"""The search space of `mtl-ray tune`: every key and value of a config's `search:` checked as a
TrainConfig would check it, before Ray starts, and turned into Ray Tune domains; the `init` sources
a search starts from, loaded once; the search algorithm."""

from __future__ import annotations

from typing import Any

from mtl_ray.config import SchedulerConfig, TrainConfig, TuneConfig, parse
from mtl_ray.errors import UserError
from mtl_ray.model.checks import check_model_config
from mtl_ray.registry.sources import InitSource, resolve_init

REPORTED_METRICS = {"mean_auroc": "max", "train_loss": "min"}
DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")
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
    "storage_shared",
    "resource_wait_s",
)


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
    cfg: TuneConfig, tasks: list[str], source: str, size: tuple[int, int] | None = None
) -> dict[str, tuple[str, list[Any]]]:
    """Every search key and value checked as a TrainConfig would check it (for `tasks`, at image `size`),
    before Ray starts."""
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
                check_model_config(parse(TrainConfig, {**base, key: v}, where), tasks, size)
            except UserError as exc:
                raise UserError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
        forms[key] = (form, values)
    return forms


PBT_FIXED = ("backbone", "heads", "groups", "init", "trunk")
"""Keys PBT cannot change in a running trial: its checkpoint holds a network of that shape and start."""


def check_pbt(forms: dict[str, tuple[str, list[Any]]], source: str) -> None:
    """With `scheduler: pbt`, every searched key must be one a trial can take over from another's
    checkpoint: not the network's shape or start, and one weighting method (its state is checkpointed)."""
    for key in PBT_FIXED:
        if key in forms:
            raise UserError(
                f"{source}: search.{key} with scheduler pbt: a trial continues from another's checkpoint, "
                f"so {key} cannot differ between trials; search lr, weight_decay or the weighting's parameters"
            )
    if "weighting" in forms:
        names = {v["name"] for v in forms["weighting"][1]}
        if len(names) > 1:
            raise UserError(
                f"{source}: search.weighting with scheduler pbt: one method's parameters can be searched "
                f"(its state is in the checkpoints trials exchange), not several methods ({', '.join(sorted(names))})"
            )


def mutations(forms: dict[str, tuple[str, list[Any]]]) -> dict[str, Any]:
    """PBT's `hyperparam_mutations`: a list's values (PBT moves to a neighbour or resamples), a
    distribution as its Tune domain."""
    space = param_space(forms)
    return {key: values if form in ("grid", "choice") else space[key] for key, (form, values) in forms.items()}


def build_scheduler(
    chosen: SchedulerConfig,
    max_epochs: int,
    forms: dict[str, tuple[str, list[Any]]],
    snapshots: str = "",
    storage_filesystem=None,
):
    """Tune's trial scheduler for `scheduler:`: ASHA on epochs, FIFO, or PBT over the searched keys
    (`TrainPBT`: the checkpoints it hands over copied under `snapshots`, on `storage_filesystem`)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from mtl_ray.training.pbt import TrainPBT

    if chosen.name == "asha":
        return ASHAScheduler(
            time_attr="epoch",
            max_t=max_epochs,
            grace_period=min(chosen.grace_period, max_epochs),
            reduction_factor=chosen.reduction_factor,
        )
    if chosen.name == "pbt":
        return TrainPBT(
            snapshots=snapshots,
            storage_filesystem=storage_filesystem,
            time_attr="epoch",
            perturbation_interval=chosen.perturbation_interval,
            hyperparam_mutations=mutations(forms),
            quantile_fraction=chosen.quantile_fraction,
            resample_probability=chosen.resample_probability,
        )
    return FIFOScheduler()


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


def init_sources(cfg: TuneConfig, where: str) -> dict[str, InitSource]:
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
    return {v: resolve_init(v, cfg.train.backbone) for v in starts}


def search_algorithm(name: str):
    if name != "optuna":
        return None
    try:
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch()
    except (ImportError, AssertionError):
        raise UserError("search_alg optuna needs the optuna package: pip install 'mtl-ray[optuna]'") from None
