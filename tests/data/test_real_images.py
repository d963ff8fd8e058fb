"""Training on data shaped like users' data, on a real local Ray: small non-square grayscale PNGs from
a Hugging Face export (with a corrupt row deep inside), a hub export in the conventions `convert`
reads (ClassLabel, a label list, path-only images, split files), a folder of camera-like photos of
mixed orientation and bit depth, and synthetic scenes at an odd size."""

import pytest
from datasets import ClassLabel, Image, Sequence, Value
from hf_exports import dataset, scenes, write_hub
from PIL import Image as PILImage
from realdata import camera_folder, hf_gray_export

from mtl_ray.data.synth.dataset import synthesize
from mtl_ray.errors import UserError
from mtl_ray.model import checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """Train export of 600 rows whose row 500 (outside validation's sample) is corrupt, and a test export."""
    root = tmp_path_factory.mktemp("hf")
    hf_gray_export(root / "train" / "train-00000-of-00001.parquet", 600, seed=1, corrupt_row=500)
    hf_gray_export(root / "test" / "test-00000-of-00001.parquet", 200, seed=2)
    return root


def trained(cli, data, runs, *flags):
    """`mtl-ray train --data DATA FLAGS... --storage RUNS --json -`, which must succeed."""
    res = cli("train", "--data", data, *flags, "--storage", runs, "--json", "-")
    assert res.code == 0, res.err
    return res


def test_hugging_face_gray_28x56_trains_at_its_own_size_and_skips_the_corrupt_row(ray_session, cli, hf, tmp_path):
    assert cli("data", "validate", hf / "train").code == 0  # the sample validate decodes misses row 500
    res = trained(cli, hf / "train", tmp_path / "runs", "--val", hf / "test", "--backbone", "xs", "--epochs", 2)
    out = res.json()
    assert out["image"]["size"] == [28, 56] and out["image"]["resize"] == "letterbox"
    assert out["skipped_images"] == 1
    assert "skipped 1 unreadable image" in res.err
    assert out["val"]["bar"]["n_labeled"] == 200 and out["mean_auroc"] > 0.6, out["val"]
    _, meta = checkpoint.load(out["checkpoint"])
    assert meta["image"] == {"size": [28, 56], "channels": 3, "resize": "letterbox"}


def test_strict_stops_at_the_corrupt_row_with_one_line(ray_session, cli, hf, tmp_path):
    """The UserError is raised in a Ray Data task inside a Train worker; the CLI shows its line alone."""
    res = cli(
        "train",
        "--data",
        hf / "train",
        "--val",
        hf / "test",
        "--backbone",
        "xs",
        "--epochs",
        1,
        "--strict",
        "--storage",
        tmp_path / "runs",
    )
    assert res.code == 2, res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    assert (
        lines[0].startswith("mtl-ray: error: ")
        and "train-00000-of-00001.parquet: row 500: cannot decode image" in lines[0]
    )
    assert lines[0].endswith("(--strict)")


def test_a_hub_export_in_datasets_conventions_converts_and_trains_skipping_nothing(
    ray_session, cli, tmp_path, monkeypatch
):
    """ClassLabel `busy` (-1 = unknown on two rows in three), label list `colours`, train images as
    paths beside the Parquet files, validation and test with bytes: only --absent is needed."""
    images, present = scenes(420, size=32, seed=4)
    busy = [int(len(p) > 1) if i % 3 == 0 else -1 for i, p in enumerate(present)]
    features = {
        "image": Image(),
        "busy": ClassLabel(names=["no", "yes"]),
        "colours": Sequence(ClassLabel(names=["red", "green", "blue"])),
    }
    data = tmp_path / "hub" / "data"
    names = [f"images/{i:03d}.png" for i in range(300)]
    for name, pixels in zip(names, images[:300], strict=True):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(pixels).save(data / name)
    train = dataset(
        {"image": names, "busy": busy[:300], "colours": present[:300]}, features | {"image": Value("string")}
    )
    monkeypatch.chdir(data)  # to_parquet looks at the files the paths name
    splits = {"train": train.cast_column("image", Image())}
    for split, part in (("validation", slice(300, 360)), ("test", slice(360, 420))):
        splits[split] = dataset({"image": images[part], "busy": busy[part], "colours": present[part]}, features)
    root = write_hub(tmp_path / "hub", splits)
    monkeypatch.chdir(tmp_path)

    converted = cli("data", "convert", root, tmp_path / "shards", "--absent", "negative", "--json", "-")
    assert converted.code == 0, converted.err
    summary = converted.json()
    assert summary["tasks"] == ["busy", "red", "green", "blue"] and summary["skipped"] == 0
    assert summary["splits"] == {"train": 300, "val": 60, "test": 60}
    out = trained(cli, tmp_path / "shards", tmp_path / "runs", "--backbone", "xs", "--epochs", 2).json()
    assert out["skipped_images"] == 0
    assert out["val"]["busy"]["n_labeled"] == sum(b != -1 for b in busy[300:360]) == 20
    assert out["val"]["red"]["n_labeled"] == 60 and out["val"]["red"]["auroc"] > 0.6, out["val"]


def test_camera_folder_converts_with_a_val_split_and_trains_decoding_in_the_worker(ray_session, cli, tmp_path):
    photos, _ = camera_folder(tmp_path / "photos", 90)
    converted = cli(
        "data",
        "convert",
        photos,
        tmp_path / "shards",
        "--labels-csv",
        photos / "labels.csv",
        "--val-fraction",
        "0.3",
        "--encoding",
        "jpeg",
        "--json",
        "-",
    )
    assert converted.code == 0, converted.err
    splits = converted.json()["splits"]
    assert splits["train"] + splits["val"] == 90 and splits["val"] >= 10
    flags = ("--backbone", "xs", "--epochs", 2, "--decode", "worker")
    out = trained(cli, tmp_path / "shards", tmp_path / "runs", *flags).json()
    assert out["image"]["decode"] == "worker"  # JPEG bytes through Ray Data, decoded and resized in the worker
    assert out["image"]["size"] == [64, 64] and "sizes" in out["image"]["why"]  # mixed sizes: the default
    assert out["skipped_images"] == 0
    assert out["val"]["flower"]["n_labeled"] == splits["val"] and out["val"]["flower"]["auroc"] is not None


def test_synthetic_scenes_at_36_px_train(ray_session, cli, tmp_path):
    synthesize(str(tmp_path / "s36"), 300, image_size=36, seed=3)
    image = trained(cli, tmp_path / "s36", tmp_path / "runs", "--backbone", "s", "--epochs", 1).json()["image"]
    assert image["size"] == [36, 36] and image["why"] == "the shards' size"


def test_a_user_error_from_a_ray_task_is_found_behind_rays_wrapper(ray_session):
    from mtl_ray.errors import user_error_in

    @ray_session.remote
    def fails():
        raise UserError("shard.parquet: row 3: cannot decode image (--strict)")

    with pytest.raises(Exception) as caught:
        ray_session.get(fails.remote())
    assert len(str(caught.value).splitlines()) > 1  # Ray's wrapper: what the user must not see
    assert str(user_error_in(caught.value)) == "shard.parquet: row 3: cannot decode image (--strict)"
    assert user_error_in(RuntimeError("no user error here")) is None
