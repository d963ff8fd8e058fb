"""The MLflow model registry: register a checkpoint behind a gated alias, and pull it back to predict.

`register_checkpoint` logs the checkpoint as an `mlflow.pyfunc` model (`mtl_ray.pyfunc`) carrying
its own copy of the `mtl_ray` package (`code_paths`), registers it as a new version of NAME, and
moves the alias (default `champion`) only if the new version beats the current champion on the same
validation rows (`mtl_ray.gate`). The version is kept either way and the result says which and why.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass, field

import numpy as np

import mtl_ray
from mtl_ray import checkpoint, gate, storage, tracking
from mtl_ray.config import DEFAULT_ALIAS, DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME
from mtl_ray.errors import UserError, describe, first_line
from mtl_ray.gate import GATE_METRIC
from mtl_ray.text import number, table

MODEL_ARTIFACT = "model"


def check_name(name: str, what: str = "registry name") -> None:
    """Names MLflow refuses, plus '@' which would break `models:/NAME@ALIAS` URIs."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name

    try:
        _validate_model_name(name)
    except MlflowException as exc:
        raise UserError(f"{what} {name!r}: {exc.message}") from None
    if "@" in name:
        raise UserError(f"{what} {name!r}: names cannot contain '@' (models:/NAME@ALIAS URIs use it)")


@dataclass
class RegisterResult:
    """The new version, whether the alias moved, and the comparison behind that decision."""

    name: str
    version: str
    alias: str
    alias_moved: bool
    reason: str
    mean_auroc: float | None
    run_id: str
    tracking_uri: str
    gate_scores: dict | None = None
    """{"rows", "challenger", "champion"}: both models scored on the same validation rows."""
    exit_code: int = 0

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias_moved else f"models:/{self.name}/{self.version}"

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "alias_moved": self.alias_moved,
            "reason": self.reason,
            "gate_scores": self.gate_scores,
            "mean_auroc": self.mean_auroc,
            "model_uri": self.model_uri,
            "run_id": self.run_id,
            "tracking_uri": tracking.masked(self.tracking_uri),
        }

    def render(self) -> str:
        moved = f"alias {self.alias!r} moved to it" if self.alias_moved else f"alias {self.alias!r} stays"
        return (
            f"registered {self.name} version {self.version} (mean_auroc {number(self.mean_auroc)}): "
            f"{moved}: {self.reason}"
        )


def fetch_checkpoint(uri: str, dest: str, what: str = "") -> str:
    """A local directory holding the checkpoint at `uri` (a local directory or s3://...); `what` names
    the flag in errors."""
    import pyarrow.fs as pafs

    shown = f"{what} {uri}".strip()
    if not storage.is_s3(uri):
        if not os.path.isfile(os.path.join(uri, checkpoint.META_FILE)):
            raise UserError(f"{shown}: not a checkpoint directory (no {checkpoint.META_FILE})")
        return uri
    fs, path = storage.resolve(uri)
    try:
        if fs.get_file_info(f"{path}/{checkpoint.META_FILE}").type != pafs.FileType.File:
            raise UserError(f"{shown}: not a checkpoint (no {checkpoint.META_FILE}; check the bucket and key)")
        pafs.copy_files(path, dest, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    except OSError as exc:  # endpoint down, access denied
        raise UserError(f"{shown}: cannot read from S3: {first_line(exc)}") from None
    return dest


@dataclass(frozen=True)
class InitSource:
    """Where a run's first weights come from (`TrainConfig.init`): a `MultiTaskNet` state, what the
    source model was trained on, and the lineage a model trained from it records."""

    state: dict
    tasks: list[str]
    backbone: str
    size: tuple[int, int] | None
    resize: str | None
    train_rows: int | None
    lineage: dict


def resolve_init(uri: str, backbone: str, tracking_uri: str | None = None) -> InitSource:
    """Load the weights `uri` names: `models:/NAME@ALIAS` or `models:/NAME/VERSION` from the registry,
    a checkpoint directory (local or s3://), or `torchvision` (ImageNet weights for `backbone`)."""
    if uri == "torchvision":
        from mtl_ray.models import IMAGENET_FILES, imagenet_state

        state = imagenet_state(backbone)
        return InitSource(state, [], backbone, None, None, None, {"uri": uri, "weights": IMAGENET_FILES[backbone]})
    if uri.startswith("models:/"):
        with tempfile.TemporaryDirectory() as d:
            directory, lineage = _registered_checkpoint(uri, d, tracking_uri)
            return _source(uri, directory, lineage)
    with tempfile.TemporaryDirectory() as d:
        return _source(uri, fetch_checkpoint(uri, d, what="--init"), {"uri": uri})


def _source(uri: str, directory: str, lineage: dict) -> InitSource:
    try:
        state, meta = checkpoint.load(directory)
        size, resize = checkpoint.input_spec(meta)
        tasks, backbone, model = list(meta["tasks"]), meta["backbone"], state["model"]
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as exc:
        raise UserError(f"--init {uri}: not an mtl-ray checkpoint ({describe(exc)})") from None
    rows = (meta.get("data") or {}).get("train_rows")
    return InitSource(model, tasks, backbone, size, resize, rows, {**lineage, "tasks": tasks})


def _registered_checkpoint(uri: str, dest: str, tracking_uri: str | None) -> tuple[str, dict]:
    """Download a registered version's model and return its checkpoint directory and lineage."""
    import mlflow
    import yaml
    from mlflow.exceptions import MlflowException

    from mtl_ray.pyfunc import CHECKPOINT_ARTIFACT

    rest = uri[len("models:/") :]
    name, at, alias = rest.partition("@")
    version = None if at else rest.rpartition("/")[2]
    name = name if at else rest.rpartition("/")[0]
    if not name or not (alias or version):
        raise UserError(f"--init {uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    uri_used = tracking.tracking_uri(tracking_uri)
    client = tracking.connect(uri_used)
    try:
        found = client.get_model_version_by_alias(name, alias) if at else client.get_model_version(name, version)
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{found.version}", dst_path=dest)
    except MlflowException as exc:
        raise UserError(
            f"--init {uri}: not in the registry at {tracking.masked(uri_used)} ({first_line(exc)[:200]})"
        ) from None
    try:
        with open(os.path.join(local, "MLmodel")) as f:
            artifacts = yaml.safe_load(f)["flavors"]["python_function"]["artifacts"]
        directory = os.path.join(local, artifacts[CHECKPOINT_ARTIFACT]["path"])
    except (OSError, KeyError, TypeError) as exc:
        raise UserError(f"--init {uri}: version {found.version} is not an mtl-ray model ({describe(exc)})") from None
    return directory, {"uri": uri, "name": name, "version": str(found.version), "run_id": found.run_id}


def _serving_copy(src: str, dest: str) -> dict:
    """The model weights and meta alone (no optimizer state) in `dest`; returns the meta."""
    state, meta = checkpoint.load(src)
    checkpoint.write(dest, {"model": state["model"]}, meta)
    return meta


def _example(meta: dict):
    """Two encoded PNG images of the training size: the logged input example."""
    import pandas as pd

    from mtl_ray.images import encode_image

    size, _ = checkpoint.input_spec(meta)
    rng = np.random.default_rng(0)
    images = [encode_image(rng.integers(0, 256, (*size, 3), dtype=np.uint8), "png") for _ in range(2)]
    return pd.DataFrame({"image": images})


def _signature(tasks: list[str]):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image")]), outputs=Schema([ColSpec("double", t) for t in tasks])
    )


def _requirements() -> list[str]:
    import mlflow
    import pandas
    import PIL
    import pyarrow
    import torch

    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"pillow=={PIL.__version__}",
        f"pyarrow=={pyarrow.__version__}",
        f"numpy=={np.__version__}",
        f"pandas=={pandas.__version__}",
    ]


def _version_tags(meta: dict, data: str | None) -> dict[str, str]:
    metrics = meta["metrics"]
    tags = {
        "tasks": json.dumps(meta["tasks"]),
        "backbone": meta["backbone"],
        "weighting": json.dumps(meta["config"]["weighting"]),
        GATE_METRIC: str(metrics.get(GATE_METRIC)),
        "epochs": str(meta["epoch"]),
        "image_size": "x".join(map(str, checkpoint.input_spec(meta)[0])),
        "resize": checkpoint.input_spec(meta)[1],
        "code_version": f"mtl-ray {mtl_ray.__version__}",
        "python": platform.python_version(),
    }
    for task, m in (metrics.get("val") or {}).items():
        tags[f"val.{task}.auroc"] = str(m.get("auroc"))
    if meta.get("init"):
        tags[tracking.INIT_TAG] = json.dumps(meta["init"])
    if data:
        tags["data"] = data
    return tags


def _description(meta: dict, data: str | None, run_id: str) -> str:
    """A model version's description (Markdown): what it scores per task, and where it came from."""
    metrics = meta["metrics"]
    size, resize = checkpoint.input_spec(meta)
    rows = []
    for task, m in (metrics.get("val") or {}).items():
        cells = [task, *(number(m.get(k)) for k in ("auroc", "accuracy", "f1")), str(m.get("n_labeled"))]
        rows.append("| " + " | ".join(cells) + " |")
    init = meta.get("init") or {}
    started = (
        f"`{init['uri']}`" + (f" (version {init['version']})" if init.get("version") else "") if init else "scratch"
    )
    return "\n".join(
        [
            f"mtl-ray, backbone `{meta['backbone']}`, {'x'.join(map(str, size))} ({resize}), {meta['epoch']} epochs, "
            f"validation mean AUROC {number(metrics.get(GATE_METRIC))}.",
            "",
            "| task | AUROC | accuracy | F1 | labeled |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"Lineage: data `{data or 'not recorded'}`; run `{run_id}`; started from {started}.",
        ]
    )


def register_checkpoint(
    uri: str,
    *,
    name: str = DEFAULT_MODEL_NAME,
    alias: str = DEFAULT_ALIAS,
    run_id: str | None = None,
    data: str | None = None,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
) -> RegisterResult:
    """Log the checkpoint at `uri` as a pyfunc model into `run_id` (or a new run), register it as a
    new version of `name`, and move `alias` to it if it beats the alias's current version on the same
    validation rows (`mtl_ray.gate`)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from mtl_ray.pyfunc import CHECKPOINT_ARTIFACT, MultiTaskModel

    check_name(name)
    check_name(alias, "alias")
    uri_used = tracking.tracking_uri(tracking_uri)
    os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
    with tempfile.TemporaryDirectory() as fetched, tempfile.TemporaryDirectory() as served:
        meta = _serving_copy(fetch_checkpoint(uri, fetched), served)
        score = meta["metrics"].get(GATE_METRIC)
        diverged = {t: m["nonfinite"] for t, m in meta["metrics"].get("val", {}).items() if m.get("nonfinite")}
        if diverged:
            task, count = next(iter(diverged.items()))
            raise UserError(
                f"{uri}: not registered: the model's validation outputs are not finite ({count} NaN or inf "
                f"probabilities for {task}); it diverged"
            )
        try:
            tracking.connect(uri_used)
        except UserError as exc:
            raise UserError(
                f"{exc}; the checkpoint stays on storage: run `mtl-ray register --checkpoint {uri}` when it answers"
            ) from None
        try:
            if run_id is None:
                mlflow.set_experiment(experiment)
            with mlflow.start_run(run_id=run_id, run_name=None if run_id else "register") as run:
                if run_id is None:
                    mlflow.set_tag(tracking.CHECKPOINT_TAG, uri)
                if meta.get("init"):
                    mlflow.set_tag(tracking.INIT_TAG, json.dumps(meta["init"]))
                info = mlflow.pyfunc.log_model(
                    name=MODEL_ARTIFACT,
                    python_model=MultiTaskModel(),
                    artifacts={CHECKPOINT_ARTIFACT: served},
                    code_paths=[os.path.dirname(mtl_ray.__file__)],
                    signature=_signature(meta["tasks"]),
                    input_example=_example(meta),
                    pip_requirements=_requirements(),
                    registered_model_name=name,
                )
            client = MlflowClient(uri_used)
            version = str(info.registered_model_version)
            for key, value in _version_tags(meta, data).items():
                client.set_model_version_tag(name, version, key, value)
            client.update_model_version(name, version, description=_description(meta, data, run.info.run_id))
            decision = gate.settle(client, name, alias, version, meta)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(
                f"registering {uri} as {name!r} failed ({tracking.masked(describe(exc), uri_used)}); the "
                f"checkpoint stays on storage: run `mtl-ray register --checkpoint {uri}` when "
                f"{tracking.masked(uri_used)} answers"
            ) from None
    return RegisterResult(
        name=name,
        version=version,
        alias=alias,
        alias_moved=decision.moved,
        reason=decision.reason,
        gate_scores=decision.scores,
        mean_auroc=score,
        run_id=run.info.run_id,
        tracking_uri=uri_used,
    )


def register(
    run: str | None = None,
    checkpoint_uri: str | None = None,
    *,
    name: str = DEFAULT_MODEL_NAME,
    alias: str = DEFAULT_ALIAS,
    tracking_uri: str | None = None,
) -> RegisterResult:
    """`mtl-ray register`: a tune trial's run (its checkpoint tag) or a checkpoint URI."""
    if (run is None) == (checkpoint_uri is None):
        raise UserError("register: give exactly one of --run RUN_ID or --checkpoint URI")
    if checkpoint_uri is not None:
        return register_checkpoint(checkpoint_uri, name=name, alias=alias, tracking_uri=tracking_uri)
    from mlflow.exceptions import MlflowException

    uri_used = tracking.tracking_uri(tracking_uri)
    client = tracking.connect(uri_used)
    try:
        found = client.get_run(run)
    except MlflowException:
        raise UserError(f"--run {run}: no such run at {tracking.masked(uri_used)}") from None
    ckpt = found.data.tags.get(tracking.CHECKPOINT_TAG)
    if not ckpt:
        raise UserError(
            f"--run {run}: the run has no {tracking.CHECKPOINT_TAG} tag (no epoch finished); use --checkpoint URI"
        )
    return register_checkpoint(ckpt, name=name, alias=alias, run_id=run, tracking_uri=uri_used)


# ---- pulling ------------------------------------------------------------------------------------


@dataclass
class PredictResult:
    """Per-task probabilities for each input image, in input order."""

    model: str
    tasks: list[str]
    ids: list[str]
    probabilities: np.ndarray
    errors: dict[str, str] = field(default_factory=dict)
    """Images the model could not read, by id: their probabilities are None (NaN) and the exit code 2."""

    @property
    def exit_code(self) -> int:
        return 2 if self.errors else 0

    def to_json(self) -> dict:
        rows = [
            {t: None if np.isnan(p) else float(p) for t, p in zip(self.tasks, row, strict=True)}
            for row in self.probabilities
        ]
        out = {"model": self.model, "tasks": self.tasks, "ids": self.ids, "predictions": rows}
        if self.errors:
            out["errors"] = self.errors
            out["problems"] = [f"{i}: {reason}" for i, reason in self.errors.items()]
        return out

    def render(self) -> str:
        shown = min(len(self.ids), 10)
        rows = [
            [i, *(f"{p:.3f}" for p in row)] for i, row in zip(self.ids[:shown], self.probabilities[:shown], strict=True)
        ]
        more = [f"... {len(self.ids) - shown} more (see --json)"] if len(self.ids) > shown else []
        return "\n".join(
            [
                f"{self.model}: {len(self.ids)} images, {len(self.tasks)} tasks",
                *table(["image", *self.tasks], rows),
                *more,
            ]
        )


def predict(
    model_uri: str,
    *,
    data: str | None = None,
    images: list[str] = (),
    limit: int | None = None,
    tracking_uri: str | None = None,
) -> PredictResult:
    """Load `model_uri` (e.g. `models:/mtl-ray@champion`) with `mlflow.pyfunc` and score images."""
    import mlflow.pyfunc
    import pandas as pd

    if (data is None) == (not images):
        raise UserError("predict: give --data PATH or image files, not both")
    if data is not None:
        ids, encoded, _ = gate.shard_rows(data, limit)
    else:
        ids, encoded = list(images), []
        for path in images:
            try:
                with open(path, "rb") as f:
                    encoded.append(f.read())
            except OSError as exc:
                raise UserError(f"{path}: cannot read image ({exc.strerror or exc})") from None
    uri_used = tracking.tracking_uri(tracking_uri)
    if model_uri.startswith(("models:/", "runs:/")):
        tracking.connect(uri_used)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except Exception as exc:
        raise UserError(f"--model {model_uri}: cannot load ({tracking.masked(describe(exc), uri_used)})") from None
    out = model.predict(pd.DataFrame({"image": encoded}))
    tasks = [c for c in out.columns if c != "error"]
    errors = {}
    if "error" in out.columns:
        errors = {i: e for i, e in zip(ids, out["error"], strict=True) if isinstance(e, str)}
    return PredictResult(
        model=model_uri, tasks=tasks, ids=ids, probabilities=out[tasks].to_numpy(dtype=np.float64), errors=errors
    )
