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
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import ClassVar, NamedTuple

import numpy as np
import pyarrow.fs as pafs

from mtl_ray import progress
from mtl_ray.errors import UserError
from mtl_ray.shards import (
    ENCODINGS,
    ROW_GROUP_ROWS,
    ShardFormat,
    ShardWriter,
    default_shard_count,
    encode_images,
    make_table,
    shard_name,
)
from mtl_ray.storage import prepare_output

SEED_TASKS = ("pedestrian", "car", "stop_sign", "traffic_light")
MAX_EXTRA_TASKS = 100
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 512
VISIBLE_FRACTION = 0.4

PED, CAR, STOP, LIGHT, ROUND_SIGN, POLE, LAMP_POST, BUILDING, TREE, BOX, TRAILER, SIGNAL_BOX = range(12)
_SEED_KINDS = (PED, CAR, STOP, LIGHT)
_DISTRACTORS = (
    ("red_round_sign", ROUND_SIGN),
    ("bare_pole", POLE),
    ("lamp_post", LAMP_POST),
    ("building", BUILDING),
    ("tree", TREE),
    ("box", BOX),
    ("trailer", TRAILER),
    ("signal_box", SIGNAL_BOX),
)

# Canvas entries: 8 sky bands, ground, sidewalk, road, lane mark, then one entry per object part.
_SKY_BANDS = 8
_GROUND, _SIDEWALK, _ROAD, _LANE = 8, 9, 10, 11
_FIRST_PART = 12
_PALETTE = 128
_NOISE = np.arange(-7, 8, 2, dtype=np.float32)  # per-pixel brightness offsets, picked uniformly

_KINDS = 12
_MAX_PARTS = 6  # palette entries one object may take: a building's wall, windows and four lit windows
_PARTS = {
    BUILDING: 2,
    TREE: 2,
    CAR: 5,
    PED: 3,
    STOP: 3,
    LIGHT: 4,
    ROUND_SIGN: 3,
    POLE: 1,
    LAMP_POST: 3,
    BOX: 2,
    TRAILER: 3,
    SIGNAL_BOX: 3,
}


def _table(*colours: tuple[int, int, int]) -> np.ndarray:
    return np.array(colours, dtype=np.float32)


_CAR_COLOURS = _table(
    (200, 30, 30), (40, 70, 190), (235, 235, 235), (165, 168, 172), (35, 35, 40), (225, 195, 40), (40, 135, 60)
)
_CAR_RED, _CAR_BLUE, _CAR_WHITE = 0, 1, 2
_LAMP_COLOURS = _table((255, 40, 30), (255, 175, 30), (40, 230, 90))  # red, amber, green, top to bottom
_SKINS = _table((250, 215, 180), (205, 150, 110), (140, 95, 65), (95, 62, 42))
_SHIRTS = _table(
    (210, 40, 40),
    (40, 80, 200),
    (40, 150, 70),
    (230, 200, 50),
    (240, 240, 240),
    (30, 30, 30),
    (240, 130, 40),
    (150, 60, 160),
)
_TROUSERS = _table((30, 40, 90), (25, 25, 25), (90, 90, 95), (100, 70, 45))
_POLE_COLOURS = _table((130, 130, 135), (75, 78, 80), (45, 80, 50), (60, 70, 120), (200, 170, 40))
_WALLS = _table((150, 145, 140), (175, 150, 120), (120, 90, 75), (200, 190, 170), (95, 100, 110))
_LIT = _table((255, 225, 120), (255, 170, 40), (235, 45, 35), (70, 220, 100))
_LEAVES = _table((50, 120, 45), (35, 95, 40), (90, 140, 50), (200, 95, 35))
_SIGN_RED = (215, 30, 35)
_HOUSING = (28, 28, 30)  # a traffic light's housing, its unlit twin and a car's tail-lamp cluster
_UNLIT = (48, 48, 46)
_WHITE = (238, 238, 235)


@dataclass
class SynthResult:
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
    exit_code: ClassVar[int] = 0

    def to_json(self) -> dict:
        return {
            "rows": self.rows,
            "shards": self.shards,
            "tasks": self.tasks,
            "path": self.path,
            "encoding": self.encoding,
            "image_size": self.image_size,
            "seed": self.seed,
            "split": self.split,
            "labeled": self.labeled,
            "positive": self.positive,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 1),
        }

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
    fmt = ShardFormat(tasks=tuple(task_list), encoding=encoding, shape=(image_size, image_size, 3))
    columns = [_ALL_TASKS.index(t) for t in task_list]
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


# ---- scene rendering ------------------------------------------------------------------------


def render_scenes(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` scenes from `rng`: uint8 images [n, size, size, 3] and bool labels [n, T], T being the
    seed tasks followed by every derived task in `extra_task_names` order."""
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    truth = np.empty((n, len(_ALL_TASKS)), dtype=bool)
    batch = max(1, min(256, (1 << 20) // (size * size)))
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        truth[start:stop] = _render_batch(rng, images[start:stop], size)
    return images, truth


def _render_batch(rng: np.random.Generator, out: np.ndarray, size: int) -> np.ndarray:
    """Paint len(out) scenes into `out` and return their labels over _ALL_TASKS."""
    count = len(out)
    road, palette = _background(rng, count, size)
    canvas = _zones(road, size)
    placed = _place_objects(rng, road, size)
    seen = _paint(canvas, placed, palette, size)
    brightness = (0.78 + 0.4 * rng.random(count)).astype(np.float32)
    levels = palette[:, None, :, :] * brightness[:, None, None, None] + _NOISE[None, :, None, None]
    lookup = np.clip(levels, 0, 255).astype(np.uint8).reshape(-1, 3)
    index = rng.integers(0, len(_NOISE), size=canvas.shape, dtype=np.uint8).astype(np.intp)
    index *= _PALETTE
    index += canvas
    index += (np.arange(count, dtype=np.intp) * (len(_NOISE) * _PALETTE))[:, None, None]
    np.take(lookup, index, axis=0, out=out, mode="clip")
    return _labels(*seen, placed, count, size)


def _background(rng: np.random.Generator, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-scene road geometry [count, 8] and a float32 palette [count, _PALETTE, 3] with the background set."""
    r = rng.random((count, 16))
    horizon = np.floor(size * (0.34 + 0.14 * r[:, 0]))
    far_x = size * (0.3 + 0.4 * r[:, 1])
    near_x = far_x + size * 0.6 * (r[:, 2] - 0.5)
    far_half = np.full(count, size * 0.015)
    near_half = size * (0.26 + 0.2 * r[:, 3])
    sidewalk = 1.3 + 0.3 * r[:, 4]
    lane = np.where(r[:, 5] < 0.85, 0.6 + 0.5 * r[:, 6], 0.0)  # dash spacing; 0 = no lane mark
    road = np.stack([horizon, far_x, near_x, far_half, near_half, sidewalk, lane, r[:, 7]], axis=1)

    palette = np.zeros((count, _PALETTE, 3), dtype=np.float32)
    skies = np.array(
        [[[70, 130, 210], [175, 205, 235]], [[150, 160, 175], [205, 208, 212]], [[85, 85, 150], [240, 165, 115]]],
        dtype=np.float32,
    )  # top and horizon colour of a clear, an overcast and a dusk sky
    sky = skies[np.searchsorted([0.5, 0.8], r[:, 8])]  # day, overcast, dusk: 50, 30, 20 %
    sky = sky * (0.9 + 0.2 * r[:, 9])[:, None, None]
    mix = (np.arange(_SKY_BANDS, dtype=np.float32) + 0.5) / _SKY_BANDS
    palette[:, :_SKY_BANDS] = sky[:, :1] + (sky[:, 1:] - sky[:, :1]) * mix[None, :, None]
    grounds = np.array([[70, 120, 50], [140, 130, 80], [110, 90, 70]], dtype=np.float32)
    palette[:, _GROUND] = grounds[(r[:, 10] * len(grounds)).astype(int)] * (0.85 + 0.3 * r[:, 11])[:, None]
    palette[:, _SIDEWALK] = np.array([165, 160, 150], dtype=np.float32) * (0.85 + 0.25 * r[:, 12])[:, None]
    palette[:, _ROAD] = np.array([78, 78, 84], dtype=np.float32) * (0.7 + 0.6 * r[:, 13])[:, None]
    lanes = np.array([[235, 235, 225], [225, 190, 60]], dtype=np.float32)
    palette[:, _LANE] = lanes[(r[:, 14] < 0.3).astype(int)]
    return road, palette


def _road_at(road: np.ndarray, y: np.ndarray | float, size: int):
    """Depth t (0 at the horizon, 1 at the bottom row), road centre and half width at row y."""
    horizon, far_x, near_x, far_half, near_half = (road[..., k] for k in range(5))
    t = (y - horizon) / (size - horizon)
    return t, far_x + (near_x - far_x) * t, far_half + (near_half - far_half) * t


def _zones(road: np.ndarray, size: int) -> np.ndarray:
    """Background canvas [count, size, size] of entries: sky bands, ground, sidewalk, road, lane."""
    rows = np.arange(size, dtype=np.float64) + 0.5
    t, centre, half = _road_at(road[:, None, :], rows[None, :], size)
    horizon = road[:, 0:1]
    sky = rows[None, :] < horizon
    outer = half * road[:, 5:6]
    dash = (np.mod(road[:, 6:7] / (t + 0.12) + road[:, 7:8], 1.0) < 0.5) & (road[:, 6:7] > 0)
    lane_half = np.where(dash, (0.35 + 0.9 * t) * size / 64, -1.0)
    bounds = [centre - outer, centre - half, centre + half, centre + outer, centre - lane_half, centre + lane_half]
    bounds = [np.where(sky, np.inf, v).astype(np.float32)[:, :, None] for v in bounds]
    base = np.where(sky, np.minimum(rows[None, :] * _SKY_BANDS // horizon, _SKY_BANDS - 1), _GROUND).astype(np.uint8)
    x = np.arange(size, dtype=np.float32) + 0.5
    canvas = base[:, :, None] + (x >= bounds[0]).view(np.uint8)
    canvas += (x >= bounds[1]).view(np.uint8)
    canvas -= (x >= bounds[2]).view(np.uint8)
    canvas -= (x >= bounds[3]).view(np.uint8)
    canvas += ((x >= bounds[4]) & (x < bounds[5])).view(np.uint8)
    return canvas


class _Site(NamedTuple):
    """Where a batch of objects of one kind stand: their depth, size factor and the road there."""

    s: float  # image size / 64
    size: int
    f: np.ndarray  # perspective size factor, 0.5 at the horizon to 1.25 at the bottom row
    centre: np.ndarray
    half: np.ndarray  # road half width
    outer: np.ndarray  # half width including the sidewalks


class _Spawned(NamedTuple):
    """One kind's objects: centre x, sprite keys, part colours [m, parts, 3], code, lit windows."""

    x: np.ndarray
    keys: list[tuple]
    colours: np.ndarray
    code: np.ndarray  # car: colour index; traffic light: lit lamp; pedestrian: on the road; building: lit windows
    lit_count: np.ndarray | None = None  # buildings: how many windows are lit (0-4)
    lit_spots: np.ndarray | None = None  # buildings: [m, 4, 2] window (row, column) as fractions of the grid


class _Placed(NamedTuple):
    """A batch's objects in drawing order (scene, then far to near), with their palette entries."""

    scene: np.ndarray
    kind: np.ndarray
    x: np.ndarray
    row: np.ndarray
    t: np.ndarray
    code: np.ndarray
    first: np.ndarray  # flat palette index (scene * _PALETTE + entry) of the object's first part
    entries: np.ndarray  # palette entries the object takes: its parts, then its lit windows
    colours: np.ndarray  # [objects, _MAX_PARTS, 3], one colour per entry
    keys: list[tuple]
    lit_count: np.ndarray
    lit_spots: np.ndarray


def _choose(table: np.ndarray, u: np.ndarray) -> np.ndarray:
    return table[np.minimum((u * len(table)).astype(np.intp), len(table) - 1)]


def _px(value: np.ndarray, least: int) -> np.ndarray:
    return np.maximum(least, np.round(value)).astype(np.intp)


def _shade(colours: np.ndarray, u: np.ndarray, spread: float = 0.3) -> np.ndarray:
    return colours * (1 - spread / 2 + spread * u)[:, None]


def _kerb(site: _Site, side: np.ndarray, across: np.ndarray) -> np.ndarray:
    """A point on a random side's sidewalk, biased to its outer part."""
    sign = np.where(side < 0.5, -1.0, 1.0)
    return site.centre + sign * (site.half + (site.outer - site.half) * (0.35 + 0.65 * across))


def _on_road(site: _Site, across: np.ndarray) -> np.ndarray:
    return site.centre + site.half * (1.6 * across - 0.8)


def _fixed(colour: tuple, m: int) -> np.ndarray:
    return np.broadcast_to(np.array(colour, dtype=np.float32), (m, 3))


def _spawn_building(site: _Site, u: np.ndarray) -> _Spawned:
    m = len(u)
    w, h = _px((8 + 16 * u[:, 0]) * site.s, 6), _px((8 + 26 * u[:, 1]) * site.s, 6)
    step, pane = max(3, round(4 * site.s)), max(1, round(2 * site.s))
    wall = np.where(u[:, 2:3] < 0.3, _choose(_CAR_COLOURS, u[:, 3]), _choose(_WALLS, u[:, 3]))
    lit_count = np.where(u[:, 5] < 0.55, np.minimum(1 + (4 * u[:, 6]).astype(np.intp), 4), 0)
    lit_colours = [_choose(_LIT, u[:, 7 + k]) for k in range(4)]
    colours = np.stack([_shade(wall, u[:, 4]), _fixed((45, 50, 65), m)] + lit_colours, axis=1)
    keys = [(a, b, step, pane) for a, b in zip(w.tolist(), h.tolist(), strict=True)]
    return _Spawned(
        u[:, 19] * site.size, keys, colours, (lit_count > 0).astype(np.intp), lit_count, u[:, 11:19].reshape(m, 4, 2)
    )


def _spawn_tree(site: _Site, u: np.ndarray) -> _Spawned:
    sign = np.where(u[:, 0] < 0.5, -1.0, 1.0)
    x = site.centre + sign * (site.outer + (2 + 0.35 * site.size * u[:, 1]) * site.f)
    d = _px((9 + 6 * u[:, 2]) * site.s * site.f, 5)
    trunk_w = _px(1.8 * site.s * site.f, 1)
    keys = list(
        zip(d.tolist(), trunk_w.tolist(), np.maximum(2, np.round(0.55 * d)).astype(np.intp).tolist(), strict=True)
    )
    colours = np.stack([_choose(_LEAVES, u[:, 3]), _fixed((90, 60, 35), len(u))], axis=1)
    return _Spawned(x, keys, colours, np.zeros(len(u), dtype=np.intp))


def _spawn_car(site: _Site, u: np.ndarray) -> _Spawned:
    colour = np.minimum((u[:, 0] * len(_CAR_COLOURS)).astype(np.intp), len(_CAR_COLOURS) - 1)
    w = _px(22 * site.s * site.f * (0.85 + 0.3 * u[:, 1]), 10)
    keys = list(zip(w.tolist(), (u[:, 2] < 0.5).astype(np.intp).tolist(), strict=True))
    lamp = _LAMP_COLOURS[np.minimum((2 * u[:, 5]).astype(np.intp), 1)]  # brake red or indicator amber
    colours = np.stack(
        [
            _shade(_CAR_COLOURS[colour], u[:, 3]),
            _fixed((55, 75, 100), len(u)),
            _fixed((25, 25, 25), len(u)),
            _fixed(_HOUSING, len(u)),
            lamp,
        ],
        axis=1,
    )
    return _Spawned(_on_road(site, u[:, 4]), keys, colours, colour)


def _spawn_pedestrian(site: _Site, u: np.ndarray) -> _Spawned:
    crossing = u[:, 0] < 0.2
    x = np.where(crossing, _on_road(site, 0.0625 + 0.875 * u[:, 1]), _kerb(site, u[:, 2], u[:, 3]))
    h = _px(19 * site.s * site.f * (0.85 + 0.3 * u[:, 4]), 9)
    keys = list(zip(h.tolist(), (u[:, 5] < 0.5).astype(np.intp).tolist(), strict=True))
    colours = np.stack([_choose(_SKINS, u[:, 6]), _choose(_SHIRTS, u[:, 7]), _choose(_TROUSERS, u[:, 8])], axis=1)
    return _Spawned(x, keys, colours, crossing.astype(np.intp))


def _sign(site: _Site, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre x, face size, pole length and the usual three colours (red face, white, pole) of signs."""
    d = _px(10 * site.s * site.f * (0.85 + 0.3 * u[:, 2]), 6)
    pole = np.round(d * (1.6 + 0.8 * u[:, 3])).astype(np.intp)
    face = _shade(_fixed(_SIGN_RED, len(u)), u[:, 4], 0.25)
    colours = np.stack([face, _fixed(_WHITE, len(u)), _choose(_POLE_COLOURS[:2], u[:, 5])], axis=1)
    return _kerb(site, u[:, 0], u[:, 1]), d, pole, colours


def _spawn_stop_sign(site: _Site, u: np.ndarray) -> _Spawned:
    x, d, pole, colours = _sign(site, u)
    return _Spawned(x, list(zip(d.tolist(), pole.tolist(), strict=True)), colours, np.zeros(len(u), dtype=np.intp))


def _spawn_round_sign(site: _Site, u: np.ndarray) -> _Spawned:
    x, d, pole, colours = _sign(site, u)
    keys = list(zip(d.tolist(), pole.tolist(), (u[:, 6] < 0.6).tolist(), strict=True))
    return _Spawned(x, keys, colours, np.zeros(len(u), dtype=np.intp))


def _spawn_traffic_light(site: _Site, u: np.ndarray) -> _Spawned:
    w = _px(6 * site.s * site.f * (0.85 + 0.3 * u[:, 2]), 4)
    pole = np.round(w * (2.5 + 2.0 * u[:, 3])).astype(np.intp)
    lit = np.minimum((3 * u[:, 4]).astype(np.intp), 2)
    housing, unlit, pole_colour = (_fixed(c, len(u)) for c in (_HOUSING, _UNLIT, (75, 78, 80)))
    colours = np.stack([housing, unlit, _LAMP_COLOURS[lit], pole_colour], axis=1)
    return _Spawned(
        _kerb(site, u[:, 0], u[:, 1]), list(zip(w.tolist(), pole.tolist(), lit.tolist(), strict=True)), colours, lit
    )


def _spawn_pole(site: _Site, u: np.ndarray) -> _Spawned:
    h = _px(16 * site.s * site.f * (0.85 + 0.35 * u[:, 2]), 8)
    w = _px(1.5 * site.s * site.f * (0.8 + 0.6 * u[:, 3]), 1)
    keys = list(zip(h.tolist(), w.tolist(), (u[:, 4] < 0.3).tolist(), strict=True))
    return _Spawned(
        _kerb(site, u[:, 0], u[:, 1]), keys, _choose(_POLE_COLOURS, u[:, 5])[:, None], np.zeros(len(u), dtype=np.intp)
    )


def _spawn_lamp_post(site: _Site, u: np.ndarray) -> _Spawned:
    w = _px(5 * site.s * site.f, 3)
    pole = np.round(w * (4 + 2 * u[:, 2])).astype(np.intp)
    colours = np.stack(
        [_fixed((50, 52, 55), len(u)), _fixed((255, 240, 190), len(u)), _fixed((75, 78, 80), len(u))], axis=1
    )
    return _Spawned(
        _kerb(site, u[:, 0], u[:, 1]),
        list(zip(w.tolist(), pole.tolist(), strict=True)),
        colours,
        np.zeros(len(u), dtype=np.intp),
    )


def _spawn_trailer(site: _Site, u: np.ndarray) -> _Spawned:
    """A car in every way but its tail-lamp cluster: only the cluster tells the car task which is which."""
    spawned = _spawn_car(site, u)
    return spawned._replace(colours=spawned.colours[:, :3], code=np.zeros(len(u), dtype=np.intp))


def _spawn_signal_box(site: _Site, u: np.ndarray) -> _Spawned:
    """A traffic light with every lamp dark: the housing on its pole, without a lit lamp."""
    w = _px(6 * site.s * site.f * (0.85 + 0.3 * u[:, 2]), 4)
    pole = np.round(w * (2.5 + 2.0 * u[:, 3])).astype(np.intp)
    colours = np.stack([_fixed(c, len(u)) for c in (_HOUSING, _UNLIT, (75, 78, 80))], axis=1)
    keys = list(zip(w.tolist(), pole.tolist(), strict=True))
    return _Spawned(_kerb(site, u[:, 0], u[:, 1]), keys, colours, np.zeros(len(u), dtype=np.intp))


def _spawn_box(site: _Site, u: np.ndarray) -> _Spawned:
    x = np.where(u[:, 0] < 0.7, _kerb(site, u[:, 1], u[:, 2]), _on_road(site, u[:, 3]))
    w = _px((12 + 12 * u[:, 4]) * site.s * site.f, 8)
    h = np.maximum(5, np.round(w * (0.45 + 0.35 * u[:, 5]))).astype(np.intp)
    colour = _shade(_choose(_CAR_COLOURS, u[:, 6]), u[:, 7])
    keys = list(zip(w.tolist(), h.tolist(), (u[:, 8] < 0.5).tolist(), strict=True))
    return _Spawned(x, keys, np.stack([colour, colour * 0.6], axis=1), np.zeros(len(u), dtype=np.intp))


# kind, cumulative probabilities of 1, 2, ... objects per scene, depth range (None: on the horizon), spawner
_SPAWNS: tuple[
    tuple[int, tuple[float, ...], tuple[float, float] | None, Callable[[_Site, np.ndarray], _Spawned]], ...
] = (
    (BUILDING, (0.15, 0.35, 0.6, 0.85), None, _spawn_building),
    (TREE, (0.45, 0.8), (0.05, 0.9), _spawn_tree),
    (CAR, (0.48, 0.75, 0.9), (0.08, 1.08), _spawn_car),
    (PED, (0.45, 0.75, 0.92), (0.1, 1.05), _spawn_pedestrian),
    (STOP, (0.5, 0.93), (0.25, 1.05), _spawn_stop_sign),
    (LIGHT, (0.5, 0.93), (0.25, 1.05), _spawn_traffic_light),
    (ROUND_SIGN, (0.6, 0.93), (0.25, 1.05), _spawn_round_sign),
    (POLE, (0.45, 0.8), (0.05, 1.05), _spawn_pole),
    (LAMP_POST, (0.72,), (0.2, 1.05), _spawn_lamp_post),
    (BOX, (0.6, 0.9), (0.1, 1.05), _spawn_box),
    (TRAILER, (0.7,), (0.08, 1.08), _spawn_trailer),
    (SIGNAL_BOX, (0.7,), (0.25, 1.05), _spawn_signal_box),
)
_DRAWS = 20  # uniforms per object; the building spawner uses the most


def _place_objects(rng: np.random.Generator, road: np.ndarray, size: int) -> _Placed:
    """Draw every scene's objects, kind by kind for the whole batch, and order them for painting."""
    count = len(road)
    names = ("scene", "kind", "x", "row", "t", "code", "entries", "colours", "keys", "lit_count", "lit_spots")
    columns: dict[str, list] = {k: [] for k in names}
    for kind, cumulative, depth, spawn in _SPAWNS:
        scene = np.repeat(np.arange(count), np.searchsorted(cumulative, rng.random(count), side="right"))
        u = rng.random((len(scene), _DRAWS + 1))
        horizon = road[scene, 0]
        if depth is None:
            t = np.full(len(scene), -1.0)
            row = horizon + np.round(2 * size / 64 * u[:, 0])
        else:
            t = depth[0] + (depth[1] - depth[0]) * u[:, 0]
            row = horizon + t * (size - horizon)
        _, centre, half = _road_at(road[scene], row, size)
        site = _Site(size / 64, size, 0.5 + 0.75 * np.maximum(t, 0), centre, half, half * road[scene, 5])
        spawned = spawn(site, u[:, 1:])
        colours = np.zeros((len(scene), _MAX_PARTS, 3), dtype=np.float32)
        colours[:, : spawned.colours.shape[1]] = spawned.colours
        lit_count = np.zeros(len(scene), dtype=np.intp) if spawned.lit_count is None else spawned.lit_count
        lit_spots = np.zeros((len(scene), 4, 2)) if spawned.lit_spots is None else spawned.lit_spots
        for key, value in (
            ("scene", scene),
            ("kind", np.full(len(scene), kind)),
            ("x", spawned.x),
            ("row", row),
            ("t", t),
            ("code", spawned.code),
            ("colours", colours),
            ("keys", spawned.keys),
            ("lit_count", lit_count),
            ("lit_spots", lit_spots),
            ("entries", _PARTS[kind] + lit_count),
        ):
            columns[key].append(value)
    keys = [k for part in columns.pop("keys") for k in part]
    arrays = {k: np.concatenate(v) for k, v in columns.items()}
    order = np.lexsort((np.arange(len(arrays["t"])), arrays["t"], arrays["scene"]))
    arrays = {k: v[order] for k, v in arrays.items()}
    scene, entries = arrays["scene"], arrays["entries"]
    start = np.cumsum(entries) - entries
    first = scene * _PALETTE + _FIRST_PART + start - start[np.searchsorted(scene, scene)]
    return _Placed(
        scene=scene,
        kind=arrays["kind"],
        x=arrays["x"],
        row=arrays["row"],
        t=arrays["t"],
        code=arrays["code"],
        first=first,
        entries=entries,
        colours=arrays["colours"],
        keys=[keys[i] for i in order.tolist()],
        lit_count=arrays["lit_count"],
        lit_spots=arrays["lit_spots"],
    )


def _paint(
    canvas: np.ndarray, placed: _Placed, palette: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint every object into its scene's canvas and set the palette entries of its parts.

    Entries are handed out in drawing order, so within a scene a nearer object's entries are
    larger than a farther one's (and than the background's): scattering every sprite pixel of
    the batch with a maximum paints them all at once with the right one on top. Returns per
    object the key-part pixels left visible, the sprite's key-part area, and whether the image
    edge cuts the sprite.
    """
    count = len(canvas)
    used = np.arange(_MAX_PARTS) < placed.entries[:, None]
    palette.reshape(-1, 3)[(placed.first[:, None] + np.arange(_MAX_PARTS))[used]] = placed.colours[used]
    sprites = [_SPRITES[kind](*key) for kind, key in zip(placed.kind.tolist(), placed.keys, strict=True)]
    numbers = np.array([sp[:10] for sp in sprites], dtype=np.intp).reshape(-1, 10).T
    height, width, anchor, key_parts, area, rows, cols, margin, step, pane = numbers
    top = np.round(placed.row).astype(np.intp) - height
    left = np.round(placed.x).astype(np.intp) - anchor
    entry = placed.first % _PALETTE
    if sprites:
        pixels = np.concatenate([sp.pixels for sp in sprites], axis=1)
        counts = np.array([sp.pixels.shape[1] for sp in sprites])
        scene, dy, dx, base = (np.repeat(v.astype(np.int32), counts) for v in (placed.scene, top, left, entry - 1))
        _scatter(canvas, scene, pixels[0] + dy, pixels[1] + dx, pixels[2] + base)
    lit_owner, lit_k = np.nonzero(np.arange(4) < placed.lit_count[:, None])
    if len(lit_owner):
        spot, b = placed.lit_spots[lit_owner, lit_k], lit_owner
        wy = top[b] + margin[b] + np.minimum((spot[:, 0] * rows[b]).astype(np.intp), rows[b] - 1) * step[b]
        wx = left[b] + margin[b] + np.minimum((spot[:, 1] * cols[b]).astype(np.intp), cols[b] - 1) * step[b]
        pane_ys, pane_xs = _pane(int(pane[b[0]]))  # the pane size depends only on the image size
        _scatter(
            canvas,
            np.repeat(placed.scene[b], len(pane_ys)),
            (wy[:, None] + pane_ys).ravel(),
            (wx[:, None] + pane_xs).ravel(),
            np.repeat(entry[b] + _PARTS[BUILDING] + lit_k, len(pane_ys)),
        )
    flat = canvas.reshape(count, -1) + (np.arange(count, dtype=np.intp) * _PALETTE)[:, None]
    cumulative = np.concatenate([[0], np.cumsum(np.bincount(flat.ravel(), minlength=count * _PALETTE))])
    shown = cumulative[placed.first + key_parts] - cumulative[placed.first]
    at_edge = (top < 0) | (left < 0) | (top + height > size) | (left + width > size)
    return shown, area, at_edge


def _scatter(canvas: np.ndarray, scene: np.ndarray, y: np.ndarray, x: np.ndarray, entry: np.ndarray) -> None:
    """canvas[scene, y, x] = max(itself, entry) for the points inside the image."""
    size = canvas.shape[1]
    inside = (y >= 0) & (y < size) & (x >= 0) & (x < size)
    np.maximum.at(canvas.reshape(-1), ((scene * size + y) * size + x)[inside], entry[inside].astype(np.uint8))


# ---- sprites: part maps, 0 = transparent, key parts numbered first --------------------------


class _Sprite(NamedTuple):
    """An object's picture, anchored at its bottom centre: pixels as [3, n] rows y, x and part."""

    height: int
    width: int
    anchor: int  # column of the bottom-centre point
    key_parts: int  # parts 1..key_parts are the object itself (not its pole or trunk)
    area: int  # pixels of the key parts
    rows: int  # buildings: the window grid (rows, columns, margin, step, pane); 0 for other kinds
    cols: int
    margin: int
    step: int
    pane: int
    pixels: np.ndarray


def _finish(parts: np.ndarray, key_parts: int, grid: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)) -> _Sprite:
    ys, xs = np.nonzero(parts)
    values = parts[ys, xs]
    return _Sprite(
        parts.shape[0],
        parts.shape[1],
        parts.shape[1] // 2,
        key_parts,
        int(np.count_nonzero(values <= key_parts)),
        *grid,
        np.stack([ys, xs, values]).astype(np.int32),
    )


@cache
def _pane(pane: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(np.ones((pane, pane), dtype=bool))
    return ys, xs


@cache
def _disk(d: int) -> np.ndarray:
    c = (np.arange(d) + 0.5 - d / 2) ** 2
    return c[:, None] + c[None, :] <= (d / 2) ** 2


@cache
def _octagon(d: int) -> np.ndarray:
    c = np.abs(np.arange(d) + 0.5 - d / 2)
    return c[:, None] + c[None, :] <= d / 2 * 1.35


def _centred(parts: np.ndarray, mask: np.ndarray, top: int, value: int) -> None:
    left = (parts.shape[1] - mask.shape[1]) // 2
    region = parts[top : top + mask.shape[0], left : left + mask.shape[1]]
    region[mask] = value


def _bar(parts: np.ndarray, top: int, bottom: int, width: int, value: int) -> None:
    left = (parts.shape[1] - width) // 2
    parts[top:bottom, left : left + width] = value


@cache
def _pedestrian_sprite(h: int, striding: int) -> _Sprite:
    """Head (1), shirt with arms (2), two legs (3)."""
    head = max(2, round(0.22 * h))
    body = max(2, round(0.34 * h))
    body_w = max(2, round(0.32 * h))
    arm = max(1, round(0.08 * h))
    leg = max(1, round(0.12 * h))
    gap = max(1, round((0.16 if striding else 0.06) * h))
    width = max(body_w + 2 * arm, 2 * leg + gap, head)
    parts = np.zeros((h, width), dtype=np.uint8)
    _centred(parts, _disk(head), 0, 1)
    _bar(parts, head, head + body, body_w, 2)
    _bar(parts, head, head + max(2, round(0.85 * body)), body_w + 2 * arm, 2)
    legs_left = (width - 2 * leg - gap) // 2
    parts[head + body :, legs_left : legs_left + leg] = 3
    parts[head + body :, legs_left + leg + gap : legs_left + 2 * leg + gap] = 3
    return _finish(parts, 3)


@cache
def _car_sprite(w: int, hatchback: int) -> _Sprite:
    """Body and cabin (1), windows (2), two wheels (3), and at the rear the tail-lamp cluster: a small
    traffic-light head, dark housing (4) with one lit lamp (5)."""
    wheel = max(3, round(0.24 * w))
    body = max(3, round(0.28 * w))
    cabin = max(3, round(0.2 * w))
    height = cabin + body + (wheel + 1) // 2
    parts = np.zeros((height, w), dtype=np.uint8)
    c0, c1 = (round(0.12 * w), round(0.68 * w)) if hatchback else (round(0.22 * w), round(0.8 * w))
    parts[0:cabin, c0:c1] = 1
    parts[1:cabin, c0 + 1 : c1 - 1] = 2
    if c1 - c0 >= 9:
        parts[1:cabin, (c0 + c1) // 2] = 1
    parts[cabin : cabin + body, :] = 1
    disk = _disk(wheel)
    for centre in (round(0.22 * w), round(0.78 * w)):
        y0, x0 = height - wheel, max(0, min(w - wheel, centre - wheel // 2))
        parts[y0:height, x0 : x0 + wheel][disk] = 3
    lamp = max(1, round(0.09 * w))
    cluster_w, cluster_h = lamp + 2, 3 * lamp + 4
    top = max(0, cabin + body - cluster_h)
    parts[top : top + cluster_h, w - cluster_w : w] = 4
    for k in range(3):
        y = top + 1 + k * (lamp + 1)
        parts[y : y + lamp, w - cluster_w + 1 : w - 1][_disk(lamp)] = 5 if k == 0 else 4
    return _finish(parts, 5)


@cache
def _stop_sprite(d: int, pole: int) -> _Sprite:
    """Red octagon (1) with a white bar (2) on a pole (3)."""
    parts = np.zeros((d + pole, d), dtype=np.uint8)
    _bar(parts, d // 2, d + pole, max(1, round(d / 6)), 3)
    _centred(parts, _octagon(d), 0, 1)
    bar = max(1, round(0.22 * d))
    margin = max(1, round(0.18 * d))
    parts[(d - bar) // 2 : (d - bar) // 2 + bar, margin : d - margin] = 2
    return _finish(parts, 2)


@cache
def _round_sign_sprite(d: int, pole: int, ring: bool) -> _Sprite:
    """Red disk (1), white centre (2) when it is a ring sign, on a pole (3)."""
    parts = np.zeros((d + pole, d), dtype=np.uint8)
    _bar(parts, d // 2, d + pole, max(1, round(d / 6)), 3)
    _centred(parts, _disk(d), 0, 1)
    inner = d - 2 * max(1, round(d / 5))
    if ring and inner >= 2:
        _centred(parts, _disk(inner), (d - inner) // 2, 2)
    return _finish(parts, 2)


@cache
def _light_sprite(w: int, pole: int, lit: int) -> _Sprite:
    """Dark box (1), unlit lamps (2), the lit lamp (3), pole (4)."""
    return _finish(_housing_on_pole(w, pole, lit, pole_part=4), 3)


def _housing_on_pole(w: int, pole: int, lit: int | None, pole_part: int) -> np.ndarray:
    """A traffic-light head's part map: dark box (1), three lamps (2 unlit, 3 the `lit` one), pole."""
    margin = max(1, round(0.15 * w))
    lamp = w - 2 * margin
    box = 3 * lamp + 4 * margin
    parts = np.zeros((box + pole, w), dtype=np.uint8)
    parts[:box] = 1
    _bar(parts, box, box + pole, max(1, round(w / 3)), pole_part)
    disk = _disk(lamp)
    for k in range(3):
        _centred(parts, disk, margin + k * (lamp + margin), 3 if k == lit else 2)
    return parts


@cache
def _trailer_sprite(w: int, hatchback: int) -> _Sprite:
    """A car's body and cabin (1), windows (2) and wheels (3), without the tail-lamp cluster."""
    car = _car_sprite(w, hatchback)
    keep = car.pixels[2] <= 3
    return car._replace(key_parts=3, area=int(np.count_nonzero(car.pixels[2][keep] <= 3)), pixels=car.pixels[:, keep])


@cache
def _signal_box_sprite(w: int, pole: int) -> _Sprite:
    """A traffic light's dark housing (1) with unlit lamps (2), on a pole (3)."""
    return _finish(_housing_on_pole(w, pole, None, pole_part=3), 2)


@cache
def _pole_sprite(h: int, w: int, cap: bool) -> _Sprite:
    """A bare pole (1), sometimes with a wider cap."""
    parts = np.zeros((h, w + 2 if cap else w), dtype=np.uint8)
    _bar(parts, 0, h, w, 1)
    if cap:
        parts[: max(1, round(h / 10))] = 1
    return _finish(parts, 1)


@cache
def _lamp_post_sprite(w: int, pole: int) -> _Sprite:
    """Lamp head (1) with a bright lamp (2) under it, on a pole (3)."""
    head = max(2, round(0.4 * w))
    parts = np.zeros((head + 1 + pole, w), dtype=np.uint8)
    _bar(parts, head, head + 1 + pole, max(1, round(w / 4)), 3)
    parts[:head] = 1
    _bar(parts, head, head + max(1, head // 2), max(1, w - 2), 2)
    return _finish(parts, 3)


@cache
def _tree_sprite(d: int, trunk_w: int, trunk_h: int) -> _Sprite:
    """Round canopy (1) on a trunk (2)."""
    parts = np.zeros((d + trunk_h, d), dtype=np.uint8)
    _bar(parts, d // 2, d + trunk_h, trunk_w, 2)
    _centred(parts, _disk(d), 0, 1)
    return _finish(parts, 2)


@cache
def _box_sprite(w: int, h: int, banded: bool) -> _Sprite:
    """A plain box in a car colour (1), sometimes with a darker band (2)."""
    parts = np.ones((h, w), dtype=np.uint8)
    if banded:
        parts[max(1, h // 3) : max(2, h // 3 + h // 5)] = 2
    return _finish(parts, 2)


@cache
def _building_sprite(w: int, h: int, step: int, pane: int) -> _Sprite:
    """A wall (1) with a grid of dark windows (2); lit windows are painted over it per building."""
    parts = np.ones((h, w), dtype=np.uint8)
    margin = max(1, step // 2)
    rows, cols = max(0, (h - 2 * margin + step - pane) // step), max(0, (w - 2 * margin + step - pane) // step)
    for r in range(rows):
        for c in range(cols):
            parts[margin + r * step : margin + r * step + pane, margin + c * step : margin + c * step + pane] = 2
    return _finish(parts, 2, (max(rows, 1), max(cols, 1), margin, step, pane))


_SPRITES: dict[int, Callable[..., _Sprite]] = {
    PED: _pedestrian_sprite,
    CAR: _car_sprite,
    STOP: _stop_sprite,
    LIGHT: _light_sprite,
    ROUND_SIGN: _round_sign_sprite,
    POLE: _pole_sprite,
    LAMP_POST: _lamp_post_sprite,
    BUILDING: _building_sprite,
    TREE: _tree_sprite,
    BOX: _box_sprite,
    TRAILER: _trailer_sprite,
    SIGNAL_BOX: _signal_box_sprite,
}


# ---- labels -----------------------------------------------------------------------------------


class _Summary:
    """Per scene and object kind, what the visible objects look like: [scenes, kinds] arrays."""

    def __init__(
        self, scenes: int, size: int, placed: _Placed, shown: np.ndarray, at_edge: np.ndarray, visible: np.ndarray
    ):
        slot = (placed.scene * _KINDS + placed.kind)[visible]
        x, t, code = placed.x[visible] / size, placed.t[visible], placed.code[visible]

        def tally(where: np.ndarray | None = None) -> np.ndarray:
            chosen = slot if where is None else slot[where]
            return np.bincount(chosen, minlength=scenes * _KINDS).reshape(scenes, _KINDS)

        def extreme(ufunc: np.ufunc, values: np.ndarray, empty: float) -> np.ndarray:
            out = np.full(scenes * _KINDS, empty)
            ufunc.at(out, slot, values)
            return out.reshape(scenes, _KINDS)

        self.count = tally()
        self.left, self.right = tally(x < 0.5), tally(x >= 0.5)
        self.near, self.far = tally(t >= 0.6), tally(t < 0.4)
        self.hidden, self.edge = tally(shown[visible] < 0.9), tally(at_edge[visible])
        self.code = [tally(code == c) for c in range(3)]
        self.min_x, self.max_x = extreme(np.minimum, x, np.inf), extreme(np.maximum, x, -np.inf)
        self.min_t, self.max_t = extreme(np.minimum, t, np.inf), extreme(np.maximum, t, -np.inf)

    def has(self, kind: int) -> np.ndarray:
        return self.count[:, kind] > 0


def _labels(
    shown_pixels: np.ndarray, area: np.ndarray, at_edge: np.ndarray, placed: _Placed, count: int, size: int
) -> np.ndarray:
    """bool [count, len(_ALL_TASKS)] from what _paint saw of each placed object.

    An object is visible when at least VISIBLE_FRACTION of its key parts' pixels (of the whole
    sprite, so the image edge hides pixels too) survive the nearer objects, and a few pixels do.
    """
    shown = shown_pixels / np.maximum(area, 1)
    visible = (shown >= VISIBLE_FRACTION) & (shown_pixels >= 4 * (size / 64) ** 2)
    summary = _Summary(count, size, placed, shown, at_edge, visible)
    return np.stack([rule(summary) for _, rule in _RULES], axis=1)


def _derived_rules() -> list[tuple[str, Callable[[_Summary], np.ndarray]]]:
    """The extra tasks in their fixed order: a varied few first, then each family in turn."""
    kinds = dict(zip(SEED_TASKS, _SEED_KINDS, strict=True))
    pairs = [(kinds[a], kinds[b], a, b) for i, a in enumerate(SEED_TASKS) for b in SEED_TASKS[i + 1 :]]
    ordered = [(kinds[a], kinds[b], a, b) for a in SEED_TASKS for b in SEED_TASKS if a != b]
    rules: dict[str, Callable[[_Summary], np.ndarray]] = {}

    def add(name: str, rule: Callable[[_Summary], np.ndarray]) -> None:
        rules.setdefault(name, rule)

    def seed_objects(f: _Summary) -> np.ndarray:
        return f.count[:, list(_SEED_KINDS)].sum(axis=1)

    add("car_count_ge2", lambda f: f.count[:, CAR] >= 2)
    add("pedestrian_left_of_car", lambda f: f.min_x[:, PED] < f.max_x[:, CAR])
    add("car_and_stop_sign", lambda f: f.has(CAR) & f.has(STOP))
    add("pedestrian_on_road", lambda f: f.code[1][:, PED] > 0)
    add("traffic_light_red", lambda f: f.code[0][:, LIGHT] > 0)
    add("car_without_pedestrian", lambda f: f.has(CAR) & ~f.has(PED))
    add("pedestrian_count_ge2", lambda f: f.count[:, PED] >= 2)
    add("stop_sign_near", lambda f: f.near[:, STOP] > 0)
    for name, k in kinds.items():
        add(f"{name}_count_ge2", lambda f, k=k: f.count[:, k] >= 2)
    for name in ("pedestrian", "car"):
        add(f"{name}_count_ge3", lambda f, k=kinds[name]: f.count[:, k] >= 3)
    for name, k in kinds.items():
        add(f"{name}_count_eq1", lambda f, k=k: f.count[:, k] == 1)
    for ka, kb, a, b in pairs:
        add(f"{a}_and_{b}", lambda f, ka=ka, kb=kb: f.has(ka) & f.has(kb))
    for ka, kb, a, b in ordered:
        add(f"{a}_without_{b}", lambda f, ka=ka, kb=kb: f.has(ka) & ~f.has(kb))
    for ka, kb, a, b in ordered:
        add(f"{a}_left_of_{b}", lambda f, ka=ka, kb=kb: f.min_x[:, ka] < f.max_x[:, kb])
    for ka, kb, a, b in ordered:
        add(f"{a}_nearer_than_{b}", lambda f, ka=ka, kb=kb: f.max_t[:, ka] > f.min_t[:, kb])
    for ka, kb, a, b in pairs:
        add(f"{a}_or_{b}", lambda f, ka=ka, kb=kb: f.has(ka) | f.has(kb))
    for name, k in kinds.items():
        for what in ("left", "right", "near", "far"):
            add(
                f"{name}_{'on_' if what in ('left', 'right') else ''}{what}",
                lambda f, k=k, w=what: getattr(f, w)[:, k] > 0,
            )
        add(f"{name}_partly_hidden", lambda f, k=k: f.hidden[:, k] > 0)
        add(f"{name}_at_edge", lambda f, k=k: f.edge[:, k] > 0)
    for colour, code in (("red", _CAR_RED), ("blue", _CAR_BLUE), ("white", _CAR_WHITE)):
        add(f"car_{colour}", lambda f, c=code: f.code[c][:, CAR] > 0)
    for lamp, code in (("red", 0), ("amber", 1), ("green", 2)):
        add(f"traffic_light_{lamp}", lambda f, c=code: f.code[c][:, LIGHT] > 0)
    for name, kind in _DISTRACTORS:
        add(name, lambda f, k=kind: f.has(k))
    add("lit_windows", lambda f: f.code[1][:, BUILDING] > 0)
    for k in (2, 3, 4):
        add(f"seed_objects_ge{k}", lambda f, k=k: seed_objects(f) >= k)
    add("empty_street", lambda f: seed_objects(f) == 0)
    for skip in reversed(SEED_TASKS):
        names = [t for t in SEED_TASKS if t != skip]
        add("_and_".join(names), lambda f, ks=[kinds[t] for t in names]: (f.count[:, ks] > 0).all(axis=1))
    add("all_seed_objects", lambda f: (f.count[:, list(_SEED_KINDS)] > 0).all(axis=1))
    return list(rules.items())


_RULES = [
    (name, lambda f, k=kind: f.has(k)) for name, kind in zip(SEED_TASKS, _SEED_KINDS, strict=True)
] + _derived_rules()
_ALL_TASKS = [name for name, _ in _RULES]


def extra_task_names(m: int) -> list[str]:
    """The first `m` derived task names; the list is fixed, so the same m always gives the same names."""
    return _ALL_TASKS[len(SEED_TASKS) : len(SEED_TASKS) + m]
