"""JPEG decoded in the training worker, on its device: nvJPEG on a GPU (`torchvision.io.decode_jpeg`),
so 224 px JPEG shards do not need five or more CPU cores per GPU to keep it busy.

With `decode: worker` (and `auto` on GPU runs over streamed JPEG shards when torchvision imports), Ray Data
passes the JPEG bytes through undecoded; `dataset.ShardCollate` packs a batch's bytes into one
tensor with their offsets and EXIF orientations, and `DecodeOnDevice` turns each such batch into the
uint8 [N, H, W, 3] images the CPU path gives:
- decoded by nvJPEG on CUDA (Pillow on other devices, as the CPU path decodes);
- turned upright by the EXIF orientation, which nvJPEG ignores;
- brought to the training size with `images.fit`'s geometry (letterbox, squash, center_crop) and
  antialiased bilinear resampling (torch's matches Pillow's within one level: tests/test_device_decode.py).
A batch nvJPEG rejects (a damaged file, a PNG among the JPEGs, CMYK) is decoded image by image with
Pillow instead; an image Pillow cannot read either is dropped and counted in "skipped", as on the
CPU path. `strict` runs decode in Ray Data tasks, where the shard and row of a bad image are known;
validation rows are always decoded there (rank 0 reads them once per epoch).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from mtl_ray.data.images import PAD_COLOUR, Size, UnreadableImage, check_resize, placement, read_image

_EXIF_ORIENTATION = 0x0112


@functools.cache
def nvjpeg() -> object | None:
    """`torchvision.io.decode_jpeg` when torchvision imports with its image ops, else None."""
    try:
        return importlib.import_module("torchvision.io").decode_jpeg
    except Exception:  # absent, or built against another torch ("operator torchvision::nms does not exist")
        return None


def in_worker(decode: str, encoding: str, use_gpu: bool, strict: bool, cached: bool = False) -> bool:
    """Whether training images are decoded in the training worker rather than in Ray Data tasks.

    `tasks` never; `worker` for JPEG shards (PNG and raw stay on the CPU path); `auto` for JPEG
    shards on GPU runs when torchvision is installed and the training rows are streamed: rows small
    enough to be `cached` are decoded once by Ray Data and kept as pixels, cheaper than decoding
    them every epoch on the GPU. Not with `strict`, which needs the shard and row of a bad image
    (known only in Ray Data tasks; `TrainConfig` refuses `worker` with it)."""
    if decode == "tasks" or encoding != "jpeg" or strict:
        return False
    return decode == "worker" or (use_gpu and not cached and nvjpeg() is not None)


def orientation(data: bytes | memoryview) -> int:
    """The EXIF orientation (1–8) of JPEG bytes, 1 when there is none; reads the header segments only."""
    view = memoryview(data)
    pos = 2
    while pos + 4 <= len(view) and view[pos] == 0xFF:
        marker, length = view[pos + 1], int.from_bytes(view[pos + 2 : pos + 4], "big")
        if marker == 0xE1 and bytes(view[pos + 4 : pos + 10]) == b"Exif\x00\x00":
            return _tiff_orientation(bytes(view[pos + 10 : pos + 2 + length]))
        if not 0xE0 <= marker <= 0xEF and marker != 0xFE:  # past the APPn and comment segments
            return 1
        pos += 2 + length
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    """The orientation tag of an EXIF block's first IFD (a TIFF header, then 12-byte entries), else 1."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    count = int.from_bytes(tiff[ifd : ifd + 2], order)
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        if int.from_bytes(tiff[entry : entry + 2], order) == _EXIF_ORIENTATION:
            value = int.from_bytes(tiff[entry + 8 : entry + 10], order)
            return value if 1 <= value <= 8 else 1
    return 1


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A [C, H, W] image as shown once its EXIF `orientation` is applied (Pillow's `exif_transpose`)."""
    if orientation == 2:
        return image.flip(2)
    if orientation == 3:
        return image.flip(1, 2)
    if orientation == 4:
        return image.flip(1)
    if orientation == 5:
        return image.transpose(1, 2)
    if orientation == 6:
        return torch.rot90(image, -1, (1, 2))
    if orientation == 7:
        return image.transpose(1, 2).flip(1, 2)
    if orientation == 8:
        return torch.rot90(image, 1, (1, 2))
    return image


def _resample(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [N, C, h, w] → [N, C, size] by antialiased bilinear resampling (Pillow's BILINEAR)."""
    out = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def fit(images: list[torch.Tensor], size: Size, resize: str = "letterbox") -> torch.Tensor:
    """uint8 [C=3, h, w] images of any sizes → one uint8 [N, H, W, 3] batch at `size` (height, width),
    placed as `images.fit` places them; images that share a size are resampled together."""
    check_resize(resize)
    height, width = size
    device = images[0].device if images else torch.device("cpu")
    out = torch.empty((len(images), 3, height, width), dtype=torch.uint8, device=device)
    if resize == "letterbox":
        out[:] = torch.tensor(PAD_COLOUR, dtype=torch.uint8, device=device).view(3, 1, 1)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(tuple(image.shape[1:]), []).append(i)
    for (h, w), rows in by_shape.items():
        group = torch.stack([images[i] for i in rows])
        if (h, w) == (height, width):
            out[rows] = group
            continue
        rw, rh, left, top = placement(w, h, size, resize)
        resized = _resample(group, (rh, rw))
        if resize == "letterbox":
            out[rows, :, top : top + rh, left : left + rw] = resized
        else:  # squash (left = top = 0) or center_crop
            out[rows] = resized[:, :, top : top + height, left : left + width]
    return out.permute(0, 2, 3, 1)


def _pillow(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Each image decoded on the CPU as the CPU path decodes it (upright, RGB); None where unreadable."""
    out = []
    for encoded in data:
        try:
            pixels = read_image(encoded.numpy().tobytes())
        except UnreadableImage:
            out.append(None)
            continue
        out.append(torch.tensor(pixels).permute(2, 0, 1).to(device))
    return out


def decode(
    data: list[torch.Tensor], orientations: list[int], size: Size, resize: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """JPEG bytes (1-D uint8 CPU tensors) → (uint8 [N', H, W, 3] images on `device`, bool [N] kept).

    nvJPEG decodes the batch on a CUDA device; elsewhere, or when it rejects the batch, Pillow decodes
    each image, and the ones it cannot read are not kept."""
    decoded: list[torch.Tensor | None] | None = None
    decode_jpeg = nvjpeg()
    if device.type == "cuda" and decode_jpeg is not None and data:
        try:
            batch = decode_jpeg(data, mode="RGB", device=device)
            decoded = [upright(image, o) for image, o in zip(batch, orientations, strict=True)]
        except RuntimeError:
            decoded = None
    if decoded is None:
        decoded = _pillow(data, device)
    kept = torch.tensor([image is not None for image in decoded], dtype=torch.bool)
    images = [image for image in decoded if image is not None]
    if not images:
        return torch.empty((0, *size, 3), dtype=torch.uint8, device=device), kept
    return fit(images, size, resize), kept


class DecodeOnDevice:
    """Collated batches of JPEG bytes ({"jpeg", "offsets", "orientation", "labels", "skipped"}) →
    the batches the CPU path collates ({"image" [N, H, W, 3] uint8 on `device`, "labels", "skipped"})."""

    def __init__(self, batches: Iterable[dict], size: Size, resize: str, device: torch.device):
        self.batches, self.size, self.resize, self.device = batches, size, resize, device

    def __iter__(self) -> Iterator[dict]:
        for batch in self.batches:
            offsets = batch["offsets"].tolist()
            data = [batch["jpeg"][a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
            images, kept = decode(data, batch["orientation"].tolist(), self.size, self.resize, self.device)
            yield {
                "image": images,
                "labels": batch["labels"][kept].to(self.device, non_blocking=True),
                "skipped": batch["skipped"] + int((~kept).sum()),
            }


def packed(values: np.ndarray, offsets: np.ndarray) -> dict:
    """A batch's JPEG bytes (`values`, row i at offsets[i]:offsets[i+1]) as the tensors `DecodeOnDevice`
    reads: one uint8 tensor, int64 offsets from 0, and each row's EXIF orientation."""
    start = int(offsets[0])
    view = memoryview(values)
    return {
        "jpeg": torch.from_numpy(np.array(values[start : int(offsets[-1])])),
        "offsets": torch.from_numpy(np.asarray(offsets, dtype=np.int64) - start),
        "orientation": torch.tensor(
            [orientation(view[int(a) : int(b)]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)],
            dtype=torch.uint8,
        ),
    }
