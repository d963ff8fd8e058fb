"""Batch scoring throughput: `mtl-ray score` (Ray Data, an actor pool) against a plain loop.

Both sides score the same shards with the same model (a checkpoint of `--backbone`, weights as
initialised: inference costs the same) and write the same Parquet columns (id, a probability per
task, model version). The plain side is one process: pyarrow reads each shard's batches, the same
decode (`decode_column`) and `MultiTaskModel.probabilities` score them with torch on every CPU, and a
ParquetWriter writes them. The mtl-ray side is `mtl_ray.serving.score.score`, timed from its call
on a running Ray (start-up left out) to its last file. The sides alternate for `--runs` rounds; the
ratio is mtl-ray ÷ plain images/s. `--concurrency 1,2` also times the actor pool at those sizes.

`--stream-check` instead starts Ray with an object store of `--object-store-mb` and scores ten times
as many bytes of images as fit in it, sampling the memory of every process while it runs: the peak
stays bounded by the stream, not the data.

    python benchmarks/score.py [--n 20000] [--backbone s] [--runs 3] [--concurrency 1,2] [--json FILE]
    python benchmarks/score.py --stream-check [--object-store-mb 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from report import emit

from mtl_ray.config import TrainConfig
from mtl_ray.data.shards import decode_column, open_shard, shard_format
from mtl_ray.data.storage import list_shards
from mtl_ray.data.synth.dataset import synthesize
from mtl_ray.model import checkpoint
from mtl_ray.model.backbones import build
from mtl_ray.model.weighting import get as get_weighting
from mtl_ray.registry.pyfunc import MultiTaskModel
from mtl_ray.serving.score import BATCH_ROWS, score


def make_checkpoint(directory: Path, backbone: str, tasks: list[str], size: int) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build(backbone, len(tasks))
    meta = {
        "epoch": 1,
        "first_epoch": 1,
        "tasks": tasks,
        "backbone": backbone,
        "config": TrainConfig(backbone=backbone).model_dump(),
        "image": {"size": [size, size], "channels": 3, "resize": "letterbox"},
        "metrics": {"mean_auroc": 0.5, "train_images_per_s": 0.0, "val": {t: {"auroc": 0.5} for t in tasks}},
        "history": [],
    }
    weighting, optimizer = get_weighting("equal", len(tasks)), torch.optim.AdamW(model.parameters())
    checkpoint.save(str(directory), model, weighting, optimizer, meta)
    return str(directory)


def plain(data: str, ckpt: str, out: Path, batch_size: int) -> tuple[float, int]:
    """One process: read, decode, score and write every row; (images/s, rows)."""
    torch.set_num_threads(os.cpu_count() or 1)
    state, meta = checkpoint.load(ckpt)
    model = MultiTaskModel()
    model.load(state, meta)
    fs, paths, _ = list_shards(data)
    started, rows = time.perf_counter(), 0
    for k, path in enumerate(paths):
        pf = open_shard(fs, path, path)
        fmt = shard_format(pf, path)
        writer = None
        for batch in pf.iter_batches(batch_size=batch_size, columns=["id", fmt.image_column]):
            probs = model.probabilities(decode_column(batch.column(fmt.image_column), fmt, model.size).images)
            table = pa.table(
                {
                    "id": batch.column("id"),
                    **{t: pa.array(probs[:, j]) for j, t in enumerate(model.tasks)},
                    "model_version": pa.array([ckpt] * batch.num_rows, pa.string()),
                }
            )
            writer = writer or pq.ParquetWriter(out / f"part-{k:05d}.parquet", table.schema)
            writer.write_table(table)
            rows += batch.num_rows
        writer.close()
    return rows / (time.perf_counter() - started), rows


def ours(data: str, ckpt: str, out: Path, batch_size: int, concurrency: int | None) -> float:
    started = time.perf_counter()
    result = score(ckpt, data, str(out), batch_size=batch_size, concurrency=concurrency, overwrite=True)
    return result.rows / (time.perf_counter() - started)


def throughput(args, tmp: Path) -> tuple[str, dict]:
    from mtl_ray.cluster.runtime import ensure_ray

    data = synthesize(f"{tmp}/shards", args.n, image_size=args.image_size, encoding=args.encoding, seed=1).path
    fs, paths, _ = list_shards(data)
    tasks = list(shard_format(open_shard(fs, paths[0], paths[0]), paths[0]).tasks)
    ckpt = make_checkpoint(tmp / "ckpt", args.backbone, tasks, args.image_size)
    ensure_ray()
    sides: dict[str, list[float]] = {"plain": [], "mtl_ray": []}
    for run in range(args.runs):
        (tmp / f"plain{run}").mkdir()
        sides["plain"].append(plain(data, ckpt, tmp / f"plain{run}", args.batch_size)[0])
        sides["mtl_ray"].append(ours(data, ckpt, tmp / "ours", args.batch_size, None))
    pool = {n: ours(data, ckpt, tmp / "ours", args.batch_size, n) for n in args.concurrency}
    ratios = [o / p for o, p in zip(sides["mtl_ray"], sides["plain"], strict=True)]
    summary = {
        "mtl_ray_images_per_s": round(statistics.fmean(sides["mtl_ray"]), 1),
        "plain_images_per_s": round(statistics.fmean(sides["plain"]), 1),
        "ratio": round(statistics.fmean(ratios), 3),
        "ratio_std": round(statistics.stdev(ratios), 3) if len(ratios) > 1 else None,
        "runs": {k: [round(v, 1) for v in vs] for k, vs in sides.items()},
        "concurrency_images_per_s": {str(n): round(v, 1) for n, v in pool.items()},
        "rows": args.n,
        "backbone": args.backbone,
        "encoding": args.encoding,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "cpus": os.cpu_count(),
    }
    line = (
        f"mtl-ray score {summary['mtl_ray_images_per_s']:,.0f} img/s  plain {summary['plain_images_per_s']:,.0f}  "
        f"ratio {summary['ratio']:.3f} ± {summary['ratio_std'] or 0:.3f} over {args.runs} runs  "
        f"(actors: {', '.join(f'{n}: {v:,.0f}' for n, v in pool.items())}; {args.n:,} {args.encoding} "
        f"{args.image_size} px, {args.backbone}, {os.cpu_count()} CPUs)"
    )
    return line, summary


def stream_check(args, tmp: Path) -> tuple[str, dict]:
    """Score ten object stores' worth of raw pixels on a Ray with that small an object store."""
    import psutil
    import ray

    from mtl_ray.cluster.runtime import configure_data

    store = args.object_store_mb * 2**20
    rows = int(10 * store / (args.image_size * args.image_size * 3))
    data = synthesize(f"{tmp}/shards", rows, image_size=args.image_size, seed=2).path
    fs, paths, _ = list_shards(data)
    tasks = list(shard_format(open_shard(fs, paths[0], paths[0]), paths[0]).tasks)
    ckpt = make_checkpoint(tmp / "ckpt", args.backbone, tasks, args.image_size)
    ray.init(object_store_memory=store, logging_level="ERROR", log_to_driver=False, include_dashboard=False)
    configure_data()
    stop = threading.Event()

    def used() -> int:
        """Proportional set size of this process and its children: shared pages counted once."""
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
            except psutil.Error:
                pass
        return total

    baseline = used()
    peak = [baseline]

    def sample() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], used())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    result = score(ckpt, data, str(tmp / "out"), batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    stop.set()
    data_bytes = rows * args.image_size * args.image_size * 3
    summary = {
        "rows": result.rows,
        "data_bytes": data_bytes,
        "object_store_bytes": store,
        "baseline_pss_bytes": baseline,
        "peak_pss_bytes": peak[0],
        "images_per_s": round(result.rows / seconds, 1),
    }
    line = (
        f"scored {result.rows:,} rows ({data_bytes / 2**20:,.0f} MiB of pixels, 10x the {args.object_store_mb} MiB "
        f"object store) in {seconds:.0f} s; memory of every process (PSS) {baseline / 2**20:,.0f} MiB before, "
        f"{peak[0] / 2**20:,.0f} MiB at its peak"
    )
    return line, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="synthetic scenes")
    parser.add_argument("--encoding", default="raw", choices=["raw", "png", "jpeg"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--backbone", default="s")
    parser.add_argument("--batch-size", type=int, default=BATCH_ROWS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",") if x], default=[])
    parser.add_argument("--stream-check", action="store_true")
    parser.add_argument("--object-store-mb", type=int, default=100)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        line, summary = (stream_check if args.stream_check else throughput)(args, Path(tmp))
    emit(line, summary, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
