"""`mtl-ray predict`: a model pulled from the registry (or any pyfunc model) scores images in this
process, as a user's own code would load it (`mlflow.pyfunc.load_model`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mtl_ray.data.rows import shard_rows
from mtl_ray.errors import UserError, describe
from mtl_ray.registry import tracking
from mtl_ray.result import Result, table


@dataclass
class PredictResult(Result):
    """Per-task probabilities for each input image, in input order."""

    model: str
    tasks: list[str]
    ids: list[str]
    probabilities: np.ndarray
    errors: dict[str, str] = field(default_factory=dict)
    """Images the model could not read, by id: their probabilities are None (NaN) and the exit code 2."""

    @property
    def exit_code(self) -> int:
        return 2 if self.errors else 0

    def to_json(self) -> dict:
        rows = [
            {t: None if np.isnan(p) else float(p) for t, p in zip(self.tasks, row, strict=True)}
            for row in self.probabilities
        ]
        out = {"model": self.model, "tasks": self.tasks, "ids": self.ids, "predictions": rows}
        if self.errors:
            out["errors"] = self.errors
            out["problems"] = self.problems
        return out

    @property
    def problems(self) -> list[str]:
        return [f"{i}: {reason}" for i, reason in self.errors.items()]

    def render(self) -> str:
        shown = min(len(self.ids), 10)
        rows = [
            [i, *(f"{p:.3f}" for p in row)] for i, row in zip(self.ids[:shown], self.probabilities[:shown], strict=True)
        ]
        more = [f"... {len(self.ids) - shown} more (see --json)"] if len(self.ids) > shown else []
        return "\n".join(
            [
                f"{self.model}: {len(self.ids)} images, {len(self.tasks)} tasks",
                *table(["image", *self.tasks], rows),
                *more,
            ]
        )


def predict(
    model_uri: str,
    *,
    data: str | None = None,
    images: list[str] = (),
    limit: int | None = None,
    tracking_uri: str | None = None,
) -> PredictResult:
    """Load `model_uri` (e.g. `models:/mtl-ray@champion`) with `mlflow.pyfunc` and score images."""
    import mlflow.pyfunc
    import pandas as pd

    if (data is None) == (not images):
        raise UserError("predict: give --data PATH or image files, not both")
    if data is not None:
        ids, encoded, _ = shard_rows(data, limit)
    else:
        ids, encoded = list(images), []
        for path in images:
            try:
                with open(path, "rb") as f:
                    encoded.append(f.read())
            except OSError as exc:
                raise UserError(f"{path}: cannot read image ({exc.strerror or exc})") from None
    uri_used = tracking.tracking_uri(tracking_uri)
    if model_uri.startswith(("models:/", "runs:/")):
        tracking.connect(uri_used)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except Exception as exc:
        raise UserError(f"--model {model_uri}: cannot load ({tracking.masked(describe(exc), uri_used)})") from None
    out = model.predict(pd.DataFrame({"image": encoded}))
    tasks = [c for c in out.columns if c != "error"]
    errors = {}
    if "error" in out.columns:
        errors = {i: e for i, e in zip(ids, out["error"], strict=True) if isinstance(e, str)}
    return PredictResult(
        model=model_uri, tasks=tasks, ids=ids, probabilities=out[tasks].to_numpy(dtype=np.float64), errors=errors
    )
