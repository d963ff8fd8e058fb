"""Training throughput of the mtl-ray path against a hand-written pyarrow → torch loop.

Three sides train the same model with the same batch size and torch thread count on the same
shards, one after the other in this process. The mtl-ray side is `mtl_ray.training.driver.fit` with one Ray
Train worker (Ray Data read → split filter → streaming split → Arrow collate); the plain side reads
the same Parquet files with pyarrow in one process; the third is a torch `DataLoader` over the same
row groups (CPUs − 1 worker processes), reported as `ratio_to_dataloader`. Each side runs `--epochs` epochs and the
best epoch's images/s counts, so Ray's start-up is left out and only the steady per-batch path is
compared. Prints the ratio mtl-ray / plain (1.0 = no overhead).

    python benchmarks/ingest.py [--n 4000] [--backbone s] [--batch-size 64] [--encoding raw|jpeg]
                                [--image-size 64] [--decode auto|tasks|worker] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch
from input import dataloader, plain_batches
from report import compared, emit

from mtl_ray.config import TrainConfig
from mtl_ray.data.shards import open_shard, shard_format
from mtl_ray.data.storage import list_shards
from mtl_ray.data.synth.dataset import synthesize
from mtl_ray.model.backbones import build
from mtl_ray.model.step import train_step
from mtl_ray.model.weighting import get as get_weighting
from mtl_ray.training.driver import fit

REDUCTION = "seed"
SAME_STEP = {"weighting": {"name": "equal"}, "loss_reduction": REDUCTION}
"""The one step every side takes (equal weighting, the seed's reduction), not the product defaults:
GradNorm's extra per-task gradients cost time, and the comparison is about the input path."""


def train_epoch(batches, model, optimizer, weighting, device: torch.device | None = None) -> float:
    """One epoch of `train_step` over `batches` ({"image", "labels"} tensors); returns images/s."""
    device = device or torch.device("cpu")
    seen = 0
    started = time.perf_counter()
    for batch in batches:
        if len(batch["image"]):
            train_step(model, optimizer, weighting, batch["image"], batch["labels"], device, REDUCTION)
            seen += len(batch["image"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - started)


def plain_epoch(fs, paths, tasks, model, optimizer, weighting, batch_size: int, device=None) -> float:
    """One epoch over the train rows, pyarrow batches straight into torch (`input.plain_batches`)."""
    return train_epoch(plain_batches(fs, paths, tasks, batch_size, None), model, optimizer, weighting, device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="synthetic scenes")
    parser.add_argument("--encoding", default="raw", choices=["raw", "png", "jpeg"], help="of the synthetic scenes")
    parser.add_argument("--image-size", type=int, default=64, help="of the synthetic scenes")
    parser.add_argument("--decode", default="auto", choices=["auto", "tasks", "worker"], help="mtl-ray side")
    parser.add_argument("--data", help="use these shards instead of synthesising")
    parser.add_argument("--backbone", default="s")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    parser.add_argument(
        "--shuffle-buffer",
        type=int,
        default=TrainConfig().shuffle_buffer,
        help="mtl-ray side's per-epoch local shuffle (rows; 0 = off); the plain loop reads in file order",
    )
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = (
            args.data
            or synthesize(f"{tmp}/shards", args.n, image_size=args.image_size, encoding=args.encoding, seed=1).path
        )
        fs, paths, _ = list_shards(data)
        fmt = shard_format(open_shard(fs, paths[0], paths[0]), paths[0])
        tasks = list(fmt.tasks)

        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        model = build(args.backbone, len(tasks), channels_last=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        weighting = get_weighting("equal", len(tasks))
        plain = max(
            plain_epoch(fs, paths, tasks, model, optimizer, weighting, args.batch_size) for _ in range(args.epochs)
        )
        loader = dataloader(fs, paths, tasks, args.batch_size)
        peer = max(train_epoch(loader, model, optimizer, weighting) for _ in range(args.epochs))

        cfg = TrainConfig(
            backbone=args.backbone,
            batch_size=args.batch_size,
            epochs=args.epochs,
            workers=1,
            cpus_per_worker=float(args.threads),
            shuffle_buffer=args.shuffle_buffer,
            decode=args.decode,
            **SAME_STEP,
        )
        result = fit(data, config=cfg, storage_path=f"{tmp}/runs", name="ingest-bench")
        ours = max(h["train_images_per_s"] for h in result.history)

    summary, headline = compared(ours, plain, peer)
    summary.update(
        {
            "backbone": args.backbone,
            "encoding": fmt.encoding,
            "image_size": result.image["size"],
            "decode": result.image["decode"],
            "batch_size": args.batch_size,
            "threads": args.threads,
            "epochs": args.epochs,
            "shuffle_buffer": args.shuffle_buffer,
        }
    )
    line = (
        f"{headline}  ({args.backbone}, {fmt.encoding} {result.image['size'][0]} px decoded in "
        f"{result.image['decode']}, batch {args.batch_size}, {args.threads} torch thread(s), shuffle buffer "
        f"{args.shuffle_buffer}, best of {args.epochs} epochs)"
    )
    emit(line, summary, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
