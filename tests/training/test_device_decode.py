"""JPEG decoding in the training worker (`mtl_ray.device_decode`), without Ray.

nvJPEG needs a GPU (benchmarks/gpu.py checks its pixels there); everything around it runs here on
the CPU: the EXIF orientation read from the header and applied to a tensor, the letterbox / squash /
center_crop geometry in torch, the packing in `ShardCollate`, and the fallback decode of a batch
with a damaged image. Each is compared with the CPU path (`images.read_image`, `decode_column`) on
crops of real camera photographs that scikit-learn ships.
"""

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image, ImageOps
from realdata import photographs

from mtl_ray.config import load_train
from mtl_ray.data.images import RESIZE_MODES, read_image
from mtl_ray.data.shards import ShardFormat, decode_column
from mtl_ray.errors import UserError
from mtl_ray.training import device_decode
from mtl_ray.training.dataset import SKIP_COLUMN, ShardCollate


@pytest.fixture(scope="module")
def photo():
    return photographs()["china.jpg"]


def jpeg(pixels: np.ndarray, orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_read_from_the_header_and_applied_as_pillow_does(photo, orientation):
    data = jpeg(photo[:37, :53], orientation)
    assert device_decode.orientation(data) == orientation
    stored = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert np.array_equal(device_decode.upright(stored, orientation).permute(1, 2, 0).numpy(), shown)


def test_orientation_is_1_without_exif_and_for_other_formats(photo):
    png = io.BytesIO()
    Image.fromarray(photo[:20, :30]).save(png, format="PNG")
    assert device_decode.orientation(jpeg(photo[:20, :30])) == 1
    assert device_decode.orientation(png.getvalue()) == 1
    assert device_decode.orientation(b"\xff\xd8\xff") == 1


@pytest.mark.parametrize("resize", RESIZE_MODES)
def test_resizing_in_torch_matches_the_cpu_path_within_one_level(photo, resize):
    for height, width in [(427, 640), (37, 53), (53, 37), (64, 64), (20, 300)]:
        pixels = photo[:height, :width]
        data = jpeg(pixels)
        native = torch.tensor(read_image(data)).permute(2, 0, 1)
        ours = device_decode.fit([native, native], (48, 80), resize).numpy()
        cpu = read_image(data, size=(48, 80), resize=resize)
        assert ours.shape == (2, 48, 80, 3)
        diff = np.abs(ours[0].astype(int) - cpu.astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.25, (height, width, diff.mean(), diff.max())
        assert np.array_equal(ours[0], ours[1])


def test_a_packed_batch_decodes_like_the_cpu_path_and_drops_what_it_cannot_read(photo):
    """Odd sizes, EXIF-rotated shots, a PNG among the JPEGs and a damaged file, as ShardCollate packs them."""
    images = [
        jpeg(photo[:61, :97]),
        jpeg(photo[100:197, 200:261], orientation=6),
        b"\xff\xd8\xff\xe0 not really a jpeg",
        jpeg(photo[50:90, 50:90], orientation=3),
    ]
    png = io.BytesIO()
    Image.fromarray(photo[:33, :45]).save(png, format="PNG")
    images.append(png.getvalue())
    table = pa.table(
        {
            "image": pa.array(images, pa.binary()),
            "a": pa.array([1, 0, 1, None, 0], pa.int8()),
            SKIP_COLUMN: pa.array([False] * 5),
        }
    ).slice(0)
    fmt = ShardFormat(tasks=("a",), encoding="jpeg", shape=None)
    batch = ShardCollate(fmt)(table)
    assert set(batch) == {"jpeg", "offsets", "orientation", "labels", "skipped"}
    assert batch["orientation"].tolist() == [1, 6, 1, 3, 1]

    out = list(device_decode.DecodeOnDevice([batch], (40, 56), "letterbox", torch.device("cpu")))[0]
    expected = decode_column(table.column("image"), fmt, (40, 56))
    assert expected.bad.tolist() == [False, False, True, False, False]
    assert int(out["skipped"]) == 1 and out["image"].shape == (4, 40, 56, 3)
    kept = out["labels"][:, 0].tolist()
    assert kept[:2] == [1.0, 0.0] and np.isnan(kept[2]) and kept[3] == 0.0  # the damaged row's label went with it
    diff = np.abs(out["image"].numpy().astype(int) - expected.images[~expected.bad].astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.25


def test_only_streamed_jpeg_shards_are_decoded_in_the_worker_and_never_with_strict():
    assert device_decode.in_worker("worker", "jpeg", use_gpu=False, strict=False)
    assert not device_decode.in_worker("worker", "png", use_gpu=True, strict=False)
    assert not device_decode.in_worker("tasks", "jpeg", use_gpu=True, strict=False)
    assert not device_decode.in_worker("auto", "jpeg", use_gpu=False, strict=False)
    assert not device_decode.in_worker("auto", "jpeg", use_gpu=True, strict=True)
    assert device_decode.in_worker("auto", "jpeg", use_gpu=True, strict=False) == (device_decode.nvjpeg() is not None)
    assert not device_decode.in_worker("auto", "jpeg", use_gpu=True, strict=False, cached=True)  # decoded once
    with pytest.raises(UserError, match="decode"):
        load_train(None, {"decode": "worker", "strict": True})
