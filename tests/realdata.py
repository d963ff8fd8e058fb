"""Data shaped the way users' data is, built from real photographs that scikit-learn ships
(`sklearn/datasets/images/china.jpg` and `flower.jpg`, 640x427 camera JPEGs; no network).

- `camera_folder`: a folder of phone/camera-like files with a labels CSV — 16:9 landscape JPEGs,
  portrait shots stored sideways with an EXIF orientation tag (as phones save them), and 16-bit
  grayscale PNG scans.
- `hf_gray_export`: a Parquet file written by the `datasets` library (`struct<bytes, path>` images,
  int8 labels, no mtl_ray metadata) of small non-square grayscale PNGs, 28 high and 56 wide.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
from datasets import Image as ImageFeature
from datasets import Value
from hf_exports import dataset
from PIL import Image

PHOTOS = ("china.jpg", "flower.jpg")


def photographs() -> dict[str, np.ndarray]:
    import sklearn

    root = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images")
    return {name: np.asarray(Image.open(os.path.join(root, name)).convert("RGB")) for name in PHOTOS}


def _crop(photo: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    top = int(rng.integers(0, photo.shape[0] - height + 1))
    left = int(rng.integers(0, photo.shape[1] - width + 1))
    return photo[top : top + height, left : left + width]


def camera_folder(root: Path, n: int = 90, seed: int = 0) -> tuple[Path, list[dict]]:
    """`n` files in `root` plus `root/labels.csv` (file, flower, warm); returns the folder and, per
    file, what a viewer shows: {"file", "kind", "shown": uint8 RGB pixels}.

    Tasks: `flower` (cut from flower.jpg, not china.jpg) and `warm` (more red than blue), with a
    fifth of the `warm` labels unknown.
    """
    rng = np.random.default_rng(seed)
    photos = photographs()
    root.mkdir(parents=True)
    rows, made = [], []
    for i in range(n):
        name = PHOTOS[i % 2]
        kind = ("landscape", "portrait", "gray16")[i % 3]
        if kind == "landscape":  # a 16:9 frame
            shown = Image.fromarray(_crop(photos[name], 180, 320, rng)).resize((160, 90))
            file = f"img{i:03d}.jpg"
            shown.save(root / file, quality=92)
        elif kind == "portrait":  # stored sideways, tagged to be turned upright (orientation 6)
            shown = Image.fromarray(_crop(photos[name], 320, 180, rng)).resize((90, 160))
            exif = Image.Exif()
            exif[0x0112] = 6
            file = f"img{i:03d}.jpg"
            shown.transpose(Image.Transpose.ROTATE_90).save(root / file, quality=92, exif=exif.tobytes())
        else:  # a 16-bit grayscale scan
            gray = np.asarray(Image.fromarray(_crop(photos[name], 120, 120, rng)).convert("L"), dtype=np.float64)
            file = f"img{i:03d}.png"
            Image.fromarray(np.rint(gray / 255 * 65535).astype(np.uint16)).save(root / file)
            shown = Image.fromarray(gray.astype(np.uint8)).convert("RGB")
        shown = np.asarray(shown.convert("RGB"))
        warm = shown[..., 0].mean() > shown[..., 2].mean()
        rows.append(
            {"file": file, "flower": int(name == "flower.jpg"), "warm": "" if rng.random() < 0.2 else int(warm)}
        )
        made.append({"file": file, "kind": kind, "shown": shown})
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "flower", "warm"])
        writer.writeheader()
        writer.writerows(rows)
    return root, made


def hf_gray_export(path: Path, rows: int, seed: int = 0, corrupt_row: int | None = None) -> Path:
    """A Parquet file as `datasets.Dataset.to_parquet` writes it: 28x56 (HxW) grayscale PNGs in
    `struct<bytes, path>`, int8 labels `bar` (a bright horizontal bar) and `left` (the left half is
    the brighter), no split column and no mtl_ray metadata. `corrupt_row` holds truncated bytes."""
    rng = np.random.default_rng(seed)
    images, bar, left = [], [], []
    for i in range(rows):
        array = rng.normal(90, 25, (28, 56))
        has_bar, is_left = rng.random() < 0.5, rng.random() < 0.5
        if has_bar:
            top = int(rng.integers(2, 22))
            array[top : top + 4] += 110
        array[:, : 28 if is_left else 28 :] += 45
        buf = io.BytesIO()
        Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "L").save(buf, format="PNG")
        data = buf.getvalue()
        images.append({"bytes": data[: len(data) // 3] if i == corrupt_row else data, "path": f"{i:05d}.png"})
        bar.append(int(has_bar))
        left.append(int(is_left))
    features = {"image": ImageFeature(), "bar": Value("int8"), "left": Value("int8")}
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset({"image": images, "bar": bar, "left": left}, features).to_parquet(str(path), batch_size=256)
    return path
