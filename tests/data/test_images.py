"""The one image decode: every mode Pillow reads, as a viewer shows it, against Pillow's own conversion;
EXIF orientation; bit depths; the three resize modes."""

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from mtl_ray.data.images import ALPHA_BACKGROUND, PAD_COLOUR, UnreadableImage, decode_image, fit, image_size, read_image
from mtl_ray.errors import UserError

RNG = np.random.default_rng(0)


def saved(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def on_white(im: Image.Image) -> np.ndarray:
    """Pillow's own compositing of a transparent image on the documented background."""
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
    return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))


def pixels(shape, high=256) -> np.ndarray:
    return RNG.integers(0, high, shape).astype(np.uint8)


@pytest.mark.parametrize(
    "mode, make",
    [
        ("RGB", lambda: Image.fromarray(pixels((12, 20, 3)))),
        ("L", lambda: Image.fromarray(pixels((12, 20)), "L")),
        ("1", lambda: Image.fromarray(pixels((12, 20)) > 127)),
        ("P", lambda: Image.fromarray(pixels((12, 20, 3))).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)),
    ],
)
def test_opaque_modes_match_pillows_rgb_conversion(mode, make):
    im = make()
    assert im.mode == mode
    np.testing.assert_array_equal(read_image(saved(im)), np.asarray(Image.open(io.BytesIO(saved(im))).convert("RGB")))


def test_cmyk_jpeg_matches_pillows_rgb_conversion():
    data = saved(Image.fromarray(pixels((16, 24, 4)), "CMYK"), "JPEG")
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "CMYK"
        want = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(read_image(data), want)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(mode):
    channels = 4 if mode == "RGBA" else 2
    array = pixels((10, 14, channels))
    array[0, 0, -1] = 0  # fully transparent
    array[0, 1, -1] = 255  # opaque
    im = Image.fromarray(array, mode)
    got = read_image(saved(im))
    np.testing.assert_array_equal(got, on_white(im))
    assert tuple(got[0, 0]) == ALPHA_BACKGROUND
    opaque = array[0, 1, :3] if mode == "RGBA" else np.repeat(array[0, 1, :1], 3)
    assert tuple(got[0, 1]) == tuple(opaque)


def test_palette_transparency_is_composited_on_white():
    im = Image.fromarray(pixels((10, 14, 3))).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    data = saved(im, transparency=int(np.asarray(im)[0, 0]))
    with Image.open(io.BytesIO(data)) as back:
        assert "transparency" in back.info
        want = on_white(back)
    got = read_image(data)
    np.testing.assert_array_equal(got, want)
    assert tuple(got[0, 0]) == ALPHA_BACKGROUND


def test_sixteen_bit_gray_is_scaled_by_bit_depth():
    """A 16-bit scan whose mean is 70 % of full scale: Pillow's convert('L') clips it to white."""
    array = (RNG.normal(0.7, 0.1, (20, 30)).clip(0, 1) * 65535).astype(np.uint16)
    data = saved(Image.fromarray(array))
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "I;16"
        assert np.asarray(im.convert("L")).mean() > 250  # what decoding used to give
    got = read_image(data)
    np.testing.assert_array_equal(got[..., 0], np.rint(array / 65535 * 255).astype(np.uint8))
    assert (got[..., 0] == got[..., 2]).all()
    assert abs(got.mean() - 0.7 * 255) < 3


def test_thirty_two_bit_integer_and_float_gray():
    ints = RNG.integers(0, 2**31 - 1, (8, 8)).astype(np.int32)
    got = read_image(saved(Image.fromarray(ints, "I"), "TIFF"))
    np.testing.assert_array_equal(got[..., 1], np.rint(ints / (2**31 - 1) * 255).astype(np.uint8))
    floats = RNG.random((8, 8)).astype(np.float32)
    got = read_image(saved(Image.fromarray(floats, "F"), "TIFF"))
    np.testing.assert_array_equal(got[..., 1], np.rint(floats.astype(np.float64) * 255).astype(np.uint8))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(orientation):
    """A phone photo stored sideways with its orientation tag decodes upright, as Pillow's exif_transpose."""
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :10] = (255, 0, 0)  # a red band on the stored image's left
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = saved(Image.fromarray(array), "JPEG", exif=exif.tobytes(), quality=95)
    with Image.open(io.BytesIO(data)) as im:
        want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    got = read_image(data)
    np.testing.assert_array_equal(got, want)
    expected = (20, 40) if orientation == 3 else (40, 20)
    assert got.shape[:2] == expected and image_size(data) == expected


def test_letterbox_keeps_the_whole_frame_and_pads():
    array = pixels((10, 20, 3))
    got = fit(array, (16, 16), "letterbox")
    assert got.shape == (16, 16, 3)
    assert (got[:4] == PAD_COLOUR).all() and (got[12:] == PAD_COLOUR).all()
    np.testing.assert_array_equal(got[4:12], np.asarray(Image.fromarray(array).resize((16, 8), Image.BILINEAR)))


def test_squash_and_center_crop():
    array = pixels((10, 20, 3))
    np.testing.assert_array_equal(
        fit(array, (16, 16), "squash"), np.asarray(Image.fromarray(array).resize((16, 16), Image.BILINEAR))
    )
    np.testing.assert_array_equal(fit(array, (10, 10), "center_crop"), array[:, 5:15])


def test_unreadable_bytes_name_where_and_row():
    with pytest.raises(UnreadableImage, match="cannot decode image"):
        read_image(b"not an image")
    truncated = saved(Image.fromarray(pixels((64, 64, 3))), "JPEG")[:300]
    with pytest.raises(UserError, match=r"^shard\.parquet: row 7: cannot decode image \("):
        decode_image(truncated, where="shard.parquet", row=7)
