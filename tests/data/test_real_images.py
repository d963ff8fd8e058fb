"""Training on data shaped like users' data, on a real local Ray: small non-square grayscale PNGs from
a Hugging Face-style export (with a corrupt row deep inside), a folder of camera-like photos of mixed
orientation and bit depth, and synthetic scenes at an odd size."""

import pytest
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


def test_hugging_face_gray_28x56_trains_at_its_own_size_and_skips_the_corrupt_row(ray_session, cli, hf, tmp_path):
    assert cli("data", "validate", hf / "train").code == 0  # the sample validate decodes misses row 500
    res = cli(
        "train",
        "--data",
        hf / "train",
        "--val",
        hf / "test",
        "--backbone",
        "xs",
        "--epochs",
        2,
        "--storage",
        tmp_path / "runs",
        "--json",
        "-",
    )
    assert res.code == 0, res.err
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
    res = cli(
        "train",
        "--data",
        tmp_path / "shards",
        "--backbone",
        "xs",
        "--epochs",
        2,
        "--decode",
        "worker",
        "--storage",
        tmp_path / "runs",
        "--json",
        "-",
    )
    assert res.code == 0, res.err
    out = res.json()
    assert out["image"]["decode"] == "worker"  # JPEG bytes through Ray Data, decoded and resized in the worker
    assert out["image"]["size"] == [64, 64] and "sizes" in out["image"]["why"]  # mixed sizes: the default
    assert out["skipped_images"] == 0
    assert out["val"]["flower"]["n_labeled"] == splits["val"] and out["val"]["flower"]["auroc"] is not None


def test_synthetic_scenes_at_36_px_train(ray_session, cli, tmp_path):
    synthesize(str(tmp_path / "s36"), 300, image_size=36, seed=3)
    res = cli(
        "train",
        "--data",
        tmp_path / "s36",
        "--backbone",
        "s",
        "--epochs",
        1,
        "--storage",
        tmp_path / "runs",
        "--json",
        "-",
    )
    assert res.code == 0, res.err
    assert res.json()["image"]["size"] == [36, 36] and res.json()["image"]["why"] == "the shards' size"


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
