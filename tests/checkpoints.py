"""Checkpoints and registered models for the tests: a real checkpoint of a small network, its own
predictions, and a prediction in a fresh process that cannot import the installed mtl_ray."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import torch

from mtl_ray.config import TrainConfig
from mtl_ray.data.images import decode_image
from mtl_ray.model import checkpoint
from mtl_ray.model.backbones import TowerHeads, build, to_input
from mtl_ray.model.partition import PartitionedNet
from mtl_ray.model.weighting import get as get_weighting

TASKS = ["pedestrian", "car", "stop_sign", "traffic_light"]
SIZE = 32


def make_checkpoint(
    directory,
    mean_auroc: float,
    seed: int,
    image: dict | None = None,
    tasks: list[str] = TASKS,
    model: torch.nn.Module | None = None,
    val: dict | None = None,
) -> torch.nn.Module:
    """A real checkpoint of `model` (default: an untrained xs network), with `mean_auroc` as its
    validation score; `image` is its meta's image entry (default: the one-side form of checkpoints
    made before [H, W] sizes); `val` where its validation rows are (none: made before that was kept)."""
    directory.mkdir(parents=True)
    torch.manual_seed(seed)
    model = model or build("xs", len(tasks))
    meta = {
        "epoch": 1,
        "first_epoch": 1,
        "tasks": tasks,
        "backbone": "xs",
        **({"heads": "tower"} if isinstance(getattr(model, "heads", None), TowerHeads) else {}),
        **({"groups": [[tasks[i] for i in g] for g in model.groups]} if isinstance(model, PartitionedNet) else {}),
        "config": TrainConfig(backbone="xs").model_dump(),
        "image": image or {"size": SIZE, "channels": 3},
        "metrics": {
            "mean_auroc": mean_auroc,
            "train_images_per_s": 1.0,
            "val": {t: {"auroc": mean_auroc} for t in tasks},
        },
        "history": [],
        "data": {"val": val},
    }
    checkpoint.save(
        str(directory), model, get_weighting("equal", len(tasks)), torch.optim.AdamW(model.parameters()), meta
    )
    return model.eval()


def own_probabilities(model: torch.nn.Module, encoded: list[bytes], size: int = SIZE) -> np.ndarray:
    images = np.stack([decode_image(b, size=(size, size)) for b in encoded])
    with torch.no_grad():
        return torch.sigmoid(model(to_input(torch.from_numpy(images)))).double().numpy()


FRESH = textwrap.dedent("""
    import json, sys
    # Hide the editable install: mtl_ray may only come from the model's own code copy.
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path[:] = [p for p in sys.path if p not in ("", ".") and not p.endswith("/tests")]
    import mlflow.pyfunc
    import pandas as pd
    model = mlflow.pyfunc.load_model(sys.argv[1])
    import mtl_ray
    images = [open(p, "rb").read() for p in sys.argv[2:]]
    out = model.predict(pd.DataFrame({"image": images}))
    print(json.dumps({"columns": list(out.columns), "values": out.to_numpy().tolist(), "code": mtl_ray.__file__}))
""")


def fresh_predict(model_uri: str, paths: list[str], env: dict, cwd) -> dict:
    """Load and predict in a new Python process where the installed mtl_ray cannot be imported."""
    done = subprocess.run(
        [sys.executable, "-c", FRESH, model_uri, *paths], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
