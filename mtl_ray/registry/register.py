"""Registering a checkpoint behind the gated alias.

`register_checkpoint` logs the checkpoint as an `mlflow.pyfunc` model (`mtl_ray.registry.pyfunc`)
carrying its own copy of the `mtl_ray` package (`code_paths`), registers it as a new version of NAME,
and moves the alias (default `champion`) only if the new version beats the current champion on the
same validation rows (`mtl_ray.registry.gate`). The version is kept either way and the result says
which and why.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass

import numpy as np

import mtl_ray
from mtl_ray.config import DEFAULT_ALIAS, DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME
from mtl_ray.errors import UserError, describe
from mtl_ray.model import checkpoint
from mtl_ray.registry import gate, tracking
from mtl_ray.registry.gate import GATE_METRIC
from mtl_ray.registry.sources import fetch_checkpoint
from mtl_ray.result import Result, number

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
class RegisterResult(Result):
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

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias_moved else f"models:/{self.name}/{self.version}"

    def to_json(self) -> dict:
        return {**super().to_json(), "model_uri": self.model_uri, "tracking_uri": tracking.masked(self.tracking_uri)}

    def render(self) -> str:
        moved = f"alias {self.alias!r} moved to it" if self.alias_moved else f"alias {self.alias!r} stays"
        return (
            f"registered {self.name} version {self.version} (mean_auroc {number(self.mean_auroc)}): "
            f"{moved}: {self.reason}"
        )


def _serving_copy(src: str, dest: str) -> dict:
    """The model weights and meta alone (no optimizer state) in `dest`; returns the meta."""
    state, meta = checkpoint.load(src)
    checkpoint.write(dest, {"model": state["model"]}, meta)
    return meta


def _example(meta: dict):
    """Two encoded PNG images of the training size: the logged input example."""
    import pandas as pd

    from mtl_ray.data.images import encode_image

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
    from mlflow.tracking import MlflowClient

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
            version, logged_run = _log_model(uri, served, meta, name, run_id, experiment)
            client = MlflowClient(uri_used)
            for key, value in _version_tags(meta, data).items():
                client.set_model_version_tag(name, version, key, value)
            client.update_model_version(name, version, description=_description(meta, data, logged_run))
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
        run_id=logged_run,
        tracking_uri=uri_used,
    )


def _log_model(uri: str, served: str, meta: dict, name: str, run_id: str | None, experiment: str) -> tuple[str, str]:
    """Log the serving copy at `served` as a pyfunc model carrying its own `mtl_ray` code, into run
    `run_id` (or a new run of `experiment`) and as a new version of `name`: (version, run id)."""
    import mlflow

    from mtl_ray.registry.pyfunc import CHECKPOINT_ARTIFACT, MultiTaskModel

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
    return str(info.registered_model_version), run.info.run_id


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
