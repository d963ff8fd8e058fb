"""A world where the answer to "which tasks should share a network" is known: two task families
that share nothing.

The left half of every image holds one white shape (circle, square, triangle or cross) of one of
four sizes, anywhere on black; the right half is a noisy patch whose red channel has one of four
levels, its green and blue channels random. The `shape_*` tasks ask about the shape's size and the
`red_*` tasks about the red level, each family two thresholds on the same level, so a step that
helps one task of a family helps the other, while the other family needs none of its features:

- `shape_big`: size 2 or 3; `shape_huge`: size 3;
- `red_strong`: red level 2 or 3; `red_max`: red level 3.

Size and red level are drawn independently. `mtl-ray advise --groups` should recommend
`shape_big,shape_huge|red_strong,red_max`.
"""

from __future__ import annotations

import numpy as np

from mtl_ray.data.shards import ROW_GROUP_ROWS, ShardFormat, ShardWriter, encode_images, make_table
from mtl_ray.data.storage import prepare_output

TASKS = ("shape_big", "shape_huge", "red_strong", "red_max")
FAMILIES = (("shape_big", "shape_huge"), ("red_strong", "red_max"))
SIZE = 32
RADII = (2, 3, 5, 7)
RED = (40, 100, 160, 220)


def _shape(kind: int, r: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A bool mask [height, width] of one shape `kind` (0 circle, 1 square, 2 triangle, 3 cross) of radius `r`."""
    y, x = np.mgrid[:height, :width]
    dy, dx = y - rng.integers(r, height - r), x - rng.integers(r, width - r)
    if kind == 0:
        return dy**2 + dx**2 <= r**2
    if kind == 1:
        return (abs(dy) <= r * 0.8) & (abs(dx) <= r * 0.8)
    if kind == 2:
        return (dy <= r * 0.8) & (abs(dx) <= (dy + r) / 2)
    return ((abs(dy) <= r) & (abs(dx) <= r / 3)) | ((abs(dx) <= r) & (abs(dy) <= r / 3))


def scenes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [n, SIZE, SIZE, 3] and float32 labels [n, 4] in TASKS order."""
    rng = np.random.default_rng([seed, 7])
    half = SIZE // 2
    images = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    size, red = rng.integers(0, 4, n), rng.integers(0, 4, n)
    for i in range(n):
        images[i, :, :half][_shape(int(rng.integers(0, 4)), RADII[size[i]], SIZE, half, rng)] = 255
        patch = rng.normal(0, 15, (SIZE, SIZE - half, 3))
        patch += np.array([RED[red[i]], *rng.uniform(40, 220, 2)])
        images[i, :, half:] = np.clip(patch, 0, 255).astype(np.uint8)
    labels = np.stack([size >= 2, size == 3, red >= 2, red == 3], axis=1)
    return images, labels.astype(np.float32)


def write(out: str, n: int, *, seed: int = 0) -> str:
    """Shards of `n` scenes at `out`: 80 % train, 20 % val, every label known; returns `out`."""
    fmt = ShardFormat(tasks=TASKS, encoding="raw", shape=(SIZE, SIZE, 3))
    fs, root = prepare_output(out)
    images, labels = scenes(n, seed)
    parts = np.where(np.arange(n) < n - n // 5, "train", "val")
    with ShardWriter(fs, f"{root}/part-00000-of-00001.parquet", fmt) as writer:
        for start in range(0, n, ROW_GROUP_ROWS):
            chunk = slice(start, start + ROW_GROUP_ROWS)
            ids = [f"families-{seed}-{i:05d}" for i in range(start, min(n, start + ROW_GROUP_ROWS))]
            writer.write(make_table(fmt, encode_images(images[chunk], fmt), labels[chunk], ids, list(parts[chunk])))
    return out
