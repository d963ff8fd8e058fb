"""Ray Data pipelines from shards to training batches.

Shards are read with `read_parquet`; one batch function keeps a source's rows and columns, and —
only when the images are encoded or need resizing — another decodes them once in Ray Data tasks
into raw pixels. Training workers then turn each Arrow batch into tensors with a zero-copy view
(`ShardCollate`), so the per-batch Python path on the workers is the same small one for every
encoding.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from ray.data.collate_fn import ArrowBatchCollateFn

from mtl_ray.shards import SPLIT_COLUMN, ShardFormat, decode_images, encode_images, labels_of, split_mask

DECODE_BATCH_ROWS = 256


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


def decoded_format(fmt: ShardFormat, size: int) -> ShardFormat:
    """The format of batches after decoding: raw RGB pixels at size×size."""
    return replace(fmt, encoding="raw", shape=(size, size, 3))


def needs_decode(fmt: ShardFormat, size: int) -> bool:
    return fmt.encoding != "raw" or tuple(fmt.shape) != (size, size, 3)


class SelectRows:
    """Ray Data batch function: a source's rows (its split; labeled rows only if asked) and columns."""

    def __init__(self, source: Source):
        self.split = source.split if source.has_split_column else None
        self.labeled_only = source.labeled_only
        self.tasks = source.fmt.tasks
        self.columns = [source.fmt.image_column, *source.fmt.tasks]

    def __call__(self, batch: pa.Table) -> pa.Table:
        keep = []
        if self.split is not None:
            keep.append(split_mask(batch.column(SPLIT_COLUMN), self.split))
        if self.labeled_only:
            keep.append(functools.reduce(pc.or_, [pc.is_valid(batch.column(t)) for t in self.tasks]))
        if keep:
            batch = batch.filter(functools.reduce(pc.and_, keep))
        return batch.select(self.columns)


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
    """Ray Data batch function: encoded (or other-sized) images → raw size×size RGB pixels."""

    def __init__(self, fmt: ShardFormat, size: int):
        self.fmt = fmt
        self.out = decoded_format(fmt, size)
        self.size = size

    def __call__(self, batch: pa.Table) -> pa.Table:
        images = decode_images(batch.column(self.fmt.image_column), self.fmt, self.size, where="decode")
        column = encode_images(images, self.out)
        return batch.set_column(batch.schema.get_field_index(self.fmt.image_column), self.fmt.image_column, column)


def read(source: Source, size: int):
    """A Ray Dataset of `source`'s rows with raw size×size images and the task label columns."""
    import ray.data

    ds = ray.data.read_parquet(list(source.paths), filesystem=source.fs)
    ds = ds.map_batches(SelectRows(source), batch_format="pyarrow", batch_size=None)
    if source.shuffle:
        ds = ds.map_batches(
            ShuffleLabels(source.shuffle, source.seed), batch_format="pyarrow", batch_size=DECODE_BATCH_ROWS
        )
    if needs_decode(source.fmt, size):
        ds = ds.map_batches(DecodeToRaw(source.fmt, size), batch_format="pyarrow", batch_size=DECODE_BATCH_ROWS)
    return ds


class ShardCollate(ArrowBatchCollateFn):
    """Arrow batch of raw pixels + label columns → {"image": uint8 [N,H,W,3], "labels": float32 [N,T]}."""

    def __init__(self, fmt: ShardFormat):
        self.fmt = fmt

    def __call__(self, batch: pa.Table) -> dict:
        import torch  # here, not at module level: Ray Data tasks import this module and never need torch

        images = decode_images(batch.column(self.fmt.image_column), self.fmt)
        labels = labels_of(batch, self.fmt.tasks)
        return {"image": torch.from_numpy(np.array(images)), "labels": torch.from_numpy(labels)}
