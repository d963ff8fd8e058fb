"""Population Based Training over trials that each run a Ray Train `TorchTrainer`.

Tune's `PopulationBasedTraining` lets a trial in the bottom quantile take a top trial's checkpoint,
which it asks Tune to save when the top trial reports. A trial of `mtl-ray tune` keeps its
checkpoints in its Train run's storage and reports to Tune only their path (`checkpoint_path`,
Ray's `TuneReportCallback`), so Tune's save finds nothing and plain PBT never exploits (measured on
the local three-node stack: 4 trials, 6 epochs, no trial continued from another's checkpoint).
`TrainPBT` hands over a snapshot of the checkpoint the top trial's Train run reported last: a copy,
because the Train run keeps only its newest `num_to_keep` checkpoints and a fast top trial had
already deleted the one it offered when the bottom trial came to restore it (measured: two of four
trials failed so with references instead of copies).
"""

from __future__ import annotations

import pyarrow.fs
from ray.tune import Checkpoint
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY
from ray.tune.schedulers import PopulationBasedTraining

SNAPSHOTS_KEPT = 2
"""Snapshots a trial keeps of its own offers, besides any that a trial was handed: Tune restores a
paused trial from the last checkpoint it was handed, so that one lives as long as the trial holds it."""


class TrainPBT(PopulationBasedTraining):
    """`PopulationBasedTraining` whose top trials offer a snapshot of their Train run's last reported
    checkpoint, copied under `snapshots` (on `storage_filesystem`; None: the local file system), for
    the bottom trials to exploit."""

    def __init__(self, *, snapshots: str, storage_filesystem=None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.snapshots = snapshots.rstrip("/")
        self.storage_filesystem = storage_filesystem
        self.offered: dict[str, list[str]] = {}
        """Each trial's snapshots of its own checkpoints, oldest first."""
        self.held: dict[str, str] = {}
        """The snapshot each trial was last handed (Tune restores it from there after a pause)."""

    def _checkpoint_or_exploit(self, trial, tune_controller, upper_quantile, lower_quantile) -> None:
        if trial not in upper_quantile:
            super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile, lower_quantile)
            return
        state = self._trial_state[trial]
        path = (state.last_result or {}).get(CHECKPOINT_PATH_KEY)
        state.last_checkpoint = self._snapshot(trial.trial_id, path, state.last_result["epoch"]) if path else None
        self._num_checkpoints += 1

    def _exploit(self, tune_controller, trial, trial_to_clone) -> None:
        super()._exploit(tune_controller, trial, trial_to_clone)
        self.held[trial.trial_id] = self._trial_state[trial_to_clone].last_checkpoint.path
        self._prune()

    def _snapshot(self, trial_id: str, path: str, epoch: int) -> Checkpoint:
        copy = f"{self.snapshots}/{trial_id}-epoch{epoch}"
        self._fs.create_dir(copy, recursive=True)
        pyarrow.fs.copy_files(path, copy, source_filesystem=self._fs, destination_filesystem=self._fs)
        self.offered.setdefault(trial_id, []).append(copy)
        self._prune()
        return Checkpoint(copy, filesystem=self.storage_filesystem)

    def _prune(self) -> None:
        """Delete the snapshots no trial holds beyond each trial's newest `SNAPSHOTS_KEPT` offers."""
        held = set(self.held.values())
        for offers in self.offered.values():
            for old in [o for o in offers[:-SNAPSHOTS_KEPT] if o not in held]:
                self._fs.delete_dir(old)
                offers.remove(old)

    @property
    def _fs(self) -> pyarrow.fs.FileSystem:
        return self.storage_filesystem or pyarrow.fs.LocalFileSystem()
