"""A Hugging Face export of multi-digit scenes, converted as a user would: the third world of the studies.

Like the export a user tried (64x64 scenes of 2 to 4 handwritten digits, seven tasks, one labeled on
5 % of the training rows), built from scikit-learn's digits (benchmarks/digit_scenes.py with 2 to 4
digits a scene) and written by the real `datasets` library in the hub's layout: an `Image()` column
of PNGs and one nullable `Value("int8")` column per task (`has_0` … `has_6`; None where unknown),
`data/train-…parquet` and `data/validation-…parquet`. `mtl-ray data convert` then turns it into
shards, with its defaults.

    python benchmarks/hf_digits.py OUT [--n 4000] [--starve has_3=0.05] [--seed 0]
"""

from __future__ import annotations

import io
import os
import sys
import tempfile

import digit_scenes
import numpy as np

from mtl_ray.data.convert.pipeline import convert

TASKS = tuple(f"has_{k}" for k in range(7))
DIGITS = (2, 4)


def export(root: str, n: int, *, seed: int = 0, starve: dict[str, float] | None = None) -> str:
    """The hub layout at ROOT: 80 % train (with `starve` label rates), 20 % validation; returns ROOT."""
    import datasets
    from PIL import Image

    datasets.disable_progress_bars()
    rng = np.random.default_rng([seed, 2])
    n_val = n // 5
    features = datasets.Features({"image": datasets.Image(), **{t: datasets.Value("int8") for t in TASKS}})
    for split, count in (("train", n - n_val), ("validation", n_val)):
        images, labels = digit_scenes.scenes(count, seed, "train" if split == "train" else "val", len(TASKS), DIGITS)
        columns: dict[str, list] = {"image": []}
        for pixels in images:
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            columns["image"].append({"bytes": buf.getvalue(), "path": None})
        for j, task in enumerate(TASKS):
            known = rng.random(count) < (starve or {}).get(task, 1.0) if split == "train" else np.ones(count, bool)
            columns[task] = [int(y) if k else None for y, k in zip(labels[:, j], known, strict=True)]
        datasets.Dataset.from_dict(columns, features=features).to_parquet(
            os.path.join(root, "data", f"{split}-00000-of-00001.parquet")
        )
    return root


def write(out: str, n: int, *, seed: int = 0, starve: dict[str, float] | None = None) -> str:
    """Shards at OUT converted from a fresh export; returns OUT."""
    with tempfile.TemporaryDirectory() as tmp:
        convert(export(os.path.join(tmp, "hub"), n, seed=seed, starve=starve), out)
    return out


def main() -> int:
    return digit_scenes.main(write, __doc__, "scenes via a Hugging Face export")


if __name__ == "__main__":
    sys.exit(main())
