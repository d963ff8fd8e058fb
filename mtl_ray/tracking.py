"""MLflow tracking: where runs go, a bounded connection check, and the per-trial logger of `mtl-ray tune`.

One process logs everything of a tune job: the Tune driver. It opens one parent run per job and,
through `TrialLogger` (a Ray Tune callback, so it runs in that driver), one child run per trial
with the trial's parameters, per-epoch per-task metrics and task weights. Workers never talk to
MLflow, so DDP ranks cannot log twice; the tracking URI reaches the driver from the config or
`MLFLOW_TRACKING_URI`, which `mtl-ray submit` forwards in the job's runtime environment.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from ray.tune import Callback

from mtl_ray.errors import UserError, describe

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
CONNECT_ATTEMPTS = 3
# MLflow retries HTTP calls 7 times with backoff 2 by default (minutes against a dead server).
_HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
CHECKPOINT_TAG = "mtl_ray.checkpoint"
TRIAL_TAG = "mtl_ray.trial_id"
PARENT_TAG = "mlflow.parentRunId"

log = logging.getLogger(__name__)


def tracking_uri(configured: str | None = None) -> str:
    """The config's URI, else `MLFLOW_TRACKING_URI`, else `sqlite:///mlruns.db` in the working
    directory; relative sqlite paths become absolute so Ray processes in other directories agree."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + os.path.abspath(uri[len(prefix):])
    return uri


def connect(uri: str, attempts: int = CONNECT_ATTEMPTS):
    """Point this process (and its children) at `uri` and check it answers, with bounded retries."""
    import mlflow
    from mlflow.tracking import MlflowClient

    for key, value in _HTTP_LIMITS.items():
        os.environ.setdefault(key, value)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    for attempt in range(1, attempts + 1):
        try:
            client.search_experiments(max_results=1)
            return client
        except Exception as exc:  # MLflow wraps connection failures in several exception types
            if attempt == attempts:
                raise UserError(f"tracking server {uri}: unreachable after {attempts} attempts ({describe(exc)})") from None
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


class TrialLogger(Callback):
    """Ray Tune callback: one MLflow child run per trial under the tune job's parent run.

    A failure to log never stops tuning: it is counted in `failures` (reported by `mtl-ray tune`)
    and the checkpoints stay on storage for `mtl-ray register --checkpoint`.
    """

    def __init__(self, uri: str, experiment: str, parent_run_id: str, max_epochs: int, checkpoint_prefix: str = ""):
        self.uri = uri
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
        run = client.create_run(self.experiment, run_name=trial.trial_id,
                                tags={PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial.trial_id})
        self.run_ids[trial.trial_id] = run.info.run_id
        for key, value in flat_params(trial.config).items():
            client.log_param(run.info.run_id, key, value)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._safely("log epoch", self._result, trial, result)

    def _result(self, trial, result) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        from mlflow.entities import Metric

        epoch = int(result.get("epoch", 0))
        self.epochs[trial.trial_id] = epoch
        now = int(time.time() * 1000)
        client = self._client()
        client.log_batch(run_id, metrics=[Metric(k, v, now, epoch) for k, v in epoch_metrics(result).items()])
        if result.get("checkpoint_path"):
            client.set_tag(run_id, CHECKPOINT_TAG, self.checkpoint_prefix + result["checkpoint_path"])

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
