"""`mtl-ray quickstart`: the whole pipeline on one machine in a few minutes.

Synthesise driving scenes → Ray Tune over two backbone sizes × two weightings (ASHA, MLflow) →
register the best as `models:/mtl-ray@champion` (gated) → pull it back and predict a few images.
Local Ray, sqlite MLflow, CPU.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mtl_ray.config import SchedulerConfig, TrainConfig, TuneConfig
from mtl_ray.result import Result, number

if TYPE_CHECKING:
    from mtl_ray.registry.predict import PredictResult
    from mtl_ray.training.tune import TuneResult

DEFAULT_OUT = "mtl-ray-quickstart"
SCENES = 4000
EPOCHS = 2
PREDICT_ROWS = 5


def quickstart_config(out: str, epochs: int = EPOCHS) -> TuneConfig:
    """4 trials: backbones xs and s × weightings equal and uncertainty, ASHA after 1 epoch."""
    return TuneConfig(
        train=TrainConfig(epochs=epochs),
        search={"backbone": ["xs", "s"], "weighting": ["equal", "uncertainty"]},
        scheduler=SchedulerConfig(grace_period=1),
        storage=os.path.join(out, "runs"),
    )


@dataclass
class QuickstartResult(Result):
    data: str
    tune: TuneResult
    predictions: PredictResult
    seconds: float

    @property
    def model_uri(self) -> str:
        reg = self.tune.registered
        return f"models:/{reg.name}@{reg.alias}"

    def to_json(self) -> dict:
        summary = self.tune.to_json()
        return {
            "data": self.data,
            "best": summary["best"],
            "registered": summary["registered"],
            "model_uri": self.model_uri,
            "tracking_uri": self.tune.tracking_uri,
            "trials": summary["trials"],
            "predictions": self.predictions.to_json()["predictions"],
            "seconds": self.seconds,
        }

    def render(self) -> str:
        best = self.tune.best
        return "\n".join(
            [
                self.tune.render(),
                "",
                self.predictions.render(),
                "",
                f"quickstart done in {self.seconds:.0f} s",
                f"  shards       {self.data}",
                f"  best trial   {best.trial_id} {best.config} mean_auroc {number(best.mean_auroc)}",
                f"  model        {self.model_uri}",
                f"  MLflow       {self.tune.tracking_uri}",
                f"  browse runs  mlflow ui --backend-store-uri {self.tune.tracking_uri}",
                f"  predict      mtl-ray predict --model {self.model_uri} IMAGE...",
                f'  load         MLFLOW_TRACKING_URI={self.tune.tracking_uri} python -c "import mlflow.pyfunc; '
                f"m = mlflow.pyfunc.load_model('{self.model_uri}')\"",
                f"  serve        mlflow models serve -m {self.model_uri} --env-manager local -h 127.0.0.1 -p 5001",
            ]
        )


def quickstart(out: str = DEFAULT_OUT, *, scenes: int = SCENES, epochs: int = EPOCHS) -> QuickstartResult:
    """Run the pipeline into `out` (shards in out/data, checkpoints in out/runs)."""
    from mtl_ray.data.synth.dataset import synthesize
    from mtl_ray.registry.predict import predict
    from mtl_ray.training.tune import tune

    started = time.perf_counter()
    data = os.path.join(out, "data")
    synthesize(data, scenes, shards=4, seed=0)
    tuned = tune(data, config=quickstart_config(out, epochs), name=f"quickstart-{time.strftime('%Y%m%d-%H%M%S')}")
    predictions = predict(
        f"models:/{tuned.registered.name}@{tuned.registered.alias}",
        data=data,
        limit=PREDICT_ROWS,
        tracking_uri=tuned.tracking_uri,
    )
    return QuickstartResult(data=data, tune=tuned, predictions=predictions, seconds=time.perf_counter() - started)
