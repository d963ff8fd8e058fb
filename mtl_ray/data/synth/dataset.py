"""Procedural driving scenes as mtl-ray shards: `mtl-ray data synth`.

Each image is a street (sky, road with a dashed lane mark, sidewalks, buildings, trees) with the
four seed tasks `pedestrian, car, stop_sign, traffic_light`; a task's label says whether such an
object is visible. Objects are built from shared parts, as in real streets, so that the tasks share
low-level features by construction and distractors carry the parts alone:
- a traffic light is a pole, a dark housing and one lit lamp; a car carries the same lit lamp in
  the same housing as its tail-lamp cluster, and a trailer — a car without that cluster — is what
  makes the car task learn it; a signal box is a traffic light with every lamp dark, a lamp post a
  pole with a lamp but no housing, and lit windows are lamps in walls;
- a stop sign is a pole and a red octagon, beside red round signs on the same poles;
- pedestrians stand beside bare poles, cars beside car-coloured boxes and buildings.
So with few traffic-light labels of its own, a network still has the lamp-in-housing feature that
thousands of car labels teach (docs/compare.md measures this). Objects shrink with distance and
hide behind nearer objects or the image edge; an object counts as visible when at least
`VISIBLE_FRACTION` of it shows.

Speed comes from painting palette indices, not colours, a batch of scenes at a time with no
per-pixel or per-object numpy calls: object parameters are drawn per kind for the whole batch,
every object is a cached sprite of part numbers, and each part of each object gets its own entry
in its scene's palette. All sprite pixels are scattered into one uint8 canvas at once; the canvas
is then both the picture (one gather through the palettes, which also carry brightness jitter and
pixel noise) and the visibility map (a bincount of entries).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs

from mtl_ray import progress
from mtl_ray.data.shards import (
    ENCODINGS,
    ROW_GROUP_ROWS,
    ShardFormat,
    ShardWriter,
    default_shard_count,
    encode_images,
    make_table,
    shard_name,
)
from mtl_ray.data.storage import prepare_output
from mtl_ray.data.synth.labels import ALL_TASKS, extra_task_names
from mtl_ray.data.synth.parts import SEED_TASKS
from mtl_ray.data.synth.scene import render_scenes
from mtl_ray.errors import UserError
from mtl_ray.result import Result

MAX_EXTRA_TASKS = 100
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 512


@dataclass
class SynthResult(Result):
    """What `synthesize` wrote: counts per split and per task, and how fast."""

    rows: int
    shards: int
    tasks: list[str]
    path: str
    encoding: str
    image_size: int
    seed: int
    split: dict[str, int]
    labeled: dict[str, int]
    positive: dict[str, int]
    seconds: float
    images_per_s: float

    def to_json(self) -> dict:
        return {**super().to_json(), "seconds": round(self.seconds, 3), "images_per_s": round(self.images_per_s, 1)}

    def render(self) -> str:
        width = max(len("task"), *(len(t) for t in self.tasks))
        lines = [
            f"wrote {self.rows:,} scenes ({self.image_size}x{self.image_size} {self.encoding}) to {self.path} "
            f"in {self.shards} shard(s): "
            f"{self.split['train']:,} train, {self.split['val']:,} val (val fully labeled)",
            f"{self.seconds:.2f} s, {self.images_per_s:,.0f} images/s",
            f"{'task':<{width}}  train labeled  positive",
        ]
        for t in self.tasks:
            labeled, positive = self.labeled[t], self.positive[t]
            share = f" ({positive / labeled:.0%})" if labeled else ""
            lines.append(f"{t:<{width}}  {labeled:>13,}  {positive:,}{share}")
        return "\n".join(lines)


def synthesize(
    out: str,
    n: int,
    *,
    shards: int | None = None,
    image_size: int = 64,
    tasks: list[str] | None = None,
    extra_tasks: int = 0,
    label_rates: dict[str, float] | None = None,
    encoding: str = "raw",
    seed: int = 0,
    val_fraction: float = 0.2,
) -> SynthResult:
    """Write `n` scenes to OUT (a directory or s3://bucket/prefix) as Parquet shards.

    Shard i is generated from its own `np.random.default_rng([seed, i])`, so the same arguments
    give byte-identical shards and shards can be made independently. Within a shard the train
    rows are written before the val rows, so no row group mixes splits. `label_rates` thins the
    train labels (kept with probability FRAC, else null); val keeps every label.
    """
    started = time.perf_counter()
    task_list = _task_list(tasks, extra_tasks)
    rates = _rates(label_rates or {}, task_list)
    count = _shard_count(n, shards, image_size, encoding, seed, val_fraction)
    fmt = ShardFormat(tasks=tuple(task_list), encoding=encoding, shape=(image_size, image_size, 3))
    columns = [ALL_TASKS.index(t) for t in task_list]
    fs, root = prepare_output(out)
    names = [shard_name(i, count) for i in range(count)]
    _refuse_stale_shards(fs, root, out, set(names))

    split = {"train": 0, "val": 0}
    labeled = np.zeros(len(task_list), dtype=np.int64)
    positive = np.zeros(len(task_list), dtype=np.int64)
    base, extra = divmod(n, count)
    first_row = 0
    counter = progress.Counter("synth: scenes", n)
    for i, name in enumerate(names):
        rows = base + (i < extra)
        split_rng, scene_rng, label_rng = np.random.default_rng([seed, i]).spawn(3)
        is_val = split_rng.random(rows) < val_fraction
        with ShardWriter(fs, f"{root}/{name}", fmt) as writer:
            for split_name, local_rows in (("train", np.flatnonzero(~is_val)), ("val", np.flatnonzero(is_val))):
                split[split_name] += len(local_rows)
                for start in range(0, len(local_rows), ROW_GROUP_ROWS):
                    chunk = local_rows[start : start + ROW_GROUP_ROWS]
                    images, truth = render_scenes(scene_rng, len(chunk), image_size)
                    values = truth[:, columns].astype(np.float32)
                    if split_name == "train":
                        values[label_rng.random(values.shape) >= rates] = np.nan
                        labeled += np.sum(~np.isnan(values), axis=0)
                        positive += np.sum(values == 1.0, axis=0)
                    ids = [f"synth-{seed}-{first_row + r:08d}" for r in chunk.tolist()]
                    table = make_table(fmt, encode_images(images, fmt), values, ids, [split_name] * len(chunk))
                    writer.write(table)
                    counter.advance(len(chunk))
        first_row += rows
    seconds = time.perf_counter() - started
    return SynthResult(
        rows=n,
        shards=count,
        tasks=task_list,
        path=out,
        encoding=encoding,
        image_size=image_size,
        seed=seed,
        split=split,
        labeled=dict(zip(task_list, labeled.tolist(), strict=True)),
        positive=dict(zip(task_list, positive.tolist(), strict=True)),
        seconds=seconds,
        images_per_s=n / seconds,
    )


def _shard_count(n: int, shards: int | None, image_size: int, encoding: str, seed: int, val_fraction: float) -> int:
    """The number of shards to write, once every other argument is checked."""
    if n < 1:
        raise UserError(f"--n {n}: expected a positive integer")
    count = default_shard_count(n) if shards is None else shards
    if count < 1 or count > n:
        raise UserError(f"--shards {count}: expected 1 to {n} (one row per shard at least)")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise UserError(f"--image-size {image_size}: expected {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels")
    if encoding not in ENCODINGS:
        raise UserError(f"--encoding {encoding!r}: expected one of {', '.join(ENCODINGS)}")
    if seed < 0:
        raise UserError(f"--seed {seed}: expected a non-negative integer")
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction {val_fraction}: expected 0 <= fraction < 1")
    return count


def _task_list(tasks: list[str] | None, extra_tasks: int) -> list[str]:
    valid = ", ".join(SEED_TASKS)
    chosen = list(SEED_TASKS) if tasks is None else list(tasks)
    if not chosen:
        raise UserError(f"--tasks: no tasks given; expected a comma-separated subset of {valid}")
    for t in chosen:
        if t not in SEED_TASKS:
            raise UserError(f"--tasks: unknown task {t!r}; valid tasks: {valid}")
        if chosen.count(t) > 1:
            raise UserError(f"--tasks: task {t!r} given twice")
    if not 0 <= extra_tasks <= MAX_EXTRA_TASKS:
        raise UserError(f"--extra-tasks {extra_tasks}: expected 0 to {MAX_EXTRA_TASKS}")
    return chosen + extra_task_names(extra_tasks)


def _rates(label_rates: dict[str, float], task_list: list[str]) -> np.ndarray:
    for task, frac in label_rates.items():
        if task not in task_list:
            raise UserError(f"--label-rate {task}: not a task of this dataset; valid tasks: {', '.join(task_list)}")
        if not 0.0 <= frac <= 1.0:
            raise UserError(f"--label-rate {task}={frac}: expected a fraction in [0, 1]")
    return np.array([label_rates.get(t, 1.0) for t in task_list], dtype=np.float64)


def _refuse_stale_shards(fs: pafs.FileSystem, root: str, out: str, names: set[str]) -> None:
    """Parquet files this run would not overwrite would silently join the dataset: refuse them."""
    found = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    stale = sorted(
        f.path
        for f in found
        if f.type == pafs.FileType.File and f.path.endswith(".parquet") and f.path[len(root) :].lstrip("/") not in names
    )
    if stale:
        raise UserError(
            f"{out}: already holds {len(stale)} other Parquet file(s) (e.g. {stale[0][len(root) :].lstrip('/')}); "
            "remove them or choose another OUT"
        )
