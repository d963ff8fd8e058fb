"""The registered model: an `mlflow.pyfunc.PythonModel` around an mtl-ray checkpoint.

Input: a pandas DataFrame with an `image` column of encoded image bytes (PNG, JPEG, anything
Pillow reads). Output: a DataFrame with one probability column per task, in task order.
Preprocessing (decode as `mtl_ray.images` does, resize to the training size by the training run's
`resize` mode, normalisation) happens inside, with the
same functions training used.

The model carries its own code: `mtl_ray.registry` logs it with `code_paths=[<the mtl_ray
package>]`, and MLflow puts that copy on `sys.path` before unpickling this class. So this module
imports only what an environment with mlflow and torch has (torch, numpy, pandas, Pillow, pyarrow),
never Ray or scikit-learn.
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

IMAGE_COLUMN = "image"
CHECKPOINT_ARTIFACT = "checkpoint"
PREDICT_BATCH = 256


class MultiTaskModel(mlflow.pyfunc.PythonModel):
    """Per-task probabilities from encoded images, computed by a checkpoint's network on CPU."""

    def load_context(self, context) -> None:
        from mtl_ray.model import checkpoint

        state, meta = checkpoint.load(context.artifacts[CHECKPOINT_ARTIFACT])
        self.load(state, meta)

    def load(self, state: dict, meta: dict, device: str = "cpu") -> None:
        """The network of a checkpoint's `state` and `meta`, on `device` (score and serve put it on a GPU)."""
        from mtl_ray.model import checkpoint

        self.tasks = list(meta["tasks"])
        self.size, self.resize = checkpoint.input_spec(meta)
        self.device = torch.device(device)
        self.model = checkpoint.network(meta)
        self.model.load_state_dict(state["model"])
        self.model.to(self.device).eval()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """One probability column per task; a row whose image cannot be read gets NaN probabilities, and
        then an `error` column (last) names each such row and why, so one bad image does not fail the
        batch (None for the rows that scored)."""
        from mtl_ray.data.images import UnreadableImage, read_image
        from mtl_ray.errors import UserError

        if IMAGE_COLUMN not in model_input.columns:
            raise UserError(
                f"model input: no {IMAGE_COLUMN!r} column; expected a DataFrame with encoded image bytes in "
                f"{IMAGE_COLUMN!r}"
            )
        images = np.zeros((len(model_input), *self.size, 3), np.uint8)
        errors: list[str | None] = [None] * len(model_input)
        for row, value in enumerate(model_input[IMAGE_COLUMN]):
            try:
                images[row] = read_image(_as_bytes(value, row), size=self.size, resize=self.resize)
            except (UnreadableImage, TypeError) as exc:
                errors[row] = f"row {row}: {exc}"
        out = pd.DataFrame(self.probabilities(images), columns=self.tasks)
        if any(errors):
            out.loc[[e is not None for e in errors], self.tasks] = np.nan
            out["error"] = errors
        return out

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] at the training size → float64 probabilities [N, T]."""
        from mtl_ray.model.backbones import to_input

        out = np.empty((len(images), len(self.tasks)), dtype=np.float64)
        with torch.no_grad():
            for start in range(0, len(images), PREDICT_BATCH):
                batch = torch.from_numpy(np.ascontiguousarray(images[start : start + PREDICT_BATCH]))
                x = to_input(batch.to(self.device, non_blocking=True))
                out[start : start + len(x)] = torch.sigmoid(self.model(x)).double().cpu().numpy()
        return out


def _as_bytes(value, row: int) -> bytes:
    """A cell of the image column as bytes: raw bytes, or a Hugging Face image struct's."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict) and "bytes" in value:  # Hugging Face image struct
        return bytes(value["bytes"])
    raise TypeError(f"column {IMAGE_COLUMN!r} holds {type(value).__name__}; expected encoded image bytes")
