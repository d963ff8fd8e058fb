"""Rows of shards, read outside Ray: the rule that places a row by its id, and a plain reader.

`row_hash` is the one rule by which a row's id decides where it goes: `hashed_split` (the `val` split
`mtl-ray data convert --val-fraction` makes) and `by_row_hash` (the nested label budgets of
`mtl-ray transfer`) both use it, so a rerun, or a dataset with more images, keeps every row where it
was. `shard_rows` is the reader for the few thousand rows that `predict --data` and the alias gate
score in one process.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

import numpy as np

from mtl_ray.data.images import encode_image
from mtl_ray.data.shards import ID_COLUMN, SPLIT_COLUMN, decode_images, image_bytes, labels_of, open_shard, split_mask
from mtl_ray.data.validate import validate


def _digest(row_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(str(row_id).encode(), digest_size=8).digest(), "big")


def row_hash(row_id: str) -> float:
    """A row id's place in [0, 1), the same on every machine and run."""
    return _digest(row_id) / 2**64


def hashed_split(row_id: str, val_fraction: float) -> str:
    """'val' for a stable `val_fraction` of row ids, else 'train'."""
    return "val" if row_hash(row_id) < val_fraction else "train"


def by_row_hash(ids: Iterable[str]) -> list[str]:
    """`ids` in the order of their `row_hash`: the first k of them are a deterministic sample of k,
    nested across k."""
    return sorted(ids, key=_digest)


def shard_rows(
    path: str, limit: int | None = None, split: str | None = None, tasks: tuple[str, ...] = ()
) -> tuple[list[str], list[bytes], np.ndarray]:
    """Ids, encoded image bytes (PNG for raw shards) and labels [N, len(tasks)] (NaN = unknown) of
    the first `limit` rows of the shards at `path`, only rows of `split` when given."""
    report = validate(path)
    report.raise_if_unusable(need_tasks=False)
    fmt = report.fmt
    ids: list[str] = []
    images: list[bytes] = []
    labels: list[np.ndarray] = []
    for shard in report.paths:
        if limit is not None and len(images) >= limit:
            break
        pf = open_shard(report.fs, shard, shard)
        names = pf.schema_arrow.names
        extra = [c for c in (ID_COLUMN, SPLIT_COLUMN) if c in names]
        table = pf.read(columns=[fmt.image_column, *tasks, *extra])
        if split is not None and SPLIT_COLUMN in names:
            table = table.filter(split_mask(table.column(SPLIT_COLUMN), split))
        if limit is not None:
            table = table.slice(0, limit - len(images))
        if fmt.encoding == "raw":
            images.extend(
                encode_image(im, "png") for im in decode_images(table.column(fmt.image_column), fmt, where=shard)
            )
        else:
            images.extend(v.as_py() for v in image_bytes(table.column(fmt.image_column)))
        ids.extend(
            table.column(ID_COLUMN).to_pylist()
            if ID_COLUMN in names
            else [f"{os.path.basename(shard)}#{i}" for i in range(table.num_rows)]
        )
        labels.append(labels_of(table, tasks, where=shard) if tasks else np.zeros((table.num_rows, 0)))
    return ids, images, np.concatenate(labels) if labels else np.zeros((0, len(tasks)))
