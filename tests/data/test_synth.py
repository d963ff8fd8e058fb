"""`mtl-ray data synth`: determinism, label rates, splits, encodings, extra tasks, bad input, S3."""

from __future__ import annotations

import pathlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from mtl_ray.data.shards import ShardFormat, decode_images, labels_of, open_shard, shard_format, shard_name
from mtl_ray.data.storage import list_shards
from mtl_ray.data.synth.dataset import MAX_EXTRA_TASKS, synthesize
from mtl_ray.data.synth.labels import extra_task_names
from mtl_ray.data.synth.parts import SEED_TASKS
from mtl_ray.errors import UserError


def read_all(path: str) -> tuple[ShardFormat, list[pq.ParquetFile], np.ndarray, list[str]]:
    """Format of the first shard, every shard, labels [N, T] and the split of each row."""
    fs, files, _ = list_shards(path)
    shards = [open_shard(fs, f, f) for f in files]
    fmt = shard_format(shards[0], files[0])
    tables = [pf.read() for pf in shards]
    labels = np.concatenate([labels_of(t, fmt.tasks) for t in tables])
    splits = [s for t in tables for s in t.column("split").to_pylist()]
    return fmt, shards, labels, splits


def test_same_seed_gives_identical_shards_and_another_seed_does_not(tmp_path: pathlib.Path):
    a = synthesize(str(tmp_path / "a"), 300, shards=2, seed=7)
    b = synthesize(str(tmp_path / "b"), 300, shards=2, seed=7)
    c = synthesize(str(tmp_path / "c"), 300, shards=2, seed=8)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == [shard_name(0, 2), shard_name(1, 2)]
    assert a.rows == b.rows == c.rows == 300
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        images_a = pq.read_table(tmp_path / "a" / name).column("image")
        images_c = pq.read_table(tmp_path / "c" / name).column("image")
        assert not images_a.equals(images_c)


def test_rows_ids_and_splits(tmp_path: pathlib.Path):
    result = synthesize(str(tmp_path), 1500, shards=2, seed=3, val_fraction=0.25)
    fs, files, _ = list_shards(str(tmp_path))
    ids = []
    for f in files:
        pf = open_shard(fs, f, f)
        table = pf.read()
        ids += table.column("id").to_pylist()
        splits = table.column("split").to_pylist()
        assert splits == sorted(splits, key=["train", "val"].index), "train rows come before val rows"
        for g in range(pf.num_row_groups):
            assert len(set(pf.read_row_group(g, columns=["split"]).column("split").to_pylist())) == 1
    assert sorted(ids) == [f"synth-3-{i:08d}" for i in range(1500)]
    assert result.split["train"] + result.split["val"] == 1500
    assert 0.2 < result.split["val"] / 1500 < 0.3


def test_label_rate_thins_train_labels_only(tmp_path: pathlib.Path):
    result = synthesize(str(tmp_path), 4000, shards=4, label_rates={"traffic_light": 0.05}, seed=0)
    fmt, _, labels, splits = read_all(str(tmp_path))
    train = np.array(splits) == "train"
    known = ~np.isnan(labels)
    light = fmt.tasks.index("traffic_light")
    assert abs(known[train, light].mean() - 0.05) <= 0.2 * 0.05
    assert result.labeled["traffic_light"] == known[train, light].sum()
    others = [j for j, t in enumerate(fmt.tasks) if t != "traffic_light"]
    assert known[train][:, others].all()
    assert known[~train].all(), "val keeps every label"
    assert result.labeled["car"] == result.split["train"]


@pytest.mark.parametrize("encoding", ["raw", "png", "jpeg"])
def test_every_encoding_round_trips(tmp_path: pathlib.Path, encoding: str):
    synthesize(str(tmp_path / "raw"), 40, shards=1, seed=5)
    synthesize(str(tmp_path / encoding), 40, shards=1, seed=5, encoding=encoding)
    fmt_raw, (raw,), labels_raw, _ = read_all(str(tmp_path / "raw"))
    fmt, (pf,), labels, _ = read_all(str(tmp_path / encoding))
    assert fmt.encoding == encoding
    assert fmt.tasks == SEED_TASKS
    assert fmt.shape == (64, 64, 3)
    pixels = decode_images(raw.read().column("image"), fmt_raw)
    decoded = decode_images(pf.read().column("image"), fmt)
    assert decoded.shape == (40, 64, 64, 3)
    if encoding == "jpeg":
        assert np.abs(decoded.astype(int) - pixels).mean() < 8
    else:
        assert np.array_equal(decoded, pixels)
    assert np.array_equal(labels, labels_raw)


def test_seed_tasks_are_neither_rare_nor_common(tmp_path: pathlib.Path):
    synthesize(str(tmp_path), 1000, shards=1, seed=11)
    fmt, _, labels, _ = read_all(str(tmp_path))
    positive = labels.mean(axis=0)
    for task, rate in zip(fmt.tasks, positive, strict=True):
        assert 0.2 < rate < 0.7, f"{task}: {rate:.2f} positive"


def test_image_size_scales(tmp_path: pathlib.Path):
    synthesize(str(tmp_path), 200, shards=1, seed=2, image_size=128)
    fmt, (pf,), labels, _ = read_all(str(tmp_path))
    assert fmt.shape == (128, 128, 3)
    images = decode_images(pf.read().column("image"), fmt)
    assert images.shape == (200, 128, 128, 3) and images.std() > 20
    assert ((0.2 < labels.mean(axis=0)) & (labels.mean(axis=0) < 0.7)).all()


def test_extra_tasks_are_stable_distinct_and_not_constant(tmp_path: pathlib.Path):
    names = extra_task_names(MAX_EXTRA_TASKS)
    assert len(names) == len(set(names)) == MAX_EXTRA_TASKS
    assert extra_task_names(5) == names[:5]
    assert not set(names) & set(SEED_TASKS)
    assert {"car_count_ge2", "pedestrian_left_of_car", "car_and_stop_sign"} <= set(names)
    result = synthesize(str(tmp_path), 1000, shards=1, extra_tasks=MAX_EXTRA_TASKS, seed=4)
    assert result.tasks == list(SEED_TASKS) + names
    fmt, _, labels, _ = read_all(str(tmp_path))
    assert list(fmt.tasks) == result.tasks
    rates = labels.mean(axis=0)
    constant = [t for t, r in zip(fmt.tasks, rates, strict=True) if r in (0.0, 1.0)]
    assert not constant


def test_task_subset_keeps_the_scenes(tmp_path: pathlib.Path):
    result = synthesize(str(tmp_path / "sub"), 100, shards=1, tasks=["traffic_light", "car"], extra_tasks=2, seed=9)
    assert result.tasks == ["traffic_light", "car"] + extra_task_names(2)
    synthesize(str(tmp_path / "all"), 100, shards=1, seed=9)
    _, (sub,), sub_labels, _ = read_all(str(tmp_path / "sub"))
    fmt, (full,), full_labels, _ = read_all(str(tmp_path / "all"))
    assert sub.read().column("image").equals(full.read().column("image"))
    assert np.array_equal(sub_labels[:, :2], full_labels[:, [fmt.tasks.index("traffic_light"), fmt.tasks.index("car")]])


def test_refuses_to_mix_with_other_shards_but_overwrites_its_own(tmp_path: pathlib.Path):
    synthesize(str(tmp_path), 60, shards=2)
    synthesize(str(tmp_path), 60, shards=2, seed=1)
    with pytest.raises(UserError, match=shard_name(0, 2)):
        synthesize(str(tmp_path), 60, shards=3)


@pytest.mark.parametrize(
    "args, named",
    [
        (["--tasks", "car,bicycle"], "bicycle"),
        (["--tasks", "car,car"], "car"),
        (["--label-rate", "bicycle=0.5"], "bicycle"),
        (["--tasks", "car", "--label-rate", "stop_sign=0.5"], "stop_sign"),
        (["--extra-tasks", "101"], "--extra-tasks"),
        (["--extra-tasks", "-1"], "--extra-tasks"),
        (["--shards", "5"], "--shards"),
        (["--val-fraction", "1"], "--val-fraction"),
        (["--image-size", "8"], "--image-size"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(cli, tmp_path: pathlib.Path, args: list[str], named: str):
    out = tmp_path / "out"
    result = cli("data", "synth", out, "--n", "3", *args)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.err
    assert not out.exists() or not any(out.iterdir())


def test_cli_json_summary(cli, tmp_path: pathlib.Path):
    out = str(tmp_path / "scenes")
    result = cli(
        "data",
        "synth",
        out,
        "--n",
        "40",
        "--shards",
        "2",
        "--extra-tasks",
        "3",
        "--label-rate",
        "car=0.5",
        "--json",
        "-",
    )
    assert result.code == 0, result.err
    summary = result.json()
    assert {"rows", "shards", "tasks", "path", "split", "labeled", "positive", "seconds", "images_per_s"} <= set(
        summary
    )
    assert summary["rows"] == 40 and summary["shards"] == 2 and summary["path"] == out
    assert summary["tasks"] == list(SEED_TASKS) + extra_task_names(3)
    assert "images/s" in result.err and "traffic_light" in result.err


def test_writes_to_s3(s3):
    bucket = s3.bucket()
    path = f"s3://{bucket}/scenes"
    result = synthesize(path, 50, shards=2, seed=6)
    assert result.path == path
    fs, files, _ = list_shards(path)
    assert [f.rsplit("/", 1)[1] for f in files] == [shard_name(0, 2), shard_name(1, 2)]
    fmt, _, labels, splits = read_all(path)
    assert fmt.tasks == SEED_TASKS and labels.shape == (50, 4) and len(splits) == 50
