"""Hugging Face exports written by the real `datasets` library (`Dataset.from_dict(...,
features=Features(...))`, `to_parquet`) in the hub's layout, `NAME/data/{split}-0000k-of-0000K.parquet`,
for the tests of `mtl-ray data convert` and `validate`.

Images are small scenes of coloured squares: `scenes` returns, per image, which of the colours it
shows, so each layout's labels are derived from known truth and tests compare counts with it.
"""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

datasets.disable_progress_bars()

COLOURS = ((220, 40, 40), (40, 180, 60), (50, 80, 220), (230, 200, 40), (160, 60, 200))
CELEBA = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
    "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young"
).split()
"""CelebA's 40 attribute names, in its order."""


def scenes(n: int, size: int = 32, seed: int = 0, classes: int = 3) -> tuple[list[np.ndarray], list[list[int]]]:
    """`n` RGB images [size, size, 3] on a gray ground, each with squares in 0 to 3 of the first
    `classes` COLOURS; returns the images and, per image, the sorted colour ids it shows."""
    rng = np.random.default_rng(seed)
    images, present = [], []
    side = size // 3
    for _ in range(n):
        image = np.full((size, size, 3), 128, dtype=np.uint8) + rng.integers(0, 20, (size, size, 1), dtype=np.uint8)
        shown = sorted(rng.choice(classes, size=int(rng.integers(0, min(3, classes) + 1)), replace=False).tolist())
        for k, colour in enumerate(shown):
            top, left = int(rng.integers(0, size - side)), (k * side) % (size - side + 1)
            image[top : top + side, left : left + side] = colour
        images.append(image)
        present.append(shown)
    return images, present


def encoded(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def dataset(columns: dict[str, list], features: dict[str, object]) -> datasets.Dataset:
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def write_hub(root: Path, splits: dict[str, datasets.Dataset], shards: int = 1) -> Path:
    """Each split's rows to `root/data/{split}-0000k-of-0000K.parquet` (`shards` files a split), as the
    hub stores them; returns `root`."""
    for split, ds in splits.items():
        for k in range(shards):
            part = ds.shard(shards, k, contiguous=True)
            part.to_parquet(str(root / "data" / f"{split}-{k:05d}-of-{shards:05d}.parquet"))
    return root
