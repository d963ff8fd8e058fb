"""One image, as bytes or as pixels: the decode and encode every stage shares.

Convert, validate, the Ray Data pipeline, predict and the registered model all turn encoded bytes
into uint8 RGB pixels here, so the model in the registry preprocesses exactly as training did.
Pillow and numpy only: the registered model imports this module in environments without Ray.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from mtl_ray.errors import UserError, first_line

ENCODED = ("png", "jpeg")


def decode_image(data: bytes, *, where: str = "", row: int = 0, size: int | None = None) -> np.ndarray:
    """One encoded image (any mode Pillow reads: gray, RGBA, palette, ...) as uint8 RGB [H, W, 3].

    `size` resizes to size×size. Bytes Pillow cannot read raise a UserError naming `where` and `row`.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im)
    except Exception as exc:  # Pillow raises many types for truncated or damaged data
        raise UserError(f"{where}: row {row}: {unreadable(exc)}") from None


def unreadable(exc: BaseException) -> str:
    """Why Pillow could not read an image, in the words every command uses for a bad image."""
    if isinstance(exc, UnidentifiedImageError):
        return "cannot decode image (not an image format Pillow reads)"
    detail = first_line(exc) if str(exc).strip() else "damaged data"
    return f"cannot decode image ({type(exc).__name__}: {detail})"


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the image's header, without decoding its pixels."""
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] → [size, size, 3], bilinear, as `decode_image` resizes."""
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR))


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
