"""Ray Data pipelines from shards to training batches.

Shards are read with `read_parquet` (only the columns training needs, plus each row's file path);
one batch function keeps a source's rows, and — only when the images are encoded or need resizing —
another decodes them once in Ray Data tasks into raw pixels at the training size. Training workers
then turn each Arrow batch into tensors with a zero-copy view (`ShardCollate`), so the per-batch
Python path on the workers is the same small one for every encoding.

An image that cannot be read (null, or bytes Pillow rejects) is marked in a `SKIP_COLUMN`, dropped
by `ShardCollate` and counted in its batch's `skipped`; with `strict` the Ray Data task writes where
and why into a `PROBLEM_COLUMN` and `ShardCollate`, in the training worker, raises it as a
`UserError` naming the shard and row. The batch functions here never raise for bad data: Ray Data
wraps an exception from a task in `UserCodeException`, which reaches the driver without its cause,
while an exception from the worker reaches it whole (`runtime.user_error_in`). Validation decodes
only a sample, so this is where a corrupt image deep inside a shard is met.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from ray.data.collate_fn import ArrowBatchCollateFn

from mtl_ray.data.images import Size
from mtl_ray.data.shards import (
    ID_COLUMN,
    SPLIT_COLUMN,
    ShardFormat,
    decode_column,
    encode_images,
    image_bytes,
    labels_of,
    split_mask,
)
from mtl_ray.errors import UserError

DECODE_BATCH_ROWS = 256
PATH_COLUMN = "path"
"""Added by `read_parquet(include_paths=True)`: the shard each row came from, for error messages."""
SKIP_COLUMN = "__mtl_ray_skip"
"""True for rows whose image cannot be read: dropped and counted by `ShardCollate`."""
PROBLEM_COLUMN = "__mtl_ray_problem"
"""With `strict`: "SHARD: row N: why" for the first unreadable row of a batch, for `ShardCollate` to raise;
with `explain`: "SHARD: why" for every unreadable row, for the scorer to list."""


@dataclass(frozen=True)
class Source:
    """Which rows of which shards: the shard files, their format and an optional split to keep."""

    fs: pafs.FileSystem
    paths: tuple[str, ...]
    fmt: ShardFormat
    split: str | None = None
    has_split_column: bool = True
    labeled_only: bool = False
    """Keep only rows with at least one known label among `fmt.tasks` (single-task baselines)."""
    shuffle: tuple[str, ...] = ()
    """Label columns to permute across rows (Caruana's control: same label rates, no signal)."""
    seed: int = 0
    strict: bool = False
    """An unreadable image is an error naming its shard and row, not a skipped and counted row."""
    ids: frozenset[str] | None = None
    """Keep only the rows with these ids (a label budget of `mtl-ray transfer`)."""
    keep_ids: bool = False
    """Keep the `id` column in the rows (scores are written by row id)."""
    explain: bool = False
    """Say for every unreadable row which shard it is in and why (PROBLEM_COLUMN), to be listed."""


def decoded_format(fmt: ShardFormat, size: Size) -> ShardFormat:
    """The format of batches after decoding: raw RGB pixels at `size` (height, width)."""
    return replace(fmt, encoding="raw", shape=(*size, 3))


def needs_decode(fmt: ShardFormat, size: Size) -> bool:
    return fmt.encoding != "raw" or tuple(fmt.shape) != (*size, 3)


def shown(fs: pafs.FileSystem, path: str) -> str:
    """A path inside `fs` as the user wrote it (s3://bucket/key for S3)."""
    return f"s3://{path}" if fs.type_name == "s3" else path


def locate(fs: pafs.FileSystem, path: str, column: str, value: bytes | None) -> str:
    """'SHARD: row N' for the first row of shard `path` whose image is `value` (None: a null image).

    Ray Data batches do not know their row numbers; this reads the shard's image column again, once,
    when a run is about to stop on that row.
    """
    import pyarrow.parquet as pq

    images = image_bytes(pq.read_table(fs.open_input_file(path), columns=[column]).column(column))
    if value is None:
        found = pc.is_null(images)
    else:
        found = pc.fill_null(pc.equal(images, pa.scalar(value, images.type)), False)
    rows = np.flatnonzero(np.asarray(found))
    return f"{shown(fs, path)}: row {int(rows[0])}" if len(rows) else shown(fs, path)


class SelectRows:
    """Ray Data batch function: a source's rows (its split; labeled rows only if asked) and the
    columns training needs, with null images marked in SKIP_COLUMN (or an error when strict)."""

    def __init__(self, source: Source):
        self.source = source
        self.split = source.split if source.has_split_column else None
        self.columns = [source.fmt.image_column, *source.fmt.tasks, PATH_COLUMN] + (
            [ID_COLUMN] if source.keep_ids else []
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        keep = []
        if self.split is not None:
            keep.append(split_mask(batch.column(SPLIT_COLUMN), self.split))
        if self.source.labeled_only:
            keep.append(functools.reduce(pc.or_, [pc.is_valid(batch.column(t)) for t in self.source.fmt.tasks]))
        if self.source.ids is not None:
            keep.append(pc.is_in(batch.column(ID_COLUMN), value_set=pa.array(sorted(self.source.ids), pa.string())))
        if keep:
            batch = batch.filter(functools.reduce(pc.and_, keep))
        batch = batch.select(self.columns)
        batch = batch.append_column(SKIP_COLUMN, pa.array(np.zeros(batch.num_rows, dtype=bool)))
        if self.source.strict or self.source.explain:
            batch = batch.append_column(PROBLEM_COLUMN, pa.nulls(batch.num_rows, pa.string()))
        nulls = np.array(pc.is_null(batch.column(self.source.fmt.image_column)), dtype=bool)
        return mark_unreadable(
            batch, self.source, nulls, dict.fromkeys(np.flatnonzero(nulls).tolist(), "image is null")
        )


def mark_unreadable(batch: pa.Table, source: Source, bad: np.ndarray, reasons: dict[int, str]) -> pa.Table:
    """`batch` with rows `bad` marked in SKIP_COLUMN; when strict, the first one's shard, row and reason
    written into PROBLEM_COLUMN, and when explaining, every one's shard and reason (`reasons`: by index
    in the batch)."""
    if not bad.any():
        return batch
    skip = np.asarray(batch.column(SKIP_COLUMN)) | bad
    batch = batch.set_column(batch.schema.get_field_index(SKIP_COLUMN), SKIP_COLUMN, pa.array(skip))
    reasons = {row: reason for row, reason in reasons.items() if bad[row]}
    if not (source.strict or source.explain) or not reasons:
        return batch
    problems = batch.column(PROBLEM_COLUMN).to_pylist()
    paths = batch.column(PATH_COLUMN)
    if source.strict:
        row = min(reasons)
        column = source.fmt.image_column
        value = image_bytes(batch.column(column))[row].as_py()
        where = locate(source.fs, paths[row].as_py(), column, value)
        problems[row] = problems[row] or f"{where}: {reasons[row]} (--strict)"
    else:
        for row, reason in reasons.items():
            problems[row] = problems[row] or f"{shown(source.fs, paths[row].as_py())}: {reason}"
    return batch.set_column(
        batch.schema.get_field_index(PROBLEM_COLUMN), PROBLEM_COLUMN, pa.array(problems, pa.string())
    )


class ShuffleLabels:
    """Ray Data batch function: one random row permutation applied to the given label columns."""

    def __init__(self, columns: tuple[str, ...], seed: int):
        self.columns = columns
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch: pa.Table) -> pa.Table:
        order = pa.array(self.rng.permutation(batch.num_rows))
        for name in self.columns:
            batch = batch.set_column(batch.schema.get_field_index(name), name, batch.column(name).take(order))
        return batch


class DecodeToRaw:
    """Ray Data batch function: encoded (or other-sized) images → raw RGB pixels at `size` by `resize`;
    unreadable ones are marked in SKIP_COLUMN (or, when strict, an error naming shard and row)."""

    def __init__(self, source: Source, size: Size, resize: str):
        self.source = source
        self.fmt = source.fmt
        self.out = decoded_format(source.fmt, size)
        self.size = size
        self.resize = resize

    def __call__(self, batch: pa.Table) -> pa.Table:
        column = self.fmt.image_column
        decoded = decode_column(batch.column(column), self.fmt, self.size, resize=self.resize)
        already = np.asarray(batch.column(SKIP_COLUMN))
        batch = mark_unreadable(batch, self.source, decoded.bad & ~already, decoded.reasons)
        return batch.set_column(batch.schema.get_field_index(column), column, encode_images(decoded.images, self.out))


CACHE_FRACTION = 0.1
"""Decoded rows up to this share of the object store are read once and kept there (`cached`)."""


def cached(rows: int, size: Size, object_store_bytes: float) -> bool:
    """Whether `rows` decoded images at `size` are small enough to read once and serve every epoch
    from the object store. Reading is then paid once: a streamed epoch restarts Ray Data's executor
    and its read tasks, a fixed ~0.2 s that dominates epochs of a few thousand images
    (docs/benchmarks.md, "The input path alone")."""
    return rows * size[0] * size[1] * 3 <= CACHE_FRACTION * object_store_bytes


def read(
    source: Source,
    size: Size,
    resize: str = "letterbox",
    passes: int = 1,
    cache: bool = False,
    encoded: bool = False,
):
    """A Ray Dataset of `source`'s rows with raw images at `size` (height, width) and the task labels,
    streamed `passes` times over (one epoch of a small training set made as long as a bigger one's),
    read once and kept in the object store when `cache` (or `passes` > 1). With `encoded` the images
    stay as they are stored, for the training worker to decode (`mtl_ray.device_decode`).

    One read task per shard file, fused with the row selection and decoding: left to itself, Ray
    Data splits each file's output into many ~1 MB blocks and runs the batch functions as one task
    per block, 7× slower on 2 cores."""
    import ray.data

    columns = [source.fmt.image_column, *source.fmt.tasks] + ([SPLIT_COLUMN] if source.has_split_column else [])
    columns += [ID_COLUMN] if source.ids is not None or source.keep_ids else []
    ds = ray.data.read_parquet(
        list(source.paths),
        filesystem=source.fs,
        columns=columns,
        include_paths=True,
        override_num_blocks=len(source.paths),
    )
    ds = ds.map_batches(SelectRows(source), batch_format="pyarrow", batch_size=None)
    if source.shuffle:
        ds = ds.map_batches(
            ShuffleLabels(source.shuffle, source.seed), batch_format="pyarrow", batch_size=DECODE_BATCH_ROWS
        )
    if needs_decode(source.fmt, size) and not encoded:
        ds = ds.map_batches(DecodeToRaw(source, size, resize), batch_format="pyarrow", batch_size=DECODE_BATCH_ROWS)
    ds = ds.drop_columns([PATH_COLUMN])
    if passes == 1 and not cache:
        return ds
    ds = ds.materialize()
    return ds.union(*[ds] * (passes - 1)) if passes > 1 else ds


class ShardCollate(ArrowBatchCollateFn):
    """Arrow batch of raw pixels + label columns → {"image": uint8 [N,H,W,3], "labels": float32 [N,T],
    "skipped": int64 []}, without the rows marked unreadable (counted in "skipped"); a marked row
    with a problem written (strict runs) is raised as a UserError here, in the training worker.
    A batch of encoded images (decoded in the worker, `mtl_ray.device_decode`) has their bytes packed
    ("jpeg", "offsets", "orientation") in place of "image"."""

    def __init__(self, fmt: ShardFormat):
        self.fmt = fmt

    def __call__(self, batch: pa.Table) -> dict:
        import torch  # here, not at module level: Ray Data tasks import this module and never need torch

        skip = batch.column(SKIP_COLUMN)
        skipped = pc.sum(skip.cast(pa.int64())).as_py() or 0
        if skipped and PROBLEM_COLUMN in batch.column_names:
            problems = batch.column(PROBLEM_COLUMN).drop_null()
            raise UserError(problems[0].as_py() if len(problems) else "an unreadable image (--strict)")
        if skipped:
            batch = batch.filter(pc.invert(skip))
        labels = {"labels": torch.from_numpy(labels_of(batch, self.fmt.tasks)), "skipped": torch.tensor(skipped)}
        if self.fmt.encoding != "raw":
            from mtl_ray.training.device_decode import packed

            return {**packed(*encoded_buffers(batch.column(self.fmt.image_column))), **labels}
        images = decode_column(batch.column(self.fmt.image_column), self.fmt).images
        return {"image": torch.from_numpy(np.array(images)), **labels}


def encoded_buffers(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """An encoded image column's bytes as zero-copy numpy views: (values, offsets), row i at
    values[offsets[i]:offsets[i+1]]."""
    arr = image_bytes(column)
    offset_type = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=offset_type)[arr.offset : arr.offset + len(arr) + 1]
    values = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    return values, offsets


class CountSkipped:
    """Iterates collated batches, adding up their "skipped" counts in `skipped`."""

    def __init__(self, batches: Iterable[dict]):
        self.batches = batches
        self.skipped = 0

    def __iter__(self) -> Iterator[dict]:
        for batch in self.batches:
            self.skipped += int(batch["skipped"])
            yield batch
