"""`mtl-ray data convert` and `validate` on Hugging Face exports as the real `datasets` library writes
them: ClassLabel columns (−1 = unknown), label lists, float labels, path-only images (local and
S3), CelebA's 40 attributes as 1/−1 with JPEG images, and the hub's split files."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from datasets import ClassLabel, Image, Sequence, Value, load_dataset
from hf_exports import CELEBA, dataset, encoded, scenes, write_hub
from PIL import Image as PILImage

from mtl_ray.data.storage import s3_filesystem
from mtl_ray.data.validate import validate

YES_NO = ClassLabel(names=["no", "yes"])
COLOUR_NAMES = ["red", "green", "blue"]


def converted(cli, *args) -> dict:
    r = cli("data", "convert", *args, "--json", "-")
    assert r.code == 0, r.err
    return r.json() | {"_summary": r.err}


def counts(path) -> dict:
    """{task: (labeled, positive)} of shards at PATH, as validate counts them."""
    report = validate(str(path))
    assert report.usable, report.problems
    return {t: (c["labeled"], c["positive"]) for t, c in report.tasks.items()}


def one_error(cli, *args) -> str:
    """A command expected to exit 2 with one error line and no traceback; returns that line."""
    r = cli(*args)
    assert r.code == 2, (r.out, r.err)
    errors = [line for line in r.err.splitlines() if line.startswith("mtl-ray: error: ")]
    assert len(errors) == 1 and "Traceback" not in r.err, r.err
    return errors[0]


@pytest.fixture(scope="module")
def colours():
    """60 scenes: images and the colour ids each shows."""
    return scenes(60, size=16, seed=3)


# ---- ClassLabel -------------------------------------------------------------------------------


def test_classlabel_minus_one_is_unknown_with_its_mapping_shown(cli, tmp_path, colours):
    images, present = colours
    known = np.random.default_rng(0).random(len(images)) < 0.3  # "red" is labeled on 30 %
    red = [int(0 in p) if k else -1 for p, k in zip(present, known, strict=True)]
    green = [int(1 in p) for p in present]
    ds = dataset({"image": images, "red": red, "green": green}, {"image": Image(), "red": YES_NO, "green": YES_NO})
    parts = ds.train_test_split(test_size=0.25, seed=0)
    root = write_hub(tmp_path / "colours", {"train": parts["train"], "test": parts["test"]})
    back = load_dataset("parquet", data_files=str(root / "data" / "*.parquet"), split="train")
    assert back.features["red"] == YES_NO and back.num_rows == 60  # a genuine export, as datasets reads it

    err = one_error(cli, "data", "validate", root)
    assert "ClassLabel: red, green" in err and f"mtl-ray data convert {root} OUT --tasks red,green" in err

    out = converted(cli, root, tmp_path / "out")
    assert out["tasks"] == ["red", "green"] and out["splits"] == {"train": 45, "test": 15}
    assert out["mapping"]["red"].endswith("1 'yes' → positive, 0 'no' → negative, -1 → unknown")
    assert "labels of red, green: ClassLabel[no, yes]" in out["_summary"]
    truth_red = (int(known.sum()), sum(0 in p for p, k in zip(present, known, strict=True) if k))
    assert counts(tmp_path / "out") == {"red": truth_red, "green": (60, sum(1 in p for p in present))}


def test_a_flag_that_contradicts_the_classlabel_is_one_line_naming_both(cli, tmp_path, colours):
    images, present = colours
    red = [int(0 in p) if i % 2 else -1 for i, p in enumerate(present)]
    root = write_hub(
        tmp_path / "c", {"train": dataset({"image": images, "red": red}, {"image": Image(), "red": YES_NO})}
    )
    err = one_error(cli, "data", "convert", root, tmp_path / "out", "--negative", "-1")
    assert "column 'red' is ClassLabel[no, yes]" in err and "-1 means unknown" in err and "--negative -1" in err
    err = one_error(cli, "data", "convert", root, tmp_path / "out", "--negative", "yes")
    assert "class 1 is named 'yes'; --negative yes contradicts it" in err
    assert not (tmp_path / "out").exists()  # a failed convert leaves no folder behind
    out = converted(cli, root, tmp_path / "out", "--missing", "-1")  # agrees with the metadata
    assert counts(tmp_path / "out")["red"] == (30, sum(0 in p for p in present[1::2]))
    assert out["skipped"] == 0


# ---- label lists ------------------------------------------------------------------------------


def test_a_label_list_becomes_one_task_per_class_once_its_semantics_are_said(cli, tmp_path, colours):
    images, present = colours
    features = {"image": Image(), "labels": Sequence(ClassLabel(names=COLOUR_NAMES))}
    root = write_hub(tmp_path / "multi", {"train": dataset({"image": images, "labels": present}, features)})
    err = one_error(cli, "data", "convert", root, tmp_path / "out")
    assert "column 'labels' is a label list (3 classes: red, green, blue)" in err
    assert "--absent negative" in err and "--absent unknown" in err

    out = converted(cli, root, tmp_path / "out", "--absent", "negative")
    assert out["tasks"] == COLOUR_NAMES and "not listed → negative (--absent negative)" in out["mapping"]["labels"]
    truth = {name: (60, sum(k in p for p in present)) for k, name in enumerate(COLOUR_NAMES)}
    assert counts(tmp_path / "out") == truth
    converted(cli, root, tmp_path / "picked", "--absent", "negative", "--classes", "blue,red")
    assert counts(tmp_path / "picked") == {"blue": truth["blue"], "red": truth["red"]}
    assert "not a class of any label list" in one_error(
        cli, "data", "convert", root, tmp_path / "x", "--absent", "negative", "--classes", "pink"
    )


def test_open_images_style_lists_know_only_the_verified_classes(cli, tmp_path, colours):
    """Verified present classes in `labels`, verified absent ones in `negatives`; the rest unknown."""
    images, present = colours
    rng = np.random.default_rng(5)
    verified = [[k for k in range(3) if rng.random() < 0.5] for _ in present]
    positives = [[k for k in v if k in p] for v, p in zip(verified, present, strict=True)]
    negatives = [[k for k in v if k not in p] for v, p in zip(verified, present, strict=True)]
    classes = Sequence(ClassLabel(names=COLOUR_NAMES))
    features = {"image": Image(), "labels": classes, "negatives": classes}
    ds = dataset({"image": images, "labels": positives, "negatives": negatives}, features)
    root = write_hub(tmp_path / "oi", {"train": ds})
    assert "--negative-list negatives" in one_error(
        cli, "data", "convert", root, tmp_path / "out", "--absent", "unknown"
    )
    converted(cli, root, tmp_path / "out", "--absent", "unknown", "--negative-list", "negatives")
    assert counts(tmp_path / "out") == {
        name: (sum(k in v for v in verified), sum(k in p for p in positives)) for k, name in enumerate(COLOUR_NAMES)
    }


def test_a_list_of_names_without_metadata_is_named_with_tasks(cli, tmp_path, colours):
    images, present = colours
    tags = [[COLOUR_NAMES[k] for k in p] for p in present]
    flags = [int(len(p) > 1) for p in present]
    features = {"image": Image(), "tags": Sequence(Value("string")), "busy": Value("int8")}
    root = write_hub(tmp_path / "t", {"train": dataset({"image": images, "tags": tags, "busy": flags}, features)})
    out = converted(cli, root, tmp_path / "auto")
    assert out["tasks"] == ["busy"] and "name it with --tasks" in out["left_out"]["tags"]
    out = converted(cli, root, tmp_path / "out", "--tasks", "tags", "--absent", "negative")
    assert out["tasks"] == sorted(COLOUR_NAMES)
    assert counts(tmp_path / "out")["green"] == (60, sum(1 in p for p in present))


# ---- numbers: float labels, integers that are no labels, int8 as it is ------------------------


def test_float_labels_are_tasks_and_other_integers_are_left_out_by_name(cli, tmp_path, colours):
    images, present = colours
    red = [float(0 in p) if i % 3 else None for i, p in enumerate(present)]
    count = [len(p) for p in present]
    green = [int(1 in p) if i % 2 else None for i, p in enumerate(present)]
    features = {"image": Image(), "red": Value("float32"), "count": Value("int64"), "green": Value("int8")}
    root = write_hub(
        tmp_path / "f", {"train": dataset({"image": images, "red": red, "count": count, "green": green}, features)}
    )
    err = one_error(cli, "data", "validate", root)
    assert "float labels: red" in err and "--tasks red,green" in err
    out = converted(cli, root, tmp_path / "out")
    assert out["tasks"] == ["red", "green"] and out["left_out"] == {
        "count": "int64 values 0, 1, 2, 3: not a yes/no label"
    }
    assert "left out: count: int64 values 0, 1, 2, 3" in out["_summary"]
    assert counts(tmp_path / "out")["red"] == (40, sum(0 in p for i, p in enumerate(present) if i % 3))

    del features["red"]
    direct = write_hub(tmp_path / "i8", {"train": dataset({"image": images, "count": count, "green": green}, features)})
    report = validate(str(direct))  # int8 0/1 with nulls: shards as they are, `count` named and left out
    assert report.usable and list(report.tasks) == ["green"] and report.tasks["green"]["labeled"] == 30
    assert report.warnings[0] == "column 'count' is no task: int64 values 0, 1, 2, 3: not a yes/no label"


# ---- CelebA: 40 attributes as 1/−1, JPEG images -----------------------------------------------


def test_celeba_shaped_export_keeps_its_jpeg_bytes_and_counts(cli, tmp_path):
    images, _ = scenes(40, size=24, seed=9)
    rng = np.random.default_rng(9)
    attrs = {name: [1 if v else -1 for v in rng.random(40) < (k + 1) / 42] for k, name in enumerate(CELEBA)}
    jpegs = [encoded(im, "JPEG") for im in images]
    features = {"image": Image(), **{name: Value("int64") for name in CELEBA}}
    root = write_hub(
        tmp_path / "celeba",
        {"train": dataset({"image": [{"bytes": j, "path": None} for j in jpegs], **attrs}, features)},
    )
    err = one_error(cli, "data", "validate", root)  # one line saying to convert, not a row-by-row list
    assert "int64 labels: 5_o_Clock_Shadow" in err and "mtl-ray data convert" in err

    out = converted(cli, root, tmp_path / "out")
    assert out["tasks"] == CELEBA and out["skipped"] == 0 and out["image"]["encoding"] == "jpeg"
    assert out["mapping"]["Smiling"] == "1 → positive, -1 → negative, null → unknown"
    assert counts(tmp_path / "out") == {name: (40, attrs[name].count(1)) for name in CELEBA}
    shard = next((tmp_path / "out").glob("*.parquet"))
    assert pq.read_table(shard, columns=["image"]).column("image").to_pylist() == jpegs  # byte for byte
    source = sum(f.stat().st_size for f in (root / "data").glob("*.parquet"))
    assert shard.stat().st_size < 1.2 * source


# ---- path-only images -------------------------------------------------------------------------


def _path_only(root, folder, images, names, monkeypatch, shards=1):
    """A hub export at `root` whose images datasets stores as paths only: cast from file names
    relative to `folder`, where the files are (to_parquet looks at their sizes there)."""
    for name, pixels in zip(names, images, strict=True):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(pixels).save(folder / name)
    ds = dataset({"image": names, "red": [1, 0] * (len(names) // 2)}, {"image": Value("string"), "red": Value("int8")})
    with monkeypatch.context() as m:
        m.chdir(folder)
        return write_hub(root, {"train": ds.cast_column("image", Image())}, shards)


def test_path_only_images_are_read_from_their_files(cli, tmp_path, colours, monkeypatch):
    images = colours[0][:20]
    names = [f"images/{i:02d}.png" for i in range(20)]
    root = _path_only(tmp_path / "here", tmp_path / "here", images, names, monkeypatch)
    column = pq.read_table(root / "data" / "train-00000-of-00001.parquet").column("image")
    assert pc.all(pc.is_null(pc.struct_field(column, "bytes"))).as_py()  # what datasets 5 writes: no bytes
    assert pc.struct_field(column, "path").to_pylist() == names
    assert "images stored as file paths" in one_error(cli, "data", "validate", root)

    monkeypatch.chdir(root)  # paths relative to the working directory
    assert converted(cli, "data", tmp_path / "cwd")["rows"] == 20
    monkeypatch.chdir(tmp_path)
    assert converted(cli, root, tmp_path / "rooted", "--image-root", root)["skipped"] == 0
    (root / names[7]).unlink()
    out = converted(cli, root, tmp_path / "missing", "--image-root", root)
    assert (out["rows"], out["skipped"]) == (19, 1)
    record = json.loads((tmp_path / "missing" / "_skipped.jsonl").read_text())
    assert record["file"] == names[7] and record["row"] == 7 and "was not found under --image-root" in record["reason"]

    absolute = [str(tmp_path / "abs" / name) for name in names[:4]]
    elsewhere = _path_only(tmp_path / "a", tmp_path, images[:4], absolute, monkeypatch)
    assert converted(cli, elsewhere, tmp_path / "absolute")["rows"] == 4  # absolute paths as they are

    beside = _path_only(tmp_path / "beside", tmp_path / "beside" / "data", images, names, monkeypatch)
    assert converted(cli, beside, tmp_path / "b")["skipped"] == 0  # relative to the Parquet file's folder
    shard = sorted((tmp_path / "b").glob("*.parquet"))[0]
    first = pq.read_table(shard).column("image")[0].as_py()
    assert np.array_equal(np.asarray(PILImage.open(io.BytesIO(first)).convert("RGB")), images[0])


def test_path_only_images_and_globs_on_s3(cli, s3, tmp_path, colours, monkeypatch):
    bucket = s3.bucket()
    fs = s3_filesystem()
    images = colours[0][:12]
    names = [f"images/{i:02d}.png" for i in range(12)]
    local = _path_only(tmp_path / "hub", tmp_path / "files", images, names, monkeypatch, shards=2)
    for name in names:  # beside the Parquet files, and under a root of their own
        for key in (f"hub/data/{name}", f"pics/{name}"):
            with fs.open_output_stream(f"{bucket}/{key}") as f:
                f.write((tmp_path / "files" / name).read_bytes())
    for part in (local / "data").glob("*.parquet"):
        with fs.open_output_stream(f"{bucket}/hub/data/{part.name}") as f:
            f.write(part.read_bytes())
    out = converted(cli, f"s3://{bucket}/hub/data/train-*.parquet", f"s3://{bucket}/out")
    assert (out["rows"], out["skipped"], out["splits"]) == (12, 0, {"train": 12})
    assert counts(f"s3://{bucket}/out") == {"red": (12, 6)}
    fs.delete_file(f"{bucket}/pics/{names[3]}")
    out = converted(cli, f"s3://{bucket}/hub", str(tmp_path / "out"), "--image-root", f"s3://{bucket}/pics")
    assert (out["rows"], out["skipped"]) == (11, 1)


# ---- hub split files --------------------------------------------------------------------------


def test_hub_split_files_give_the_splits_and_a_glob_picks_one(cli, tmp_path, colours):
    images, present = colours
    ds = dataset({"image": images, "red": [int(0 in p) for p in present]}, {"image": Image(), "red": Value("int8")})
    first = ds.train_test_split(test_size=0.2, seed=0)
    second = first["train"].train_test_split(test_size=0.25, seed=0)
    splits = {"train": second["train"], "validation": second["test"], "test": first["test"]}
    root = write_hub(tmp_path / "hub", splits, shards=2)
    out = converted(cli, root, tmp_path / "out", "--val-fraction", "0.5")  # no row has to move
    assert out["splits"] == {"train": 36, "val": 12, "test": 12} and len(out["split_files"]) == 6
    assert "(by the file names of 6 files)" in out["_summary"] and "no val rows" not in out["_summary"]
    only = converted(cli, root / "data" / "train-*.parquet", tmp_path / "train")
    assert only["splits"] == {"train": 36} and "no val rows" in only["_summary"]
    assert "--val-fraction never changes" in only["_summary"]
    assert "no file matches" in one_error(cli, "data", "convert", root / "data" / "dev-*.parquet", tmp_path / "x")
    assert counts(root / "data" / "validation-*.parquet") == {"red": (12, sum(second["test"]["red"]))}
    column = ds.add_column("split", ["validation" if i % 4 == 0 else None for i in range(60)])
    column.to_parquet(str(tmp_path / "own" / "rows.parquet"))  # the hub's split names in a column
    assert converted(cli, tmp_path / "own", tmp_path / "by_column")["splits"] == {"val": 15, "unassigned": 45}


# ---- a failed convert -------------------------------------------------------------------------


def test_a_convert_that_fails_after_writing_shards_removes_them_and_its_folder(cli, tmp_path):
    images, _ = scenes(300, size=8, seed=1)
    data = [{"bytes": encoded(im), "path": None} for im in images]
    data[280] = {"bytes": data[280]["bytes"][:-30], "path": None}  # a header that reads, pixels that do not
    ds = dataset({"image": data, "red": [1, 0] * 150}, {"image": Image(), "red": Value("int8")})
    root = write_hub(tmp_path / "hub", {"train": ds})
    err = one_error(cli, "data", "convert", root, tmp_path / "out", "--shards", "2", "--strict")
    assert "row 280" in err and not (tmp_path / "out").exists()
    (tmp_path / "kept").mkdir()
    one_error(cli, "data", "convert", root, tmp_path / "kept", "--shards", "2", "--strict")
    assert (tmp_path / "kept").is_dir() and not list((tmp_path / "kept").iterdir())
