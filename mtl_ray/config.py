"""Run configuration: pydantic models loaded from YAML, with errors that name the offending key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from mtl_ray.errors import UserError

M = TypeVar("M", bound=BaseModel)

DEFAULT_MODEL_NAME = "mtl-ray"
"""The registered model every registration goes to unless told otherwise."""
DEFAULT_ALIAS = "champion"
"""The gated alias: it moves to a new version only when that version wins the gate."""
DEFAULT_EXPERIMENT = "mtl-ray"
DEFAULT_STORAGE = "mtl-ray-runs"
"""Where checkpoints go when no storage is given (relative to the working directory)."""
STL_PATIENCE = 3
"""Epochs without a better validation AUROC after which `compare` stops a single-task network."""
AFFINITY_STEPS = 200
"""Steps of `advise --groups`' joint run that measures inter-task affinity: on the two-family world
(`mtl_ray.data.synth.families`) 60 steps found the families on 2 seeds of 3, 100 and 200 on all 3."""


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class WeightingConfig(BaseModel):
    """`weighting: {name: gradnorm, alpha: 1.5}`: a method name plus that method's parameters.

    The parameters are checked against the method by `mtl_ray.weighting.get` (which lists the
    valid ones) before Ray starts.
    """

    model_config = ConfigDict(extra="allow")

    name: str = Field(
        "gradnorm",
        description=(
            "task weighting: equal, static, uncertainty, gradnorm, dwa, pcgrad, famo, imtl, cagrad, aligned, "
            "mgda_ub (parameters via --config)"
        ),
    )

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainConfig(Strict):
    """One training run: model, optimisation, and how many Ray Train workers.

    The defaults serve a label-starved task (docs/compare.md has the measurements behind them): a
    backbone big enough for every task (`m`; Caruana: multi-task learning hurts only a network too
    small), ten epochs, the `sqrt` loss reduction (a task labeled on a fraction f of the rows weighs
    1/√f more than under the seed's J, which stays available as `seed`) and GradNorm weighting
    (slow-learning tasks get more weight).
    """

    backbone: str = Field("m", description="backbone name (see docs/models.md); with init, the init's")
    heads: Literal["linear", "tower"] = Field(
        "linear",
        description="per task on the shared features: a linear head, or a tower (a hidden layer of the features' "
        "width that only that task trains, then its linear head); with init, the init's",
    )
    groups: str | None = Field(
        None,
        description="tasks in groups, one network per group with nothing shared between groups: 'a,b|c' (what "
        "`advise --groups` recommends); default: one network shares every task",
    )
    epochs: int = Field(10, ge=1, description="passes over the training rows")
    batch_size: int = Field(32, ge=1, description="per worker; small batches give more steps on small data")
    lr: float = Field(3e-3, gt=0)
    lr_schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="cosine: lr decays per epoch to near 0 at the last"
    )
    weight_decay: float = Field(1e-4, ge=0)
    loss_reduction: Literal["seed", "labeled", "per_task", "sqrt"] = "sqrt"
    weighting: WeightingConfig = Field(default_factory=WeightingConfig)
    image_size: int | tuple[int, int] | None = Field(
        None, description="S or [H, W]; default: the shards' size when all images share one, else 64×64"
    )
    resize: Literal["letterbox", "squash", "center_crop"] = Field(
        "letterbox", description="to image_size: keep the whole frame and pad (letterbox), stretch, or fill and crop"
    )
    strict: bool = Field(False, description="an unreadable image stops the run instead of being skipped and counted")
    decode: Literal["auto", "tasks", "worker"] = Field(
        "auto",
        description="where JPEG training images are decoded: in Ray Data tasks on CPUs, or in the training worker "
        "(nvJPEG on its GPU); auto: the worker on GPU runs with torchvision when the rows are streamed, not cached",
    )
    workers: int | tuple[int, int] | None = Field(
        None,
        description="Ray Train workers, N or MIN-MAX (elastic: a run that loses a node goes on with fewer, and "
        "grows back when one joins); default: 1 per GPU with --gpu, else 2",
    )
    gpu: bool = Field(
        False,
        description="train on GPUs (1 per worker); a cluster without enough is waited for up to --resource-wait "
        "seconds, asking Ray's autoscaler for them",
    )
    cpus_per_worker: float | None = Field(None, gt=0, description="default: leave at least 1 CPU to Ray Data")
    num_to_keep: int = Field(2, ge=1, description="checkpoints kept on storage")
    storage_shared: bool = Field(
        False,
        description="every node mounts the local --data, --val and --storage paths (a shared file system): "
        "do not refuse them on a cluster of several nodes",
    )
    resource_wait_s: float | None = Field(
        None,
        ge=0,
        description="seconds a run waits for GPUs or CPUs the cluster lacks (asking Ray's autoscaler for them), "
        "at the start or after a node is lost, before it stops; default: 600 on a cluster this process joined "
        "(it may grow), 0 on a Ray that mtl-ray started here",
    )
    max_failures: int = Field(
        2, ge=0, description="worker-group restarts (from the last checkpoint) before the run fails; a lost spot node"
    )
    checkpoint_every_steps: int = Field(
        0,
        ge=0,
        description="also checkpoint every N steps inside an epoch (0: at epoch ends only); a resumed run restarts "
        "the interrupted epoch's stream with the weights of its last step checkpoint",
    )
    max_nonfinite_steps: int = Field(
        10, ge=1, description="steps in a row with a NaN or inf loss or gradient (each skipped) before the run stops"
    )
    shuffle_buffer: int = Field(
        1024, ge=0, description="rows each worker shuffles its stream in, anew each epoch; 0 = off"
    )
    init: str | None = Field(
        None,
        description="start from models:/NAME@ALIAS, models:/NAME/VERSION, a checkpoint (directory or s3://) or "
        "torchvision (ImageNet weights of a resnet backbone); scratch or none: random weights",
    )
    trunk: Literal["fine_tune", "freeze"] = Field("fine_tune", description="with init: train the trunk or keep it")
    trunk_lr_scale: float = Field(
        1.0, gt=0, description="with init: the trunk's learning rate as a multiple of lr (from scratch: lr)"
    )
    patience: int | None = Field(
        None,
        ge=1,
        description="early stopping: end the run after this many epochs without a better validation mean AUROC "
        "(the best epoch is reported beside the last); default: train every epoch",
    )
    epoch_rows: int | None = Field(
        None, ge=1, description="rows an epoch streams: the training rows repeated to about this many; default once"
    )
    seed: int = 0

    @field_validator("image_size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        pair = isinstance(value, (list, tuple)) and len(value) == 2
        parts = list(value) if pair else [value]
        if value is not None and not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in parts):
            raise ValueError("expected a positive integer S or [H, W]")
        return tuple(value) if pair else value

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if isinstance(value, str):  # from a flag: "N" or "MIN-MAX"
            value = value.split("-", 1) if "-" in value else int(value) if value.strip().isdigit() else value
        if isinstance(value, (list, tuple)):
            try:
                low, high = (int(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError("expected N or MIN-MAX workers") from None
            if not 1 <= low <= high:
                raise ValueError("expected MIN-MAX with 1 <= MIN <= MAX")
            return (low, high) if low < high else low
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError("expected a positive number of workers, or MIN-MAX")
        return value

    @field_validator("decode")
    @classmethod
    def _decode(cls, value: str, info: ValidationInfo) -> str:
        if value == "worker" and info.data.get("strict"):
            raise ValueError("worker decoding cannot name the row of an unreadable image: with strict, use tasks")
        return value

    @field_validator("init", mode="before")
    @classmethod
    def _init(cls, value: Any) -> Any:
        return None if value in ("scratch", "none", "") else value

    def size(self) -> tuple[int, int] | None:
        """`image_size` as (height, width), or None for the data's own size."""
        from mtl_ray.data.images import as_size

        return as_size(self.image_size)


def _location(error: dict) -> str:
    return ".".join(str(part) for part in error["loc"]) or "(top level)"


def _one_line(exc: ValidationError, source: str) -> str:
    first = exc.errors()[0]
    key = _location(first)
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key {key!r}"
    return f"{source}: key {key!r}: {first['msg']} (got {first.get('input')!r})"


def parse(model: type[M], data: dict[str, Any], source: str) -> M:
    """Validate a mapping into `model`, turning the first validation error into a one-line UserError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UserError(_one_line(exc, source)) from None


def load_yaml(path: str | None, label: str | None = None) -> dict[str, Any]:
    """A YAML (or JSON) mapping from `path` ({} for None); errors name the file as `label` (default: its path)."""
    if path is None:
        return {}
    label = label or path
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UserError(f"{label}: cannot read ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{label}:{where} not valid YAML or JSON") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{label}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def load(model: type[M], path: str | None, overrides: dict[str, Any] | None = None) -> M:
    """Config from YAML, then CLI overrides on top (overrides equal to None keep the file's value)."""
    return _overridden(model, load_yaml(path), overrides, path)


def _overridden(model: type[M], data: dict[str, Any], overrides: dict[str, Any] | None, path: str | None) -> M:
    merged = {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return parse(model, merged, path or "config")


class SchedulerConfig(Strict):
    """ASHA early stopping (`asha`, the default), none (`fifo`: every trial runs all epochs), or
    Population Based Training (`pbt`: every `perturbation_interval` epochs a trial in the bottom
    `quantile_fraction` continues from a top trial's checkpoint, model and weighting state included,
    with that trial's searched values perturbed; Ray Tune's `PopulationBasedTraining`)."""

    name: Literal["asha", "fifo", "pbt"] = "asha"
    grace_period: int = Field(1, ge=1, description="epochs every trial gets before ASHA may stop it")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA keeps the top 1/reduction_factor at each rung")
    max_epochs: int | None = Field(None, ge=1, description="default: train.epochs")
    perturbation_interval: int = Field(2, ge=1, description="PBT: epochs between exploit/explore decisions")
    quantile_fraction: float = Field(
        0.25, gt=0, le=0.5, description="PBT: the bottom share of trials that copies the top share"
    )
    resample_probability: float = Field(
        0.25, ge=0, le=1, description="PBT: chance a value is drawn anew from the search space instead of perturbed"
    )


class TrackingConfig(Strict):
    """Where MLflow runs go; `uri` defaults to MLFLOW_TRACKING_URI, else sqlite:///mlruns.db."""

    uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT


class RegistryConfig(Strict):
    """The registered model the best trial becomes a version of, and its gated alias."""

    name: str = DEFAULT_MODEL_NAME
    alias: str = DEFAULT_ALIAS
    enabled: bool = Field(True, description="register the best trial's checkpoint")


class TuneConfig(Strict):
    """`mtl-ray tune`: fixed training settings, the search space over them, and how to search.

    `search` maps TrainConfig keys to a list of values (a grid axis; a categorical choice with
    Optuna) or to one distribution `{loguniform: [low, high]}`, `{uniform: [low, high]}`,
    `{randint: [low, high]}`, `{choice: [...]}`. Weighting choices are method names or
    `{name: ..., <param>: ...}` mappings, so static weight vectors are searchable too.
    """

    data: str | None = Field(
        None, description="training shards, a directory or s3://bucket/prefix (rows with split 'train' or none)"
    )
    val: str | None = Field(None, description="validation shards (default: the 'val' split of the data)")
    train: TrainConfig = Field(default_factory=TrainConfig)
    search: dict[str, Any] = Field(default_factory=dict)
    search_alg: Literal["grid", "optuna"] = "grid"
    num_samples: int = Field(1, ge=1, description="grid: repeats of the grid; optuna: number of trials")
    metric: str = "mean_auroc"
    mode: Literal["max", "min"] | None = None
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: as many as the cluster fits")
    trial_max_failures: int = Field(0, ge=0, description="restarts of a failed trial (it resumes from its checkpoint)")
    storage: str | None = Field(
        None, description=f"where checkpoints go: a directory or s3://bucket/prefix (default ./{DEFAULT_STORAGE})"
    )
    name: str | None = Field(None, description="tune job name (default tune-DATE-TIME); trials' runs are NAME-TRIAL_ID")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)

    def data_path(self, data: str | None, source: str) -> str:
        """`data` (a --data flag), else this config's `data` key; a one-line error when neither is set."""
        if not (data or self.data):
            raise UserError(f"{source}: no training data: pass --data PATH or set `data:` in the config")
        return data or self.data


class ServeConfig(Strict):
    """What `mtl-ray serve` and a Serve config file's `args` set (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    model: str = Field(
        description="models:/NAME@ALIAS (its moves are followed), models:/NAME/VERSION, runs:/ID/model, or a checkpoint"
    )
    tracking_uri: str | None = Field(None, description="default: MLFLOW_TRACKING_URI, else sqlite:///mlruns.db")
    min_replicas: int = Field(1, ge=0, description="replicas kept running")
    max_replicas: int = Field(1, ge=1, description="replicas the autoscaler may add under load")
    target_ongoing_requests: float = Field(8.0, gt=0, description="requests per replica the autoscaler aims at")
    max_batch_size: int = Field(16, ge=1, description="requests answered by one forward pass, at most")
    batch_wait_ms: float = Field(2.0, ge=0, description="how long a batch waits to fill")
    max_ongoing_requests: int = Field(
        64, ge=1, description="requests a replica takes at once (the rest wait at the proxy): a few batches' worth"
    )
    watch_s: float = Field(10.0, ge=0, description="seconds between alias checks (0: never); only for @ALIAS")
    max_body_mb: float = Field(32.0, gt=0, description="the largest request body accepted")
    gpu: bool = Field(False, description="one GPU per replica")
    replica_cpus: float = Field(1.0, gt=0, description="CPUs each replica holds")


def load_train(path: str | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig for `train`/`compare --config F`: F holds TrainConfig keys, or is a job config
    (jobs/configs, TuneConfig keys) whose `train:` section is used after the whole file is checked."""
    data = load_yaml(path)
    if isinstance(data.get("train"), dict):
        data = parse(TuneConfig, data, path or "config").train.model_dump(exclude_unset=True)
    return _overridden(TrainConfig, data, overrides, path)
