"""GPU training throughput: the mtl-ray path, a plain pyarrow → torch loop, and the ceiling.

The ceiling is plain torch on GPU-resident tensors (no input pipeline at all); the plain loop
reads the same shards with pyarrow in one process and copies uint8 batches to the GPU; the
mtl-ray side is `mtl_ray.train.fit(gpu=True)` with one worker. Same model, batch size, bf16
autocast and channels_last everywhere. Prints the mtl-ray/plain ratio and the ratio to the
ceiling. Run it on a machine with a GPU (see docs/benchmarks.md for figures):

    python benchmarks/gpu.py [--n 50000] [--backbone resnet18|l] [--batch-size 256] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch
from ingest import dataloader, plain_epoch, train_epoch

from mtl_ray.config import TrainConfig
from mtl_ray.models import build
from mtl_ray.shards import open_shard, shard_format
from mtl_ray.step import train_step
from mtl_ray.storage import list_shards
from mtl_ray.synth import synthesize
from mtl_ray.train import fit
from mtl_ray.weighting import get as get_weighting


def ceiling(
    model, optimizer, weighting, batch_size: int, size: int, tasks: int, device: torch.device, steps: int
) -> float:
    """Images/s with inputs already on the GPU: the most any input pipeline could deliver."""
    images = torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 2, (batch_size, tasks), device=device).float()
    for _ in range(5):
        train_step(model, optimizer, weighting, images, labels, device)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, weighting, images, labels, device)
    torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50000, help="synthetic images (raw pixels)")
    parser.add_argument("--data", help="use these shards instead of synthesising")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--backbone", default="l")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or synthesize(f"{tmp}/shards", args.n, image_size=args.image_size, seed=1).path
        fs, paths, _ = list_shards(data)
        tasks = list(shard_format(open_shard(fs, paths[0], paths[0]), paths[0]).tasks)
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
        cfg = TrainConfig(backbone=args.backbone, batch_size=args.batch_size, epochs=args.epochs, workers=1, gpu=True)
        result = fit(data, config=cfg, storage_path=f"{tmp}/runs", name="gpu-bench")
        ours = max(h["train_images_per_s"] for h in result.history)

    summary = {
        "mtl_ray_images_per_s": round(ours, 1),
        "plain_images_per_s": round(plain, 1),
        "ratio": round(ours / plain, 3),
        "dataloader_images_per_s": round(peer, 1),
        "ratio_to_dataloader": round(ours / peer, 3),
        "ceiling_images_per_s": round(top, 1),
        "ratio_to_ceiling": round(ours / top, 3),
        "device": torch.cuda.get_device_name(),
        "backbone": args.backbone,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
    }
    print(json.dumps(summary, indent=2))
    if args.json and args.json != "-":
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
