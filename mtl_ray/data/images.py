"""One image, as bytes or as pixels: the decode, resize and encode every stage shares.

Convert, validate, the Ray Data pipeline, predict and the registered model all turn encoded bytes
into uint8 RGB pixels here, so the model in the registry preprocesses exactly as training did.
Decoding follows what image viewers show:
- the EXIF orientation tag is applied (phone photos are stored sideways and tagged);
- 16-bit grayscale is scaled to 8 bits by its bit depth (65,535 → 255), 32-bit integer grayscale
  likewise (2³¹ − 1 → 255, negatives 0), and float grayscale from [0, 1];
- transparent pixels (RGBA, LA, palette transparency) are composited on white, `ALPHA_BACKGROUND`;
- palette, CMYK, grayscale and 1-bit images become RGB as Pillow converts them.
Resizing to a training size [H, W] keeps the aspect ratio by default (`letterbox`: the whole frame,
padded with `PAD_COLOUR`); `squash` stretches, `center_crop` fills and cuts the edges.
Pillow and numpy only: the registered model imports this module in environments without Ray.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mtl_ray.errors import UserError, first_line

ENCODED = ("png", "jpeg")
RESIZE_MODES = ("letterbox", "squash", "center_crop")
ALPHA_BACKGROUND = (255, 255, 255)
PAD_COLOUR = (124, 116, 104)
"""Letterbox padding: the ImageNet mean, which the model's input normalisation maps to about 0."""

Size = tuple[int, int]
"""(height, width) in pixels."""

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


class UnreadableImage(UserError):
    """Bytes Pillow cannot read as an image; the message says why, not where (callers add that)."""


def decode_image(
    data: bytes, *, where: str = "", row: int = 0, size: Size | None = None, resize: str = "letterbox"
) -> np.ndarray:
    """One encoded image as uint8 RGB [H, W, 3] (see `read_image`); unreadable bytes raise a UserError
    naming `where` and `row`."""
    try:
        return read_image(data, size=size, resize=resize)
    except UnreadableImage as exc:
        raise UserError(f"{where}: row {row}: {exc}") from None


def read_image(data: bytes, *, size: int | Size | None = None, resize: str = "letterbox") -> np.ndarray:
    """One encoded image (any format and mode Pillow reads) as uint8 RGB [H, W, 3], as a viewer shows it.

    `size` (height, width) resizes by `resize`. Bytes Pillow cannot read raise `UnreadableImage`.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = to_rgb(im)
    except Exception as exc:  # Pillow raises many types for truncated or damaged data
        raise UnreadableImage(unreadable(exc)) from None
    return fit(rgb, as_size(size), resize) if size is not None else np.asarray(rgb)


def to_rgb(im: Image.Image) -> Image.Image:
    """An opened image, upright and in 8-bit RGB (see the module docstring for each mode)."""
    im = ImageOps.exif_transpose(im)
    if im.mode in _SIXTEEN_BIT:
        im = _gray8(np.asarray(im, dtype=np.float64) / 65535.0)
    elif im.mode == "I":
        im = _gray8(np.asarray(im, dtype=np.float64) / (2**31 - 1))
    elif im.mode == "F":
        im = _gray8(np.asarray(im, dtype=np.float64))
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in _ALPHA:
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (*ALPHA_BACKGROUND, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB")


def _gray8(fraction: np.ndarray) -> Image.Image:
    """Gray levels as fractions of full scale → an 8-bit 'L' image (rounded, clipped to [0, 255])."""
    return Image.fromarray(np.clip(np.rint(np.nan_to_num(fraction) * 255.0), 0, 255).astype(np.uint8), "L")


def check_resize(resize: str) -> None:
    if resize not in RESIZE_MODES:
        raise UserError(f"resize {resize!r}: expected one of {', '.join(RESIZE_MODES)}")


def placement(width: int, height: int, size: Size, resize: str) -> tuple[int, int, int, int]:
    """How an image of `width`×`height` reaches `size` (height, width) by `resize`: (w, h, left, top),
    the size it is resampled to and, for letterbox, where it is pasted on the padded canvas or, for
    center_crop, where the crop starts in it (squash: the target size at 0, 0). Shared by `fit` and
    the GPU decode (`mtl_ray.device_decode`), so both place pixels alike."""
    target_h, target_w = size
    if resize == "squash":
        return target_w, target_h, 0, 0
    if resize == "letterbox":
        scale = min(target_w / width, target_h / height)
        w, h = max(1, min(target_w, round(width * scale))), max(1, min(target_h, round(height * scale)))
        return w, h, (target_w - w) // 2, (target_h - h) // 2
    scale = max(target_w / width, target_h / height)
    w, h = max(target_w, math.ceil(width * scale)), max(target_h, math.ceil(height * scale))
    return w, h, (w - target_w) // 2, (h - target_h) // 2


def fit(image: Image.Image | np.ndarray, size: Size, resize: str = "letterbox") -> np.ndarray:
    """An RGB image at exactly `size` (height, width) by `resize`: letterbox, squash or center_crop."""
    check_resize(resize)
    im = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    height, width = size
    if im.size == (width, height):
        return np.asarray(im)
    w, h, left, top = placement(*im.size, size, resize)
    resized = im.resize((w, h), Image.BILINEAR)
    if resize == "squash":
        return np.asarray(resized)
    if resize == "letterbox":
        canvas = Image.new("RGB", (width, height), PAD_COLOUR)
        canvas.paste(resized, (left, top))
        return np.asarray(canvas)
    return np.asarray(resized.crop((left, top, left + width, top + height)))


def unreadable(exc: BaseException) -> str:
    """Why Pillow could not read an image, in the words every command uses for a bad image."""
    if isinstance(exc, UnidentifiedImageError):
        return "cannot decode image (not an image format Pillow reads)"
    detail = first_line(exc) if str(exc).strip() else "damaged data"
    return f"cannot decode image ({type(exc).__name__}: {detail})"


def image_size(data: bytes) -> Size:
    """(height, width) as the image is shown (EXIF orientation applied), from its header alone."""
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def as_size(value: int | Sequence[int] | None) -> Size | None:
    """`S` → (S, S); `[H, W]` → (H, W); None stays None."""
    if value is None:
        return None
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def show_size(size: Size) -> str:
    """(height, width) for messages, height first as in `image_size: [H, W]`: say "HxW" beside it."""
    return f"{size[0]}x{size[1]}"


def encode_image(pixels: np.ndarray, encoding: str) -> bytes:
    """uint8 [H, W, C] (C = 1 or 3) → PNG (fast compression) or JPEG (quality 90) bytes."""
    if encoding not in ENCODED:
        raise ValueError(f"encoding {encoding!r}: expected one of {', '.join(ENCODED)}")
    buf = io.BytesIO()
    pil = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    if encoding == "jpeg":
        pil.save(buf, format="JPEG", quality=90)
    else:
        pil.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
