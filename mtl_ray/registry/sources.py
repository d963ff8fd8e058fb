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
from mtl_ray.model.partition import show
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
class Trained:
    """A trained mtl-ray model named by a URI, loaded once: its checkpoint (state and meta) and the
    lineage that names it ({"uri"}, plus "name", "version" and "run_id" for a registered version)."""

    state: dict
    meta: dict
    lineage: dict

    @property
    def version(self) -> str:
        """The registered version, or the URI itself for a run's model or a checkpoint."""
        return self.lineage.get("version") or self.lineage["uri"]


def named(uri: str, version: str) -> str:
    """How messages name a model: `models:/m@champion (version 3)`, or the URI alone."""
    return uri if version == uri else f"{uri} (version {version})"


def load_trained(uri: str, *, what: str = "--model", tracking_uri: str | None = None) -> Trained:
    """The model `uri` names: `models:/NAME@ALIAS` (the alias resolved to its version here, once),
    `models:/NAME/VERSION`, `runs:/RUN_ID/PATH`, or a checkpoint directory (local or s3://); `what`
    names the flag in errors."""
    with tempfile.TemporaryDirectory() as d:
        if uri.startswith(("models:/", "runs:/")):
            directory, lineage = _logged_checkpoint(uri, d, what, tracking_uri)
        else:
            uri = storage.absolute(uri)
            directory, lineage = fetch_checkpoint(uri, d, what=what), {"uri": uri}
        try:
            state, meta = checkpoint.load(directory)
            checkpoint.input_spec(meta)
        except (KeyError, TypeError, ValueError, RuntimeError, OSError) as exc:
            raise UserError(f"{what} {uri}: not an mtl-ray checkpoint ({describe(exc)})") from None
    missing = [k for k in ("tasks", "backbone") if k not in meta] + (["model"] if "model" not in state else [])
    if missing:
        raise UserError(f"{what} {uri}: not an mtl-ray checkpoint (it has no {missing[0]!r})")
    return Trained(state, meta, lineage)


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
    heads: str = "linear"


def resolve_init(uri: str, backbone: str, tracking_uri: str | None = None) -> InitSource:
    """Load the weights `uri` names: a trained model (`load_trained`) or `torchvision` (ImageNet
    weights for `backbone`)."""
    if uri == "torchvision":
        from mtl_ray.model.backbones import IMAGENET_FILES, imagenet_state

        state = imagenet_state(backbone)
        return InitSource(state, [], backbone, None, None, None, {"uri": uri, "weights": IMAGENET_FILES[backbone]})
    trained = load_trained(uri, what="--init", tracking_uri=tracking_uri)
    meta = trained.meta
    if meta.get("groups"):
        raise UserError(
            f"--init {uri}: that model is one network per task group ({show(meta['groups'])}); init starts from a "
            "model of one shared network"
        )
    size, resize = checkpoint.input_spec(meta)
    tasks = list(meta["tasks"])
    rows = (meta.get("data") or {}).get("train_rows")
    lineage = {**trained.lineage, "tasks": tasks}
    heads = meta.get("heads", "linear")
    return InitSource(trained.state["model"], tasks, meta["backbone"], size, resize, rows, lineage, heads)


def _logged_checkpoint(uri: str, dest: str, what: str, tracking_uri: str | None) -> tuple[str, dict]:
    """Download a logged mtl-ray model (a registered version, or a run's) and return its checkpoint
    directory and lineage."""
    import mlflow
    import yaml
    from mlflow.exceptions import MlflowException

    from mtl_ray.registry.pyfunc import CHECKPOINT_ARTIFACT

    uri_used = tracking.tracking_uri(tracking_uri)
    client = tracking.connect(uri_used)
    if uri.startswith("runs:/"):
        artifact, lineage, label = uri, {"uri": uri, "run_id": uri[len("runs:/") :].split("/")[0]}, "the run"
    else:
        rest = uri[len("models:/") :]
        name, at, alias = rest.partition("@")
        version = None if at else rest.rpartition("/")[2]
        name = name if at else rest.rpartition("/")[0]
        if not name or not (alias or version):
            raise UserError(f"{what} {uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
        try:
            found = client.get_model_version_by_alias(name, alias) if at else client.get_model_version(name, version)
        except MlflowException as exc:
            raise UserError(
                f"{what} {uri}: not in the registry at {tracking.masked(uri_used)} ({first_line(exc)[:200]})"
            ) from None
        artifact = f"models:/{name}/{found.version}"
        lineage = {"uri": uri, "name": name, "version": str(found.version), "run_id": found.run_id}
        label = f"version {found.version}"
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=artifact, dst_path=dest)
    except (MlflowException, OSError) as exc:
        shown = tracking.masked(uri_used)
        raise UserError(f"{what} {uri}: cannot download {label} from {shown} ({describe(exc)})") from None
    try:
        with open(os.path.join(local, "MLmodel")) as f:
            artifacts = yaml.safe_load(f)["flavors"]["python_function"]["artifacts"]
        directory = os.path.join(local, artifacts[CHECKPOINT_ARTIFACT]["path"])
    except (OSError, KeyError, TypeError) as exc:
        raise UserError(f"{what} {uri}: {label} is not an mtl-ray model ({describe(exc)})") from None
    return directory, lineage
