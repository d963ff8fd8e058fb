"""MLflow tracking: where runs go, a bounded connection check, and what a run's numbers look like there.

One process logs everything of a tune job: the Tune driver (`mtl_ray.tune.TrialLogger`, a Ray Tune
callback built on these helpers). Workers never talk to MLflow, so DDP ranks cannot log twice; the
tracking URI reaches the driver from the config or `MLFLOW_TRACKING_URI`, which `mtl-ray submit`
forwards in the job's runtime environment. This module imports no Ray: the registry and the
registered model's users need it without Ray.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from mtl_ray.config import DEFAULT_EXPERIMENT
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


RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set by Ray's job supervisor in a job's driver process (`ray job submit`, `mtl-ray submit`)."""


def tracking_uri(configured: str | None = None) -> str:
    """The config's URI, else `MLFLOW_TRACKING_URI`, else `sqlite:///mlruns.db` in the working
    directory; relative sqlite paths become absolute so Ray processes in other directories agree.

    In a Ray job a relative sqlite file is refused: the job's working directory is a temporary
    copy on the head node, and the registry would go with it (tried: a submitted tune registered
    its model there)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        if os.environ.get(RAY_JOB_ENV):
            where = f"tracking.uri {uri}" if configured else f"no MLFLOW_TRACKING_URI, so the default {uri}"
            raise UserError(
                f"{where}: in a Ray job that is a file in the job's temporary working directory on the head "
                "node, lost with it; set MLFLOW_TRACKING_URI to your tracking server before `mtl-ray submit` "
                "(it forwards it), or an absolute sqlite path on storage every node keeps"
            )
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
    """The experiment `name`, created if missing; two jobs creating it at once both get the one that
    won (the server answers the other RESOURCE_ALREADY_EXISTS), as `mlflow.set_experiment` does."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


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


MAX_PARAM_LENGTH = 6000
"""MLflow's limit on a param value's length."""


def log_params(client, run_id: str, params: Mapping[str, str]) -> None:
    """Log `params` in one `log_batch` (MLflow splits it into requests of its size), not a round trip
    per param; a value over MLflow's length limit is cut there and ends with "…" so that the cut shows."""
    from mlflow.entities import Param

    client.log_batch(
        run_id,
        params=[
            Param(k, v if len(v) <= MAX_PARAM_LENGTH else v[: MAX_PARAM_LENGTH - 1] + "…") for k, v in params.items()
        ],
    )


def log_numbers(client, run_id: str, numbers: Mapping[str, float], step: int = 0) -> None:
    """Log `numbers` as metrics at `step` in one `log_batch` (for 100 tasks, ~500 per epoch)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in numbers.items()])


def log_datasets(client, run_id: str, profiles: Mapping[str, Mapping[str, Any]]) -> None:
    """Record the data a run used as MLflow dataset inputs, one per context ("training",
    "validation"): source URI, digest, and the `ValidationReport.profile` (rows, per-task labeled and
    positive counts) as the dataset's profile.

    The server looks a dataset up by name and digest and inserts it if missing, so trials of two jobs
    on the same data logging at once can collide on its unique key; the one that lost finds the
    other's row when it tries again."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.exceptions import MlflowException

    inputs = []
    for context, profile in profiles.items():
        source = str(profile["source"])
        dataset = Dataset(
            name=f"{source.rstrip('/').rsplit('/', 1)[-1] or source}:{profile['split']}",
            digest=profile["digest"],
            source_type="s3" if source.startswith("s3://") else "local",
            source=json.dumps({"uri": source}),
            schema=json.dumps({"tasks": list(profile["tasks"])}),
            profile=json.dumps({"rows": profile["rows"], "tasks": profile["tasks"]}),
        )
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)]))
    for attempt in range(3):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException:
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))


CURVES = {
    "auroc": ("val.", ".auroc", "validation AUROC"),
    "loss": ("train_loss", "", "train loss"),
    "task_weights": ("weight.", "", "task weight"),
}
"""PNG curves logged per run: file stem → (metric prefix, suffix, y label)."""


def log_curves(client, run_id: str) -> list[str]:
    """Plot a run's per-epoch metrics (validation AUROC per task, train loss, task weights) from its
    MLflow metric history and log them as PNGs under `curves/`; returns the artifact paths."""
    from mtl_ray.plots import Line, curves

    keys = list(client.get_run(run_id).data.metrics)
    logged = []
    with tempfile.TemporaryDirectory() as d:
        for stem, (prefix, suffix, ylabel) in CURVES.items():
            lines = []
            for key in sorted(k for k in keys if k.startswith(prefix) and k.endswith(suffix)):
                history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
                label = key[len(prefix) : len(key) - len(suffix)] or ylabel
                lines.append(Line(label, [m.step for m in history], [m.value for m in history], marker="."))
            if lines:
                path = curves(os.path.join(d, f"{stem}.png"), lines, xlabel="epoch", ylabel=ylabel, title=ylabel)
                client.log_artifact(run_id, path, "curves")
                logged.append(f"curves/{stem}.png")
    return logged


def numbers_of(summary: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a JSON summary as MLflow metrics: {"mtl": {"car": 0.9}} → {"mtl.car": 0.9};
    characters MLflow refuses in a name (the ~ of a task pair, say) become _."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        name = prefix + re.sub(r"[^\w\-. /]", "_", str(key))
        if isinstance(value, Mapping):
            out.update(numbers_of(value, f"{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool) and value == value:
            out[name] = float(value)
    return out


def log_result_run(
    kind: str,
    summary: Mapping[str, Any],
    text: str,
    *,
    params: Mapping[str, Any],
    artifacts: Sequence[str] = (),
    experiment: str = DEFAULT_EXPERIMENT,
    pairwise: Sequence[str] = (),
) -> dict[str, str]:
    """Log a command's result (`compare`, `advise`) as an MLflow run of its own in the tracking URI in
    use: its parameters, every number of `summary` as a metric, the summary as JSON, `text` (the table
    and verdicts as printed) and the `artifacts` (plots). `pairwise` names dotted keys of `summary` that
    hold a value per pair of tasks, left out of the metrics (T² of them for 100 tasks; the JSON keeps
    them). Returns {"run_id", "uri"}, or {"error"} when the tracker fails: the result itself is printed
    either way."""
    uri = tracking_uri()
    try:
        client = connect(uri)
        run = client.create_run(experiment_id(client, experiment), run_name=f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}")
        run_id = run.info.run_id
        client.set_tag(run_id, "mtl_ray.kind", kind)
        numbers = numbers_of(summary)
        left_out = tuple(f"{key}." for key in pairwise)
        log_numbers(client, run_id, {k: v for k, v in numbers.items() if not k.startswith(left_out)})
        log_params(client, run_id, flat_params(params))
        client.log_dict(run_id, dict(summary), f"{kind}.json")
        client.log_text(run_id, text, f"{kind}.txt")
        for path in artifacts:
            client.log_artifact(run_id, path, "plots")
        client.set_terminated(run_id)
    except Exception as exc:  # the result is worth more than its record: print it, say what failed
        return {"error": masked(describe(exc), uri)}
    return {"run_id": run_id, "uri": masked(uri)}


def result_line(record: Mapping[str, str] | None) -> list[str]:
    """The line a command prints about its own MLflow run (none when it was not tracked)."""
    if not record:
        return []
    if "error" in record:
        return [f"MLflow: not logged ({record['error']})"]
    return [f"MLflow run {record['run_id']} in {record['uri']}"]
