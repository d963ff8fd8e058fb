"""MLflow tracking: where runs go, a bounded connection check, and what a run's numbers look like there.

One process logs everything of a tune job: the Tune driver (`mtl_ray.tune.TrialLogger`, a Ray Tune
callback built on these helpers). Workers never talk to MLflow, so DDP ranks cannot log twice; the
tracking URI reaches the driver from the config or `MLFLOW_TRACKING_URI`, which `mtl-ray submit`
forwards in the job's runtime environment. This module imports no Ray: the registry and the
registered model's users need it without Ray.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from mtl_ray.errors import UserError, describe

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
CONNECT_ATTEMPTS = 3
# MLflow retries HTTP calls 7 times with backoff 2 by default (minutes against a dead server).
_HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
CHECKPOINT_TAG = "mtl_ray.checkpoint"
INIT_TAG = "mtl_ray.init"
"""Where a model's first weights came from (`TrainConfig.init`), on its run and on its registered versions."""
TRIAL_TAG = "mtl_ray.trial_id"
PARENT_TAG = "mlflow.parentRunId"


def tracking_uri(configured: str | None = None) -> str:
    """The config's URI, else `MLFLOW_TRACKING_URI`, else `sqlite:///mlruns.db` in the working
    directory; relative sqlite paths become absolute so Ray processes in other directories agree."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        uri = prefix + os.path.abspath(uri[len(prefix) :])
    return uri


def masked(text: str, uri: str | None = None) -> str:
    """`text` with the password of `uri` (default: `text` itself, a URI) replaced by ***, for messages
    and logs: a tracking URI may carry credentials, and library errors quote it."""
    password = urlsplit(uri or text).password
    return text.replace(f":{password}@", ":***@") if password else text


def connect(uri: str, attempts: int = CONNECT_ATTEMPTS):
    """Point this process (and its children) at `uri` and check it answers, with bounded retries."""
    import mlflow
    from mlflow.tracking import MlflowClient

    for key, value in _HTTP_LIMITS.items():
        os.environ.setdefault(key, value)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines (database set-up) are not the user's
    client = MlflowClient(uri)
    for attempt in range(1, attempts + 1):
        try:
            client.search_experiments(max_results=1)
            return client
        except Exception as exc:  # MLflow wraps connection failures in several exception types
            if attempt == attempts:
                raise UserError(
                    f"tracking server {masked(uri)}: unreachable after {attempts} attempts "
                    f"({masked(describe(exc), uri)})"
                ) from None
            time.sleep(attempt)
    raise AssertionError("unreachable")


def experiment_id(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"weighting": {"name": "dwa"}} → {"weighting.name": "dwa"}; values as MLflow param strings."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{prefix}{key}."))
        elif value is not None:
            out[f"{prefix}{key}"] = str(value)
    return out


def epoch_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of one epoch's report: losses, mean AUROC, per-task validation metrics, task weights."""
    out = {k: float(result[k]) for k in ("train_loss", "mean_auroc", "train_images_per_s") if result.get(k) is not None}
    for task, metrics in (result.get("val") or {}).items():
        for name, value in metrics.items():
            if value is not None:
                out[f"val.{task}.{name}"] = float(value)
    for task, weight in (result.get("task_weights") or {}).items():
        out[f"weight.{task}"] = float(weight)
    return out
