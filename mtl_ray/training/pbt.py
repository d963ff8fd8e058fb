"""Population Based Training over trials that each run a Ray Train `TorchTrainer`.

Tune's `PopulationBasedTraining` lets a trial in the bottom quantile take a top trial's checkpoint,
which it asks Tune to save when the top trial reports. A trial of `mtl-ray tune` keeps its
checkpoints in its Train run's storage and reports to Tune only their path (`checkpoint_path`,
Ray's `TuneReportCallback`), so Tune's save finds nothing and plain PBT never exploits (measured on
the local three-node stack: 4 trials, 6 epochs, no trial continued from another's checkpoint).
`TrainPBT` hands over the checkpoint the top trial's Train run reported last instead.
"""

from __future__ import annotations

from ray.tune import Checkpoint
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY
from ray.tune.schedulers import PopulationBasedTraining


class TrainPBT(PopulationBasedTraining):
    """`PopulationBasedTraining` whose top trials offer their Train run's last reported checkpoint
    (on `storage_filesystem`, None for a local path) for the bottom trials to exploit."""

    def __init__(self, *, storage_filesystem=None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.storage_filesystem = storage_filesystem

    def _checkpoint_or_exploit(self, trial, tune_controller, upper_quantile, lower_quantile) -> None:
        if trial not in upper_quantile:
            super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile, lower_quantile)
            return
        state = self._trial_state[trial]
        path = (state.last_result or {}).get(CHECKPOINT_PATH_KEY)
        state.last_checkpoint = Checkpoint(path, filesystem=self.storage_filesystem) if path else None
        self._num_checkpoints += 1
