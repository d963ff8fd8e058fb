"""Real images in multi-label scenes: scikit-learn's handwritten digits (1,797 8x8 scans that the
package ships; no network), up to four to a 64x64 scene, one task per digit class.

Each scene is a 2x2 grid of 32 px cells; a cell holds a digit (scaled 3x, placed at random inside
it) with probability 0.6. Task `has_k` says whether digit k is in the scene, for k = 0 … 4; digits 5 … 9
appear too, as the other strokes a reader must tell apart. Training scenes draw from the first 1,200
scans and validation scenes from the other 597, so no handwriting is in both. The starved task keeps
its label on a fraction of the training rows only (null elsewhere); validation is fully labeled.

    python benchmarks/digit_scenes.py OUT [--n 4000] [--starve has_3=0.05] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from mtl_ray.data.shards import ROW_GROUP_ROWS, ShardFormat, ShardWriter, encode_images, make_table
from mtl_ray.data.storage import prepare_output

TASKS = ("has_0", "has_1", "has_2", "has_3", "has_4")
SIZE = 64
SCALE = 3
FILL = 0.6
TRAIN_SCANS = 1200


def scenes(
    n: int, seed: int, part: str, tasks: int = len(TASKS), count: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`n` scenes of the `part` ("train" or "val") scans: uint8 images [n, 64, 64, 3], labels [n, tasks]
    (`has_0` … `has_{tasks-1}`). Each cell holds a digit with probability FILL, or, with `count` =
    (lo, hi), lo to hi of the four cells do."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    glyphs = np.rint(digits.images / 16.0 * 255).astype(np.uint8)
    pool = np.arange(TRAIN_SCANS) if part == "train" else np.arange(TRAIN_SCANS, len(glyphs))
    rng = np.random.default_rng([seed, 0 if part == "train" else 1])
    images = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    labels = np.zeros((n, tasks), np.float32)
    side, cell = 8 * SCALE, SIZE // 2
    for i in range(n):
        chosen = set(rng.choice(4, rng.integers(count[0], count[1] + 1), replace=False)) if count else None
        for c in range(4):
            if (c not in chosen) if chosen is not None else rng.random() >= FILL:
                continue
            cy, cx = divmod(c, 2)
            k = rng.choice(pool)
            y = cy * cell + rng.integers(0, cell - side + 1)
            x = cx * cell + rng.integers(0, cell - side + 1)
            images[i, y : y + side, x : x + side] = np.kron(glyphs[k], np.ones((SCALE, SCALE), np.uint8))[..., None]
            if digits.target[k] < tasks:
                labels[i, digits.target[k]] = 1
    return images, labels


def write(out: str, n: int, *, seed: int = 0, starve: dict[str, float] | None = None) -> str:
    """Shards of `n` scenes at OUT: 80 % train (with `starve` label rates), 20 % val; returns OUT."""
    fmt = ShardFormat(tasks=TASKS, encoding="raw", shape=(SIZE, SIZE, 3))
    fs, root = prepare_output(out)
    rng = np.random.default_rng([seed, 2])
    n_val = n // 5
    with ShardWriter(fs, f"{root}/part-00000-of-00001.parquet", fmt) as writer:
        for part, count in (("train", n - n_val), ("val", n_val)):
            images, labels = scenes(count, seed, part)
            if part == "train":
                for task, rate in (starve or {}).items():
                    labels[rng.random(count) >= rate, TASKS.index(task)] = np.nan
            for start in range(0, count, ROW_GROUP_ROWS):
                chunk = slice(start, start + ROW_GROUP_ROWS)
                ids = [f"digits-{seed}-{part}-{i:05d}" for i in range(start, min(count, start + ROW_GROUP_ROWS))]
                writer.write(make_table(fmt, encode_images(images[chunk], fmt), labels[chunk], ids, [part] * len(ids)))
    return out


def main(writer=write, description: str = __doc__, what: str = "digit scenes") -> int:
    """The command line of a world's writer: OUT [--n N] [--starve TASK=RATE] [--seed S]."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--starve", default="has_3=0.05", metavar="TASK=RATE")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    task, _, rate = args.starve.partition("=")
    writer(args.out, args.n, seed=args.seed, starve={task: float(rate)})
    print(f"wrote {args.n} {what} to {args.out} ({task} labeled on {float(rate):.0%} of training rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
