"""The Ray Tune callbacks of a tune job, on its driver: `TrialLogger` (one MLflow child run per
trial), `TrialProgress` (a trial's start, epochs and end as progress lines) and `FollowCluster`
(trial concurrency as nodes join and leave)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ray.tune import Callback

from mtl_ray import progress
from mtl_ray.cluster.capacity import ask_autoscaler
from mtl_ray.cluster.runtime import alive_nodes
from mtl_ray.errors import describe, user_error_in
from mtl_ray.registry import tracking
from mtl_ray.training.worker import STEP_KEY

log = logging.getLogger(__name__)


class TrialLogger(Callback):
    """Ray Tune callback: one MLflow child run per trial under the tune job's parent run, with the
    trial's parameters, the data it used (dataset inputs), its per-epoch metrics and, at its end,
    their curves as PNGs.

    A failure to log never stops tuning: it is counted in `failures` (reported by `mtl-ray tune`)
    and the checkpoints stay on storage for `mtl-ray register --checkpoint`.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        parent_run_id: str,
        max_epochs: int,
        checkpoint_prefix: str = "",
        profiles: dict[str, dict] | None = None,
    ):
        self.uri = uri
        self.profiles = profiles or {}
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
        found = self.trial_runs(client, trial.trial_id)  # a resumed search continues the trial's run
        if found:
            self.run_ids.update(found)
            return
        run = client.create_run(
            self.experiment,
            run_name=trial.trial_id,
            tags={tracking.PARENT_TAG: self.parent_run_id, tracking.TRIAL_TAG: trial.trial_id},
        )
        self.run_ids[trial.trial_id] = run.info.run_id
        tracking.log_params(client, run.info.run_id, tracking.flat_params(trial.config))
        if self.profiles:
            tracking.log_datasets(client, run.info.run_id, self.profiles)

    def trial_runs(self, client=None, trial_id: str | None = None) -> dict[str, str]:
        """{trial id: run id} of the parent's child runs (of one trial when `trial_id` is given)."""
        query = f"tags.`{tracking.PARENT_TAG}` = '{self.parent_run_id}'"
        if trial_id:
            query += f" and tags.`{tracking.TRIAL_TAG}` = '{trial_id}'"
        runs = (client or self._client()).search_runs([self.experiment], filter_string=query, max_results=1000)
        return {r.data.tags[tracking.TRIAL_TAG]: r.info.run_id for r in runs if tracking.TRIAL_TAG in r.data.tags}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._safely("log epoch", self._result, trial, result)

    def _result(self, trial, result) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None or STEP_KEY in result:
            return
        epoch = int(result.get("epoch", 0))
        self.epochs[trial.trial_id] = epoch
        client = self._client()
        tracking.log_numbers(client, run_id, tracking.epoch_metrics(result), epoch)
        if result.get("checkpoint_path"):
            client.set_tag(run_id, tracking.CHECKPOINT_TAG, self.checkpoint_prefix + result["checkpoint_path"])

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
        tracking.log_curves(client, run_id)  # after the status, so a plotting failure cannot leave the run open


class TrialProgress(Callback):
    """Ray Tune callback: progress lines on the tune driver, a trial's start, each of its epochs, and
    its end with the reason (finished, stopped early by the scheduler, failed)."""

    def __init__(self, max_epochs: int, scheduler: str):
        self.max_epochs = max_epochs
        self.scheduler = scheduler
        self.printers: dict[str, progress.EpochPrinter] = {}

    def _printer(self, trial) -> progress.EpochPrinter:
        if trial.trial_id not in self.printers:
            self.printers[trial.trial_id] = progress.EpochPrinter(f"trial {trial.trial_id}", self.max_epochs)
        return self.printers[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._printer(trial)
        searched = ", ".join(f"{k}={short(v)}" for k, v in trial.config.items())
        progress.say(f"trial {trial.trial_id} started: {searched}")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if STEP_KEY not in result:
            self._printer(trial)(result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        epochs = int((trial.last_result or {}).get("epoch", 0))
        why = "finished" if epochs >= self.max_epochs else f"stopped early by {self.scheduler}"
        progress.say(f"trial {trial.trial_id} {why} at epoch {epochs}/{self.max_epochs}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        error = trial.get_error()
        progress.say(f"trial {trial.trial_id} failed: {trial_error(error) if error else 'see its error file'}")


class FollowCluster(Callback):
    """Ray Tune callback: the trials run side by side follow the cluster. Every `every_s` it counts
    the trials that `fits(alive nodes)` and sets that as the search's limit (`limiter.max_concurrent`,
    Tune's `ConcurrencyLimiter` or `BasicVariantGenerator`), saying so when it changes: an
    autoscaled cluster that gains nodes runs more trials, one that loses a node fewer.

    A limited search leaves no pending trial for an autoscaler to see, so on a cluster that may grow
    (`ask`: one trial's resource bundles) it asks Ray's autoscaler for room for every trial of the
    `wanted` not finished yet, and takes the request back when the search ends."""

    def __init__(
        self,
        limiter,
        fits: Callable[[list[dict[str, float]]], int],
        *,
        wanted: int = 0,
        ask: list[dict[str, float]] | None = None,
        every_s: float = 10.0,
        nodes: Callable[[], list[dict[str, float]]] = alive_nodes,
        request: Callable[[list[dict[str, float]]], None] = ask_autoscaler,
    ):
        self.limiter, self.fits, self.every_s, self.nodes = limiter, fits, every_s, nodes
        self.wanted, self.ask, self.asked, self.request = wanted, ask, 0, request
        self.checked = float("-inf")

    def on_step_begin(self, iteration, trials, **info) -> None:
        if time.monotonic() - self.checked < self.every_s:
            return
        self.checked = time.monotonic()
        nodes = self.nodes()
        limit = self.fits(nodes)
        if limit != self.limiter.max_concurrent:
            progress.say(
                f"tune: {limit} trial(s) at a time from now (was {self.limiter.max_concurrent}): "
                f"the cluster has {len(nodes)} node(s)"
            )
            self.limiter.max_concurrent = limit
        if self.ask:
            left = max(0, self.wanted - sum(t.status in ("TERMINATED", "ERROR") for t in trials))
            want = left if left > limit else 0  # the cluster holds the rest: no request
            if want != self.asked:
                if want and not self.asked:
                    progress.say(
                        f"tune: {limit} of {left} trial(s) fit the cluster now; asked Ray's autoscaler for room "
                        f"for all of them ({len(self.ask)} bundle(s) each: {self.ask})"
                    )
                self.request(self.ask * want)
                self.asked = want

    def on_experiment_end(self, trials, **info) -> None:
        if self.asked:
            self.request([])
            self.asked = 0


def short(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{v}" if k == "name" else f"{k}={v}" for k, v in value.items())
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_error(error: BaseException) -> str:
    """A failed trial's one line: the user's mistake it hit (a bad image, say), else the exception's."""
    found = user_error_in(error)
    return str(found) if found else describe(error)
