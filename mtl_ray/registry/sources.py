"""Where a trained model's weights come from when a run starts from one (`TrainConfig.init`): the
registry (`models:/NAME@ALIAS`, `models:/NAME/VERSION`), a checkpoint directory (local or `s3://`),
or torchvision's ImageNet weights; each becomes an `InitSource` with the lineage a run records."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from mtl_ray.data import storage
from mtl_ray.errors import UserError, describe, first_line
from mtl_ray.model import checkpoint
from mtl_ray.registry import tracking


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
        from mtl_ray.model.backbones import IMAGENET_FILES, imagenet_state

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

    from mtl_ray.registry.pyfunc import CHECKPOINT_ARTIFACT

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


