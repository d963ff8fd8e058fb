"""GPU training throughput: the mtl-ray path against a plain loop, a DataLoader and the ceiling.

The ceiling is plain torch on GPU-resident tensors (no input pipeline at all); the plain loop
reads the same shards with pyarrow in one process (decoding JPEG there with Pillow) and copies
uint8 batches to the GPU; the DataLoader reads the same row groups in CPUs − 1 worker processes
with pinned memory; the mtl-ray side is `mtl_ray.training.driver.fit(gpu=True)` with one worker, decoding
JPEG shards on the GPU (nvJPEG) by default. Same model, batch size, bf16 autocast and
channels_last everywhere. For JPEG shards it first checks nvJPEG's pixels against the CPU path's
on one batch (`nvjpeg_mean_abs_diff`, `nvjpeg_max_abs_diff`; exit 1 beyond `DECODE_TOLERANCE`).
Run it on a machine with a GPU (docs/benchmarks.md has figures; benchmarks/gpu_suite.sh runs
every GPU workload):

    python benchmarks/gpu.py [--n 50000] [--backbone l|resnet18] [--encoding raw|jpeg]
                             [--image-size 64] [--batch-size 256] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from ingest import REDUCTION, SAME_STEP, plain_epoch, train_epoch
from input import dataloader
from report import compared, emit

from mtl_ray.config import TrainConfig
from mtl_ray.data.shards import decode_column, open_shard, shard_format
from mtl_ray.data.storage import list_shards
from mtl_ray.data.synth.dataset import synthesize
from mtl_ray.model.backbones import build
from mtl_ray.model.step import train_step
from mtl_ray.model.weighting import get as get_weighting
from mtl_ray.training import device_decode
from mtl_ray.training.dataset import encoded_buffers
from mtl_ray.training.driver import fit

DECODE_TOLERANCE = 2.0
"""Largest mean absolute difference (levels of 255) allowed between nvJPEG's pixels and the CPU path's."""


def ceiling(
    model, optimizer, weighting, batch_size: int, size: int, tasks: int, device: torch.device, steps: int
) -> float:
    """Images/s with inputs already on the GPU: the most any input pipeline could deliver."""
    images = torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 2, (batch_size, tasks), device=device).float()
    for _ in range(5):
        train_step(model, optimizer, weighting, images, labels, device, REDUCTION)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, weighting, images, labels, device, REDUCTION)
    torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - started)


def nvjpeg_difference(fs, path: str, rows: int, device: torch.device) -> tuple[float, int]:
    """(mean, max) absolute pixel difference between the GPU decode (`device_decode.decode`) and the
    CPU path (`decode_column`) over the first `rows` images of shard `path`, at their own size."""
    fmt = shard_format(open_shard(fs, path, path), path)
    column = pq.read_table(fs.open_input_file(path), columns=[fmt.image_column]).column(fmt.image_column)[:rows]
    cpu = decode_column(column, fmt)
    batch = {
        **device_decode.packed(*encoded_buffers(column)),
        "labels": torch.zeros((len(column), 0)),
        "skipped": torch.tensor(0),
    }
    size = tuple(cpu.images.shape[1:3])
    gpu = next(iter(device_decode.DecodeOnDevice([batch], size, "letterbox", device)))
    assert int(gpu["skipped"]) == 0 and not cpu.bad.any()
    diff = np.abs(gpu["image"].cpu().numpy().astype(int) - cpu.images.astype(int))
    return float(diff.mean()), int(diff.max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50000, help="synthetic scenes")
    parser.add_argument("--data", help="use these shards instead of synthesising")
    parser.add_argument("--encoding", default="raw", choices=["raw", "png", "jpeg"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--backbone", default="l")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--decode", default="auto", choices=["auto", "tasks", "worker"], help="mtl-ray side")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")

    check = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = (
            args.data
            or synthesize(f"{tmp}/shards", args.n, image_size=args.image_size, encoding=args.encoding, seed=1).path
        )
        fs, paths, _ = list_shards(data)
        fmt = shard_format(open_shard(fs, paths[0], paths[0]), paths[0])
        tasks = list(fmt.tasks)
        if fmt.encoding == "jpeg" and device_decode.nvjpeg() is not None:
            mean, worst = nvjpeg_difference(fs, paths[0], args.batch_size, device)
            check = {"nvjpeg_mean_abs_diff": round(mean, 3), "nvjpeg_max_abs_diff": worst}
        model = build(args.backbone, len(tasks), channels_last=True).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        weighting = get_weighting("equal", len(tasks))
        top = ceiling(model, optimizer, weighting, args.batch_size, args.image_size, len(tasks), device, steps=200)
        plain = max(
            plain_epoch(fs, paths, tasks, model, optimizer, weighting, args.batch_size, device)
            for _ in range(args.epochs)
        )
        loader = dataloader(fs, paths, tasks, args.batch_size)
        peer = max(train_epoch(loader, model, optimizer, weighting, device) for _ in range(args.epochs))
        cfg = TrainConfig(
            backbone=args.backbone,
            batch_size=args.batch_size,
            epochs=args.epochs,
            workers=1,
            gpu=True,
            decode=args.decode,
            **SAME_STEP,
        )
        result = fit(data, config=cfg, storage_path=f"{tmp}/runs", name="gpu-bench")
        ours = max(h["train_images_per_s"] for h in result.history)

    summary, headline = compared(ours, plain, peer, ceiling=top)
    summary.update(
        {
            **check,
            "device": torch.cuda.get_device_name(),
            "backbone": args.backbone,
            "batch_size": args.batch_size,
            "encoding": fmt.encoding,
            "image_size": args.image_size,
            "decode": result.image["decode"],
            "dataloader_workers": loader.num_workers,
        }
    )
    line = (
        f"{headline}  ({args.backbone}, {fmt.encoding} {args.image_size} px decoded in {result.image['decode']}, "
        f"DataLoader {loader.num_workers} workers, batch {args.batch_size}, best of {args.epochs} epochs)"
    )
    emit(line, summary, args.json)
    if check and check["nvjpeg_mean_abs_diff"] > DECODE_TOLERANCE:
        print(f"nvJPEG pixels differ from the CPU path's by {check['nvjpeg_mean_abs_diff']} levels", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
