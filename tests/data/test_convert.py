"""`mtl-ray data convert`: image folders with CSV/JSONL labels, Hugging Face-style Parquet, S3, bad input."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Image, Value
from hf_exports import dataset
from PIL import Image as PILImage

from mtl_ray.data.convert.labels import LabelMap
from mtl_ray.data.convert.pipeline import convert
from mtl_ray.data.shards import decode_images, labels_of, open_shard, shard_format
from mtl_ray.data.storage import list_shards, s3_filesystem
from mtl_ray.errors import UserError


def png(mode: str, size: tuple[int, int], color: object) -> bytes:
    buf = io.BytesIO()
    PILImage.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def image_folder(root: Path, csv_text: str, *, sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    """a.png RGB, b.png gray, c.png RGBA, d.png palette, e.jpg CMYK; labels.csv from `csv_text`."""
    sizes = sizes or {}
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.png").write_bytes(png("RGB", sizes.get("a", (8, 8)), (255, 0, 0)))
    (root / "b.png").write_bytes(png("L", sizes.get("b", (8, 8)), 100))
    (root / "c.png").write_bytes(png("RGBA", sizes.get("c", (8, 8)), (0, 255, 0, 128)))
    (root / "d.png").write_bytes(png("P", sizes.get("d", (8, 8)), 3))
    buf = io.BytesIO()
    PILImage.new("CMYK", sizes.get("e", (8, 8)), (0, 0, 0, 0)).save(buf, format="JPEG")
    (root / "e.jpg").write_bytes(buf.getvalue())
    (root / "labels.csv").write_text(csv_text)
    return root


LABELS_CSV = """file,id,split,car,person
a.png,,train,1,0
b.png,img-b,val,?,yes
c.png,,train,,no
d.png,,test,true,false
e.jpg,,,YES,-1
"""


def read_back(path: str) -> dict:
    """Every shard under PATH decoded with the format functions, concatenated."""
    fs, paths, _ = list_shards(path)
    out: dict = {"images": [], "labels": [], "ids": [], "splits": [], "names": [Path(p).name for p in paths]}
    for p in paths:
        pf = open_shard(fs, p, p)
        fmt = shard_format(pf, p)
        table = pf.read()
        out["fmt"] = fmt
        column = table.column(fmt.image_column)
        out["images"] += [decode_images(column.slice(i, 1), fmt, where=p)[0] for i in range(table.num_rows)]
        out["labels"].append(labels_of(table, fmt.tasks, where=p))
        out["ids"] += table.column("id").to_pylist()
        out["splits"] += table.column("split").to_pylist()
    out["labels"] = np.concatenate(out["labels"])
    return out


def same(a: np.ndarray, b: list) -> bool:
    return np.array_equal(a, np.array(b, dtype=np.float32), equal_nan=True)


def failing(cli, *args) -> str:
    """Runs `mtl-ray data convert ARGS` expecting exit 2 with one line on stderr and no traceback."""
    r = cli("data", "convert", *args)
    assert r.code == 2, (r.out, r.err)
    assert r.err.startswith("mtl-ray: error: ") and r.err.count("\n") == 1, r.err
    return r.err


NAN = math.nan


# ---- image folder ----------------------------------------------------------------------------


def test_folder_csv_round_trip_with_resize(cli, tmp_path):
    src = image_folder(tmp_path / "imgs", LABELS_CSV, sizes={"a": (20, 10), "c": (7, 13)})
    out = tmp_path / "out"
    r = cli(
        "data",
        "convert",
        src,
        out,
        "--labels-csv",
        src / "labels.csv",
        "--image-size",
        16,
        "--shards",
        2,
        "--json",
        "-",
    )
    assert r.code == 0, r.err
    summary = r.json()
    assert summary["rows"] == 5 and summary["shards"] == 2 and summary["tasks"] == ["car", "person"]
    assert summary["skipped"] == 0 and summary["report"] is None
    assert not (out / "_skipped.jsonl").exists()

    back = read_back(str(out))
    assert back["names"] == ["part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]
    assert back["fmt"].shape == (16, 16, 3) and back["fmt"].encoding == "png"
    assert same(back["labels"], [[1, 0], [NAN, 1], [NAN, 0], [1, 0], [1, 0]])
    assert back["ids"] == ["a.png", "img-b", "c.png", "d.png", "e.jpg"]
    assert back["splits"] == ["train", "val", "train", "test", None]
    for image in back["images"]:
        assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    assert tuple(back["images"][0][8, 8]) == (255, 0, 0)
    gray = back["images"][1]
    assert (gray[..., 0] == 100).all() and (gray[..., 1] == 100).all() and (gray[..., 2] == 100).all()


def test_folder_same_size_keeps_shape_and_raw_works(tmp_path):
    src = image_folder(tmp_path / "imgs", LABELS_CSV)
    result = convert(str(src), str(tmp_path / "out"), labels_csv=str(src / "labels.csv"), encoding="raw")
    assert (result.rows, result.shape, result.encoding) == (5, [8, 8, 3], "raw")
    back = read_back(str(tmp_path / "out"))
    assert back["fmt"].encoding == "raw" and back["fmt"].shape == (8, 8, 3)
    assert len(back["images"]) == 5


def test_mixed_sizes_png_have_no_shape(tmp_path):
    src = image_folder(tmp_path / "imgs", LABELS_CSV, sizes={"a": (20, 10)})
    result = convert(str(src), str(tmp_path / "out"), labels_csv=str(src / "labels.csv"))
    assert result.shape is None and result.rows == 5
    back = read_back(str(tmp_path / "out"))
    assert back["images"][0].shape == (10, 20, 3)


def test_raw_needs_one_size(cli, tmp_path):
    src = image_folder(tmp_path / "imgs", LABELS_CSV, sizes={"a": (20, 10)})
    err = failing(cli, src, tmp_path / "out", "--labels-csv", src / "labels.csv", "--encoding", "raw")
    assert "--image-size" in err and "10x20" in err


def test_folder_jsonl_labels(tmp_path):
    src = image_folder(tmp_path / "imgs", "unused\n")
    lines = [
        {"filename": "a.png", "car": 1, "person": None},
        {"filename": "b.png", "car": "no", "person": True},
        {"filename": "d.png", "car": -1.0, "person": "?"},
    ]
    (src / "labels.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    result = convert(str(src), str(tmp_path / "out"), labels_csv=str(src / "labels.jsonl"))
    assert result.rows == 3 and result.tasks == ["car", "person"]
    back = read_back(str(tmp_path / "out"))
    assert same(back["labels"], [[1, NAN], [0, 1], [0, NAN]])


def test_custom_values_and_task_choice(cli, tmp_path):
    csv_text = "path,car,person,notes\na.png,pos,neg,x\nb.png,NEG,n/a,y\n"
    src = image_folder(tmp_path / "imgs", csv_text)
    r = cli(
        "data",
        "convert",
        src,
        tmp_path / "out",
        "--labels-csv",
        src / "labels.csv",
        "--tasks",
        "car,person",
        "--positive",
        "pos",
        "--negative",
        "neg",
        "--missing",
        "n/a",
        "--json",
        "-",
    )
    assert r.code == 0, r.err
    assert r.json()["tasks"] == ["car", "person"]
    assert same(read_back(str(tmp_path / "out"))["labels"], [[1, 0], [0, NAN]])


def test_label_map_user_values_override_builtins():
    mapping = LabelMap(missing=["-1"])
    assert math.isnan(mapping.parse(-1)) and math.isnan(mapping.parse(" -1 ")) and mapping.parse(0) == 0.0
    assert mapping.parse("1.0") == 1.0 and mapping.parse(True) == 1.0 and math.isnan(mapping.parse(float("nan")))
    assert mapping.parse(2) is None and mapping.parse("maybe") is None
    with pytest.raises(UserError, match="both positive and negative"):
        LabelMap(positive=["x"], negative=["X "])


# ---- unreadable images -----------------------------------------------------------------------


def test_corrupt_and_missing_images_are_skipped_and_reported(cli, tmp_path):
    csv_text = "file,car\na.png,1\nbad.png,0\nb.png,1\ngone.png,1\ncut.png,0\nd.png,0\n"
    src = image_folder(tmp_path / "imgs", csv_text)
    (src / "bad.png").write_bytes(b"not an image at all")
    (src / "cut.png").write_bytes(png("RGB", (64, 64), (1, 2, 3))[:60])
    out = tmp_path / "out"
    r = cli(
        "data", "convert", src, out, "--labels-csv", src / "labels.csv", "--image-size", 8, "--shards", 4, "--json", "-"
    )
    assert r.code == 0, r.err
    summary = r.json()
    assert summary["rows"] == 3 and summary["skipped"] == 3
    assert summary["report"] == f"{out}/_skipped.jsonl"
    records = [json.loads(line) for line in (out / "_skipped.jsonl").read_text().splitlines()]
    assert [(Path(x["file"]).name, x["line"]) for x in records] == [("bad.png", 3), ("gone.png", 5), ("cut.png", 6)]
    assert all(x["reason"] for x in records) and "not found" in records[1]["reason"]
    back = read_back(str(out))
    assert back["ids"] == ["a.png", "b.png", "d.png"]
    assert back["names"] == [f"part-0000{i}-of-00003.parquet" for i in range(3)]


def test_skip_report_to_chosen_file(tmp_path):
    src = image_folder(tmp_path / "imgs", "file,car\na.png,1\nbad.png,0\n")
    (src / "bad.png").write_bytes(b"\x89PNG garbage")
    report = tmp_path / "reports" / "skipped.jsonl"
    result = convert(str(src), str(tmp_path / "out"), labels_csv=str(src / "labels.csv"), report=str(report))
    assert result.skipped == 1 and result.report == str(report)
    assert json.loads(report.read_text())["line"] == 3


def test_strict_fails_naming_file_and_line(cli, tmp_path):
    src = image_folder(tmp_path / "imgs", "file,car\na.png,1\nbad.png,0\n")
    (src / "bad.png").write_bytes(b"garbage")
    err = failing(cli, src, tmp_path / "out", "--labels-csv", src / "labels.csv", "--strict")
    assert "labels.csv: line 3" in err and "bad.png" in err and "--strict" in err


def test_nothing_readable_is_an_error(cli, tmp_path):
    src = image_folder(tmp_path / "imgs", "file,car\nnope.png,1\n")
    err = failing(cli, src, tmp_path / "out", "--labels-csv", src / "labels.csv")
    assert "no readable images" in err and (tmp_path / "out" / "_skipped.jsonl").exists()


# ---- bad label files -------------------------------------------------------------------------


def test_label_value_outside_mapping(cli, tmp_path):
    src = image_folder(tmp_path / "imgs", "file,car,person\na.png,1,0\nb.png,maybe,1\n")
    err = failing(cli, src, tmp_path / "out", "--labels-csv", src / "labels.csv")
    assert "line 3" in err and "'car'" in err and "'maybe'" in err and "yes" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_csv_row_with_extra_fields(cli, tmp_path):
    src = image_folder(tmp_path / "imgs", "file,car\na.png,1\nb.png,1,0\n")
    err = failing(cli, src, tmp_path / "out", "--labels-csv", src / "labels.csv")
    assert "labels.csv: line 3" in err and "3 fields, expected 2" in err


def test_jsonl_line_not_an_object(cli, tmp_path):
    src = image_folder(tmp_path / "imgs", "x\n")
    (src / "labels.jsonl").write_text('{"file": "a.png", "car": 1}\n[1, 2]\n')
    err = failing(cli, src, tmp_path / "out", "--labels-csv", src / "labels.jsonl")
    assert "labels.jsonl: line 2" in err


@pytest.mark.parametrize(
    "csv_text, args, expected",
    [
        ("file,car\na.png,1\n", ["--tasks", "car,car"], "duplicate task name 'car'"),
        ("file,car\na.png,1\n", ["--tasks", "bus"], "task column 'bus' not found"),
        ("file,car,car\na.png,1,0\n", [], "'car' appears more than once"),
        ("name,car\na.png,1\n", [], "--file-column"),
        ("file,car,split\na.png,1,holdout\n", [], "split 'holdout'"),
    ],
)
def test_bad_label_files(cli, tmp_path, csv_text, args, expected):
    src = image_folder(tmp_path / "imgs", csv_text)
    err = failing(cli, src, tmp_path / "out", "--labels-csv", src / "labels.csv", *args)
    assert expected in err


def test_folder_without_label_file(cli, tmp_path):
    src = image_folder(tmp_path / "imgs", "file,car\n")
    assert "--labels-csv" in failing(cli, src, tmp_path / "out")


def test_refuses_output_with_shards(tmp_path):
    src = image_folder(tmp_path / "imgs", LABELS_CSV)
    convert(str(src), str(tmp_path / "out"), labels_csv=str(src / "labels.csv"))
    with pytest.raises(UserError, match="already holds Parquet files"):
        convert(str(src), str(tmp_path / "out"), labels_csv=str(src / "labels.csv"))


# ---- Parquet sources -------------------------------------------------------------------------


def hf_export(path: Path, smiling: tuple = (1, -1, None, 1, 1)) -> Path:
    """A Parquet file written by `datasets`: grayscale PNGs (row 4 has none), int64 labels 1/-1/null
    `smiling` and `glasses`, and a caption."""
    images = [np.full((12, 12), 40 * i, dtype=np.uint8) for i in range(4)] + [None]
    columns = {"image": images, "smiling": list(smiling), "glasses": [-1, -1, 1, None, 1], "caption": list("abcde")}
    features = {"image": Image(), "smiling": Value("int64"), "glasses": Value("int64"), "caption": Value("string")}
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset(columns, features).to_parquet(str(path))
    return path


def test_hugging_face_parquet_converts_and_validates(cli, tmp_path):
    hf_export(tmp_path / "hf" / "data" / "train-00000-of-00001.parquet")
    out = tmp_path / "out"
    r = cli("data", "convert", tmp_path / "hf", out, "--json", "-")
    assert r.code == 0, r.err
    summary = r.json()
    assert summary["tasks"] == ["smiling", "glasses"] and summary["rows"] == 4 and summary["skipped"] == 1
    record = json.loads((out / "_skipped.jsonl").read_text())
    assert record["row"] == 4 and record["file"].endswith("train-00000-of-00001.parquet") and "null" in record["reason"]

    back = read_back(str(out))
    assert same(back["labels"], [[1, 0], [0, 0], [NAN, 1], [1, NAN]])
    assert back["ids"] == [f"data/train-00000-of-00001.parquet:{i}" for i in range(4)]
    assert back["splits"] == ["train"] * 4  # the hub's file name says so
    assert back["fmt"].shape == (12, 12, 3)
    assert all((im[..., 0] == im[..., 2]).all() for im in back["images"])
    assert int(back["images"][1][0, 0, 0]) == 40

    v = cli("data", "validate", out, "--full", "--json", "-")
    assert v.code == 0, v.err
    assert v.json()["rows"] == 4


def test_parquet_with_id_split_and_raw_pixels(tmp_path):
    pixels = np.arange(3 * 4 * 4 * 3, dtype=np.uint8).reshape(3, 48)
    table = pa.table(
        {
            "pixels": pa.array([p.tobytes() for p in pixels], pa.binary(48)),
            "id": [10, 11, 12],
            "split": ["train", "VAL", None],
            "a": pa.array([True, False, None]),
            "b": pa.array(["yes", "no", ""]),
        }
    )
    pq.write_table(table, tmp_path / "src.parquet")
    result = convert(
        str(tmp_path / "src.parquet"),
        str(tmp_path / "out"),
        image_column="pixels",
        tasks=["a", "b"],
        encoding="raw",
        image_size=2,
    )
    assert (result.rows, result.shape) == (3, [2, 2, 3])
    back = read_back(str(tmp_path / "out"))
    assert back["ids"] == ["10", "11", "12"] and back["splits"] == ["train", "val", None]
    assert same(back["labels"], [[1, 1], [0, 0], [NAN, NAN]])


def test_parquet_label_value_outside_mapping(cli, tmp_path):
    hf_export(tmp_path / "x.parquet", smiling=(1, 2, None, 1, 1))
    left_out = convert(str(tmp_path / "x.parquet"), str(tmp_path / "auto"))  # not a yes/no column: no task
    assert left_out.tasks == ["glasses"] and left_out.left_out == {"smiling": "int64 values 1, 2: not a yes/no label"}
    err = failing(cli, tmp_path / "x.parquet", tmp_path / "out", "--tasks", "smiling,glasses")
    assert "x.parquet: row 1" in err and "'smiling'" in err and "value 2" in err


def test_parquet_missing_image_column(cli, tmp_path):
    hf_export(tmp_path / "x.parquet")
    err = failing(cli, tmp_path / "x.parquet", tmp_path / "out", "--image-column", "img")
    assert "image column 'img' missing" in err


def test_parquet_strict_names_file_and_row(cli, tmp_path):
    hf_export(tmp_path / "x.parquet")
    err = failing(cli, tmp_path / "x.parquet", tmp_path / "out", "--strict")
    assert "x.parquet: row 4" in err and "null" in err


# ---- S3 --------------------------------------------------------------------------------------


def test_s3_source_and_output(cli, s3, tmp_path):
    bucket = s3.bucket()
    fs = s3_filesystem()
    with fs.open_output_stream(f"{bucket}/hf/train.parquet") as f:
        f.write(hf_export(tmp_path / "train.parquet").read_bytes())
    r = cli("data", "convert", f"s3://{bucket}/hf", f"s3://{bucket}/shards", "--image-size", 8, "--json", "-")
    assert r.code == 0, r.err
    assert r.json()["rows"] == 4 and r.json()["report"] == f"s3://{bucket}/shards/_skipped.jsonl"
    back = read_back(f"s3://{bucket}/shards")
    assert same(back["labels"], [[1, 0], [0, 0], [NAN, 1], [1, NAN]])
    with fs.open_input_stream(f"{bucket}/shards/_skipped.jsonl") as f:
        assert json.loads(f.read())["row"] == 4


def test_s3_image_folder(s3, tmp_path):
    bucket = s3.bucket()
    fs = s3_filesystem()
    local = image_folder(tmp_path / "imgs", "file,car\na.png,1\nb.png,0\nmissing.png,1\n")
    for name in ("a.png", "b.png", "labels.csv"):
        with fs.open_output_stream(f"{bucket}/imgs/{name}") as f:
            f.write((local / name).read_bytes())
    result = convert(f"s3://{bucket}/imgs", str(tmp_path / "out"), labels_csv=f"s3://{bucket}/imgs/labels.csv")
    assert (result.rows, result.skipped) == (2, 1)


def test_missing_output_bucket(cli, s3, tmp_path):
    src = image_folder(tmp_path / "imgs", LABELS_CSV)
    err = failing(cli, src, "s3://no-such-bucket-here/out", "--labels-csv", src / "labels.csv")
    assert "no-such-bucket-here" in err


def test_camera_folder_converts_upright_and_at_full_depth(tmp_path):
    """Phone portraits stored sideways come out upright, 16-bit scans at their real brightness:
    each converted image is what a viewer shows (JPEG re-encoding aside: compared within a tolerance)."""
    from realdata import camera_folder

    photos, made = camera_folder(tmp_path / "photos", 12)
    result = convert(str(photos), str(tmp_path / "out"), labels_csv=str(photos / "labels.csv"))
    assert result.rows == 12 and result.shape is None  # three sizes: 90x160, 160x90, 120x120 (HxW)
    back = read_back(str(tmp_path / "out"))
    by_name = dict(zip(back["ids"], back["images"], strict=True))
    for item in made:
        got = by_name[item["file"]].astype(int)
        assert got.shape == item["shown"].shape, item["file"]
        assert np.abs(got - item["shown"]).mean() < 6, (item["kind"], np.abs(got - item["shown"]).mean())


def test_val_fraction_splits_by_row_id_and_keeps_rows_where_they_were(cli, tmp_path):
    from realdata import camera_folder

    photos, _ = camera_folder(tmp_path / "photos", 60)
    first = cli(
        "data",
        "convert",
        photos,
        tmp_path / "a",
        "--labels-csv",
        photos / "labels.csv",
        "--image-size",
        16,
        "--val-fraction",
        0.25,
        "--json",
        "-",
    )
    assert first.code == 0, first.err
    assert first.json()["splits"]["train"] + first.json()["splits"]["val"] == 60 and first.json()["splits"]["val"] > 5
    split_a = dict(zip(read_back(str(tmp_path / "a"))["ids"], read_back(str(tmp_path / "a"))["splits"], strict=True))
    lines = (photos / "labels.csv").read_text().splitlines()
    (photos / "fewer.csv").write_text("\n".join(lines[:41]) + "\n")  # the first 40 images only
    again = convert(
        str(photos), str(tmp_path / "b"), labels_csv=str(photos / "fewer.csv"), image_size=16, val_fraction=0.25
    )
    back = read_back(str(tmp_path / "b"))
    assert again.rows == 40 and all(split_a[i] == s for i, s in zip(back["ids"], back["splits"], strict=True))


def test_a_conversion_without_val_rows_says_how_to_get_them(cli, tmp_path):
    src = image_folder(tmp_path / "imgs", "file,car\na.png,1\nb.png,0\nc.png,1\n")
    res = cli("data", "convert", src, tmp_path / "out", "--labels-csv", src / "labels.csv")
    assert res.code == 0, res.err
    assert "splits: unassigned 3" in res.out and "no val rows" in res.out and "--val-fraction 0.2" in res.out
    assert (
        "--val-fraction"
        in cli("data", "convert", src, tmp_path / "o2", "--labels-csv", src / "labels.csv", "--val-fraction", 1.5).err
    )
