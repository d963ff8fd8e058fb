"""`mtl-ray data validate` on good data, on every kind of bad input, and on S3."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from datasets import Image, Value
from hf_exports import dataset
from PIL import Image as PILImage

from mtl_ray.data.shards import ShardFormat, ShardWriter, encode_images, make_table
from mtl_ray.data.storage import s3_filesystem
from mtl_ray.data.validate import validate
from mtl_ray.errors import UserError

PNG = ShardFormat(tasks=("a", "b"), encoding="png", shape=(4, 4, 3))
RAW = ShardFormat(tasks=("a", "b"), encoding="raw", shape=(4, 4, 3))


def images(n: int, fmt: ShardFormat = PNG) -> pa.Array:
    pixels = np.random.default_rng(0).integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8)
    return encode_images(pixels, fmt)


def table(
    n: int,
    fmt: ShardFormat = PNG,
    labels: np.ndarray | None = None,
    splits: list | None = None,
    image_column: pa.Array | None = None,
) -> pa.Table:
    """n rows; by default every label known, alternating 1/0, all in the train split."""
    if labels is None:
        labels = np.tile((np.arange(n) % 2)[:, None], (1, len(fmt.tasks))).astype(np.float32)
    return make_table(
        fmt,
        image_column if image_column is not None else images(n, fmt),
        labels,
        [f"r{i}" for i in range(n)],
        splits or ["train"] * n,
    )


def write(path: Path, t: pa.Table | None = None, fmt: ShardFormat = PNG) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with ShardWriter(pafs.LocalFileSystem(), str(path), fmt) as w:
        if t is not None:
            w.write(t)
    return path


def good_dataset(root: Path, n: int = 60) -> Path:
    write(root / "part-0.parquet", table(n))
    write(root / "sub" / "part-1.parquet", table(n))
    return root


def failing(cli, *args) -> str:
    """Runs validate expecting exit 2; returns its error lines (the ones after any progress lines),
    checking there is no traceback."""
    r = cli("data", "validate", *args)
    assert r.code == 2, (r.out, r.err)
    assert "Traceback" not in r.err
    lines = r.err.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("mtl-ray: error: "))
    assert all(line.startswith("mtl-ray: error: ") for line in lines[first:]), r.err
    return "\n".join(lines[first:]) + "\n"


# ---- good data -------------------------------------------------------------------------------


def test_good_dataset_json(cli, tmp_path):
    data = good_dataset(tmp_path / "data")
    (data / "README.txt").write_text("not a shard")
    r = cli("data", "validate", data, "--json", "-")
    assert r.code == 0, r.err
    out = r.json()
    assert set(out) >= {
        "rows",
        "shards",
        "tasks",
        "problems",
        "splits",
        "warnings",
        "image",
        "decoded",
        "ignored_files",
        "usable",
    }
    assert out["rows"] == 120 and out["shards"] == 2
    assert out["tasks"] == {
        "a": {"rows": 120, "labeled": 120, "positive": 60, "label_rate": 1.0},
        "b": {"rows": 120, "labeled": 120, "positive": 60, "label_rate": 1.0},
    }
    assert out["problems"] == [] and out["warnings"] == [] and out["usable"] is True
    assert out["image"] == {"column": "image", "encoding": "png", "shape": [4, 4, 3]}
    assert out["decoded"] == 32 and out["ignored_files"] == 1
    assert out["splits"] == {
        "train": {"rows": 120, "tasks": {"a": {"labeled": 120, "positive": 60}, "b": {"labeled": 120, "positive": 60}}}
    }
    assert "usable" in r.err and "ignored 1 non-Parquet file" in r.err


def test_full_decodes_every_image(cli, tmp_path):
    data = good_dataset(tmp_path / "data")
    r = cli("data", "validate", data, "--full", "--json", "-")
    assert r.code == 0 and r.json()["decoded"] == 120


def test_report_api_for_training(tmp_path):
    data = good_dataset(tmp_path / "data")
    report = validate(str(data))
    report.raise_if_unusable()
    assert report.fmt == PNG
    assert [s.name for s in report.shards] == [f"{data}/part-0.parquet", f"{data}/sub/part-1.parquet"]
    assert all(Path(p).is_file() for p in report.paths)
    assert pq.read_table(report.paths, filesystem=report.fs).num_rows == 120


def test_human_summary_has_task_table(cli, tmp_path):
    r = cli("data", "validate", good_dataset(tmp_path / "data"))
    assert r.code == 0 and r.err == ""
    header = next(line for line in r.out.splitlines() if line.startswith("task"))
    assert header.split() == ["task", "rows", "labeled", "positive", "rate", "train:labeled"]
    assert any(line.split()[:5] == ["a", "120", "120", "60", "100.0%"] for line in r.out.splitlines())


def test_per_split_counts(cli, tmp_path):
    labels = np.array([[1, 0], [0, np.nan], [1, 1], [np.nan, 0], [1, np.nan], [0, 0]], dtype=np.float32)
    splits = ["train", "train", "val", "val", "test", None]
    write(tmp_path / "d" / "x.parquet", table(6, labels=labels, splits=splits))
    out = cli("data", "validate", tmp_path / "d", "--json", "-").json()
    assert out["splits"] == {
        "train": {"rows": 2, "tasks": {"a": {"labeled": 2, "positive": 1}, "b": {"labeled": 1, "positive": 0}}},
        "val": {"rows": 2, "tasks": {"a": {"labeled": 1, "positive": 1}, "b": {"labeled": 2, "positive": 1}}},
        "test": {"rows": 1, "tasks": {"a": {"labeled": 1, "positive": 1}, "b": {"labeled": 0, "positive": 0}}},
        "unassigned": {"rows": 1, "tasks": {"a": {"labeled": 1, "positive": 0}, "b": {"labeled": 1, "positive": 0}}},
    }
    assert out["tasks"]["a"] == {"rows": 6, "labeled": 5, "positive": 3, "label_rate": 5 / 6}


def test_warnings_no_positive_and_few_labels(cli, tmp_path):
    n = 60
    labels = np.full((n, 2), np.nan, dtype=np.float32)
    labels[:, 0] = 0.0
    labels[:10, 1] = np.arange(10) % 2
    write(tmp_path / "d" / "x.parquet", table(n, labels=labels))
    r = cli("data", "validate", tmp_path / "d", "--json", "-")
    assert r.code == 0, r.err
    warnings = r.json()["warnings"]
    assert any("'a' has no positive label" in w for w in warnings)
    assert any("'b' has only 10 labeled rows" in w for w in warnings)
    assert not any("'a' has only" in w for w in warnings)
    assert "warning: task 'a' has no positive label" in r.err


def test_warning_uneven_label_counts(tmp_path):
    labels = np.tile((np.arange(2100) % 2)[:, None], (1, 2)).astype(np.float32)
    labels[60:, 1] = np.nan
    write(tmp_path / "d" / "x.parquet", table(2100, fmt=RAW, labels=labels), fmt=RAW)
    report = validate(str(tmp_path / "d"))
    assert report.usable
    assert any(
        w.startswith("uneven label counts: task 'a' has 2100 labeled rows, 'b' only 60") for w in report.warnings
    )


def test_raw_hugging_face_export_and_no_metadata(cli, tmp_path):
    """A `datasets` export without mtl_ray metadata: int8 tasks inferred, HF struct images decoded."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(4, 4, 4, 3), dtype=np.uint8)
    ds = dataset(
        {"img": list(pixels), "cat": [1, 0, None, 1], "split": ["train", "val", None, "test"]},
        {"img": Image(), "cat": Value("int8"), "split": Value("string")},
    )
    ds.to_parquet(str(tmp_path / "hf.parquet"))
    r = cli("data", "validate", tmp_path / "hf.parquet", "--image-column", "img", "--json", "-")
    assert r.code == 0, r.err
    out = r.json()
    assert out["tasks"]["cat"] == {"rows": 4, "labeled": 3, "positive": 2, "label_rate": 0.75}
    assert out["image"]["encoding"] == "png" and out["decoded"] == 4


# ---- bad input: one line on stderr, exit 2 ---------------------------------------------------


def test_missing_path(cli, tmp_path):
    assert "no such file or directory" in failing(cli, tmp_path / "nope")


def test_empty_directory(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "empty directory" in failing(cli, tmp_path / "empty")


def test_zero_row_shard(cli, tmp_path):
    data = good_dataset(tmp_path / "d")
    write(data / "zero.parquet")
    err = failing(cli, data)
    assert f"{data}/zero.parquet: shard has no rows" in err
    assert err.count("mtl-ray: error:") == 1


def test_garbage_parquet_is_reported_and_others_still_checked(cli, tmp_path):
    data = good_dataset(tmp_path / "d")
    (data / "x.parquet").write_bytes(b"this is not parquet at all")
    r = cli("data", "validate", data, "--json", "-")
    assert r.code == 2 and "Traceback" not in r.err
    assert f"mtl-ray: error: {data}/x.parquet: not a readable Parquet file" in r.err
    assert r.json()["rows"] == 120 and r.json()["shards"] == 3


def test_csv_given_directly(cli, tmp_path):
    (tmp_path / "labels.csv").write_text("a,b\n1,0\n")
    assert "labels.csv: not a Parquet file" in failing(cli, tmp_path / "labels.csv")


def test_image_column_missing(cli, tmp_path):
    pq.write_table(pa.table({"img": images(3), "a": [True, False, None]}), tmp_path / "x.parquet")
    err = failing(cli, tmp_path / "x.parquet")
    assert f"{tmp_path}/x.parquet: image column 'image' missing" in err


def test_label_value_outside_mapping(cli, tmp_path):
    t = pa.table({"image": images(5), "a": pa.array([0, 1, None, 2, 1], pa.int8())})
    meta = ShardFormat(tasks=("a",), encoding="png").metadata()
    pq.write_table(t.replace_schema_metadata(meta), tmp_path / "x.parquet")
    err = failing(cli, tmp_path / "x.parquet")
    assert "x.parquet: row 3: task 'a' has label 2: expected 0, 1 or null" in err


def test_integer_column_of_other_values_in_foreign_parquet_is_no_task(tmp_path):
    a, b = pa.array([0, 1, None, 2, 1], pa.int8()), pa.array([0, 1, 1, 0, None], pa.int8())
    t = pa.table({"image": images(5), "a": a, "b": b})
    pq.write_table(t, tmp_path / "x.parquet")
    report = validate(str(tmp_path / "x.parquet"))
    assert report.usable and list(report.tasks) == ["b"]
    assert report.warnings[0] == "column 'a' is no task: int8 values 0, 1, 2: not a yes/no label"


def test_bad_split_value(cli, tmp_path):
    write(tmp_path / "d" / "x.parquet", table(4, splits=["train", "training", "val", "training"]))
    err = failing(cli, tmp_path / "d")
    assert "x.parquet: row 1: column 'split' has value 'training' (2 rows): expected train, val, test or null" in err


def test_drift_task_added(cli, tmp_path):
    data = good_dataset(tmp_path / "d")
    extra = ShardFormat(tasks=("a", "b", "c"), encoding="png", shape=(4, 4, 3))
    write(data / "z.parquet", table(4, fmt=extra), fmt=extra)
    err = failing(cli, data)
    assert f"{data}/z.parquet: task 'c' is not in {data}/part-0.parquet" in err


def test_drift_task_removed(cli, tmp_path):
    data = good_dataset(tmp_path / "d")
    fewer = ShardFormat(tasks=("a",), encoding="png", shape=(4, 4, 3))
    write(data / "z.parquet", table(4, fmt=fewer), fmt=fewer)
    err = failing(cli, data)
    assert f"{data}/z.parquet: task 'b' of {data}/part-0.parquet is missing" in err


def test_drift_type_changed(cli, tmp_path):
    data = good_dataset(tmp_path / "d")
    t = table(4)
    t = t.set_column(t.schema.get_field_index("b"), "b", t.column("b").cast(pa.int8()))
    pq.write_table(t, data / "z.parquet")
    err = failing(cli, data)
    assert f"{data}/z.parquet: task 'b' has type int8 but bool in {data}/part-0.parquet" in err


def test_drift_image_encoding(cli, tmp_path):
    data = good_dataset(tmp_path / "d")
    write(data / "z.parquet", table(4, fmt=RAW), fmt=RAW)
    assert f"{data}/z.parquet: image encoding is 'raw' but 'png' in {data}/part-0.parquet" in failing(cli, data)


def test_corrupt_image_in_sample(cli, tmp_path):
    values = images(30).to_pylist()
    values[3] = b"\x89PNG garbage"
    write(tmp_path / "d" / "x.parquet", table(30, image_column=pa.array(values, pa.binary())))
    err = failing(cli, tmp_path / "d")
    assert f"{tmp_path}/d/x.parquet: row 3: cannot decode image" in err


def test_corrupt_image_outside_sample_needs_full(cli, tmp_path):
    values = images(40).to_pylist()
    values[20] = b"not an image"
    values[33] = b"nor this"
    write(tmp_path / "d" / "x.parquet", table(40, image_column=pa.array(values, pa.binary())))
    assert cli("data", "validate", tmp_path / "d").code == 0
    err = failing(cli, tmp_path / "d", "--full")
    assert f"{tmp_path}/d/x.parquet: row 20: cannot decode image" in err
    assert "(and 1 more bad images in this shard)" in err


def test_corrupt_image_in_last_row_group(cli, tmp_path):
    values = images(1030).to_pylist()
    values[1025] = b"broken"
    write(tmp_path / "d" / "x.parquet", table(1030, image_column=pa.array(values, pa.binary())))
    assert "x.parquet: row 1025: cannot decode image" in failing(cli, tmp_path / "d")


def test_all_null_task(cli, tmp_path):
    labels = np.zeros((60, 2), dtype=np.float32)
    labels[::2, 0] = 1
    labels[:, 1] = np.nan
    write(tmp_path / "d" / "x.parquet", table(60, labels=labels))
    err = failing(cli, tmp_path / "d")
    assert "task 'b' has no known label in any shard" in err


def test_duplicate_task_in_metadata(cli, tmp_path):
    meta = {"version": 1, "tasks": ["a", "a"], "image": {"column": "image", "encoding": "png", "shape": [4, 4, 3]}}
    t = pa.table({"image": images(2), "a": [True, False]}).replace_schema_metadata({"mtl_ray": json.dumps(meta)})
    pq.write_table(t, tmp_path / "x.parquet")
    assert f"{tmp_path}/x.parquet: duplicate task name 'a'" in failing(cli, tmp_path / "x.parquet")


def test_duplicate_task_columns(cli, tmp_path):
    t = pa.Table.from_arrays([images(2), pa.array([True, False]), pa.array([False, None])], names=["image", "a", "a"])
    pq.write_table(t, tmp_path / "x.parquet")
    assert f"{tmp_path}/x.parquet: duplicate task name 'a'" in failing(cli, tmp_path / "x.parquet")


def test_problems_are_all_listed(cli, tmp_path):
    data = good_dataset(tmp_path / "d")
    (data / "bad.parquet").write_bytes(b"junk")
    write(data / "zero.parquet")
    err = failing(cli, data)
    assert err.count("mtl-ray: error:") == 2


def test_raise_if_unusable(tmp_path):
    data = good_dataset(tmp_path / "d")
    (data / "bad.parquet").write_bytes(b"junk")
    write(data / "zero.parquet")
    report = validate(str(data))
    assert report.exit_code == 2
    with pytest.raises(
        UserError,
        match=r"bad\.parquet: not a readable Parquet file .*\(and 1 more problem; run: mtl-ray data validate ",
    ):
        report.raise_if_unusable()


def test_missing_s3_bucket(cli, s3):
    assert "s3://no-such-bucket/x: S3 bucket 'no-such-bucket' does not exist" in failing(cli, "s3://no-such-bucket/x")


def test_s3_round_trip(cli, s3):
    bucket = s3.bucket()
    fs = s3_filesystem()
    for i in range(2):
        with ShardWriter(fs, f"{bucket}/prefix/part-{i}.parquet", PNG) as w:
            w.write(table(60))
    r = cli("data", "validate", f"s3://{bucket}/prefix", "--full", "--json", "-")
    assert r.code == 0, r.err
    out = r.json()
    assert out["rows"] == 120 and out["shards"] == 2 and out["decoded"] == 120
    assert out["tasks"]["a"] == {"rows": 120, "labeled": 120, "positive": 60, "label_rate": 1.0}
    report = validate(f"s3://{bucket}/prefix")
    assert [s.name for s in report.shards] == [
        f"s3://{bucket}/prefix/part-0.parquet",
        f"s3://{bucket}/prefix/part-1.parquet",
    ]
    assert report.paths == [f"{bucket}/prefix/part-0.parquet", f"{bucket}/prefix/part-1.parquet"]


def test_training_size_is_the_images_own_when_they_share_one(tmp_path):
    from realdata import hf_gray_export

    from mtl_ray.data.convert.pipeline import convert

    hf_gray_export(tmp_path / "hf" / "x.parquet", 40)
    report = validate(str(tmp_path / "hf"))
    assert report.fmt.shape is None and report.image_sizes == {(28, 56)}
    assert report.training_size() == ((28, 56), "the size of every image validation decoded")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, size in enumerate([(20, 10), (10, 20)]):
        PILImage.new("RGB", size, (i * 90, 0, 0)).save(mixed / f"{i}.png")
    (mixed / "labels.csv").write_text("file,a\n0.png,1\n1.png,0\n")
    convert(str(mixed), str(tmp_path / "m"), labels_csv=str(mixed / "labels.csv"))
    report = validate(str(tmp_path / "m"))
    assert report.image_sizes == {(10, 20), (20, 10)}
    assert report.training_size() == ((64, 64), "the default: images come in 2 sizes")
