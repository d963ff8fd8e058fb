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
"""Snapshots kept per trial: one handed over is restored long before its trial offers two more."""


class TrainPBT(PopulationBasedTraining):
    """`PopulationBasedTraining` whose top trials offer a snapshot of their Train run's last reported
    checkpoint, copied under `snapshots` (on `storage_filesystem`; None: the local file system), for
    the bottom trials to exploit."""

    def __init__(self, *, snapshots: str, storage_filesystem=None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.snapshots = snapshots.rstrip("/")
        self.storage_filesystem = storage_filesystem
        self.kept: dict[str, list[str]] = {}

    def _checkpoint_or_exploit(self, trial, tune_controller, upper_quantile, lower_quantile) -> None:
        if trial not in upper_quantile:
            super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile, lower_quantile)
            return
        state = self._trial_state[trial]
        path = (state.last_result or {}).get(CHECKPOINT_PATH_KEY)
        state.last_checkpoint = self._snapshot(trial.trial_id, path, state.last_result["epoch"]) if path else None
        self._num_checkpoints += 1

    def _snapshot(self, trial_id: str, path: str, epoch: int) -> Checkpoint:
        fs = self.storage_filesystem or pyarrow.fs.LocalFileSystem()
        copy = f"{self.snapshots}/{trial_id}-epoch{epoch}"
        fs.create_dir(copy, recursive=True)
        pyarrow.fs.copy_files(path, copy, source_filesystem=fs, destination_filesystem=fs)
        kept = self.kept.setdefault(trial_id, [])
        kept.append(copy)
        while len(kept) > SNAPSHOTS_KEPT:
            fs.delete_dir(kept.pop(0))
        return Checkpoint(copy, filesystem=self.storage_filesystem)
