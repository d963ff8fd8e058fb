"""The input path alone: images/s delivered to a consumer that does nothing, mtl-ray against its peers.

Three sides read the training rows of the same shards into uint8 image and float32 label tensors,
batch by batch, one after the other in this process:

- **mtl-ray**: `mtl_ray.training.dataset.read` (Ray Data `read_parquet` → row selection → decode when
  needed; read once and kept in the object store when it is small, as training decides with
  `dataset.cached`) → `iter_torch_batches(collate_fn=ShardCollate)`, as a Ray Train worker
  consumes it;
- **plain**: a single-process loop, pyarrow `iter_batches` → split filter → numpy → torch;
- **DataLoader**: a torch `DataLoader` over the same Parquet row groups, `num_workers` = CPUs − 1
  (at least 1), pinned memory when CUDA is there — the tool a user would pick instead.

Each side runs `--epochs` passes and the best counts (start-up left out); mtl-ray's first pass,
which includes its read into the object store when cached, is reported on its own. `--stream`
streams every epoch from the shards instead. Prints images/s, MB/s and the ratios mtl-ray / plain
and mtl-ray / DataLoader.

    python benchmarks/input.py [--n 8000] [--batch-size 256] [--encoding raw] [--stream] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import ray
import torch
from report import compared, emit

from mtl_ray.cluster.runtime import configure_data, ensure_ray
from mtl_ray.data.shards import SPLIT_COLUMN, decode_column, labels_of, open_shard, shard_format, split_mask
from mtl_ray.data.storage import list_shards
from mtl_ray.data.synth.dataset import synthesize
from mtl_ray.training.dataset import ShardCollate, Source, cached, decoded_format, read


def timed(batches) -> tuple[float, int]:
    """(seconds, images) to pull every batch of `batches` (dicts with an "image" tensor)."""
    seen = 0
    started = time.perf_counter()
    for batch in batches:
        seen += len(batch["image"])
    return time.perf_counter() - started, seen


def plain_batches(fs, paths: list[str], tasks: list[str], batch_size: int, size):
    for path in paths:
        pf = open_shard(fs, path, path)
        fmt = shard_format(pf, path)
        for batch in pf.iter_batches(batch_size=batch_size, columns=[fmt.image_column, SPLIT_COLUMN, *tasks]):
            batch = batch.filter(split_mask(batch.column(SPLIT_COLUMN), "train"))
            images = decode_column(batch.column(fmt.image_column), fmt, size).images
            yield {"image": torch.from_numpy(np.asarray(images)), "labels": torch.from_numpy(labels_of(batch, tasks))}


def dataloader(fs, paths: list[str], tasks: list[str], batch_size: int, size=None) -> torch.utils.data.DataLoader:
    """The peer a user would pick: a torch DataLoader over the same row groups (`RowGroups`),
    CPUs − 1 worker processes (at least 1), pinned memory when CUDA is there."""
    return torch.utils.data.DataLoader(
        RowGroups(fs, paths, tasks, batch_size, size),
        batch_size=None,
        num_workers=max(1, (os.cpu_count() or 2) - 1),
        pin_memory=torch.cuda.is_available(),
        persistent_workers=True,
    )


class RowGroups(torch.utils.data.IterableDataset):
    """The train rows of every (shard, row group), split between DataLoader workers, in batches."""

    def __init__(self, fs, paths: list[str], tasks: list[str], batch_size: int, size):
        self.fs, self.paths, self.tasks, self.batch_size, self.size = fs, paths, tasks, batch_size, size

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        index, count = (info.id, info.num_workers) if info else (0, 1)
        groups = [(p, g) for p in self.paths for g in range(open_shard(self.fs, p, p).num_row_groups)]
        for path, group in groups[index::count]:
            pf = open_shard(self.fs, path, path)
            fmt = shard_format(pf, path)
            table = pf.read_row_group(group, columns=[fmt.image_column, SPLIT_COLUMN, *self.tasks])
            table = table.filter(split_mask(table.column(SPLIT_COLUMN), "train"))
            for start in range(0, table.num_rows, self.batch_size):
                part = table.slice(start, self.batch_size)
                images = decode_column(part.column(fmt.image_column), fmt, self.size).images
                yield {
                    "image": torch.from_numpy(np.asarray(images)),
                    "labels": torch.from_numpy(labels_of(part, self.tasks)),
                }


def best(make, epochs: int) -> tuple[float, int]:
    """Best images/s over `epochs` passes of `make()`, and the images per pass."""
    runs = [timed(make()) for _ in range(epochs)]
    return max(n / s for s, n in runs), runs[0][1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8000, help="synthetic 64 px scenes")
    parser.add_argument("--data", help="use these shards instead of synthesising")
    parser.add_argument("--encoding", default="raw", choices=["raw", "png", "jpeg"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--stream", action="store_true", help="mtl-ray side: never cache, stream every epoch")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or synthesize(f"{tmp}/shards", args.n, encoding=args.encoding, seed=1).path
        fs, paths, _ = list_shards(data)
        fmt = shard_format(open_shard(fs, paths[0], paths[0]), paths[0])
        tasks = list(fmt.tasks)
        size = tuple(fmt.shape[:2]) if fmt.shape else (64, 64)

        plain, rows = best(lambda: plain_batches(fs, paths, tasks, args.batch_size, size), args.epochs)
        loader = dataloader(fs, paths, tasks, args.batch_size, size)
        peer, _ = best(lambda: iter(loader), args.epochs)

        ensure_ray()
        configure_data()
        cache = not args.stream and cached(rows, size, ray.cluster_resources().get("object_store_memory", 0))
        collate = ShardCollate(decoded_format(fmt, size))
        started = time.perf_counter()
        dataset = read(Source(fs, tuple(paths), fmt, "train"), size, cache=cache)
        epoch = lambda: dataset.iter_torch_batches(batch_size=args.batch_size, collate_fn=collate)  # noqa: E731
        first = timed(epoch())[1] / (time.perf_counter() - started)
        ours, _ = best(epoch, args.epochs)

    image_mb = size[0] * size[1] * 3 / 1e6
    summary, headline = compared(ours, plain, peer)
    summary.update(
        {
            "mtl_ray_mb_per_s": round(ours * image_mb, 1),
            "mtl_ray_first_epoch_images_per_s": round(first, 1),
            "cached": cache,
            "rows": rows,
            "encoding": fmt.encoding,
            "image_size": list(size),
            "batch_size": args.batch_size,
            "dataloader_workers": loader.num_workers,
            "epochs": args.epochs,
        }
    )
    line = (
        f"{headline}  (mtl-ray {summary['mtl_ray_mb_per_s']:,.0f} MB/s, first epoch {first:,.0f} img/s, "
        f"{'cached' if cache else 'streamed'}; {rows:,} {fmt.encoding} {size[0]}x{size[1]} train rows, "
        f"DataLoader {loader.num_workers} worker(s), batch {args.batch_size}, best of {args.epochs})"
    )
    emit(line, summary, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
