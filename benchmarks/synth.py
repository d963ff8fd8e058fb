"""Synthetic-scene generator throughput: images/s for `mtl-ray data synth`, end to end.

Times `synthesize` (scene generation, encoding and writing Parquet shards) into a temporary
directory, after a small warm-up run, and prints images per second. The figure is per core: the
generator is single-threaded numpy (no BLAS), and Arrow's thread pools are set to one thread
here. For a strict single-core number on a busy machine also pin the process:

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/synth.py [--n 8192] [--image-size 64] [--encoding raw] \
        [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

import pyarrow as pa

from mtl_ray.data.synth.dataset import synthesize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192, help="images to generate (default 8192)")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--encoding", choices=["raw", "png", "jpeg"], default="raw")
    parser.add_argument("--json", metavar="FILE", help="write the result as JSON to FILE ('-' = stdout)")
    args = parser.parse_args(argv)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(f"{tmp}/warmup", min(args.n, 512), image_size=args.image_size, encoding=args.encoding)
        result = synthesize(f"{tmp}/scenes", args.n, image_size=args.image_size, encoding=args.encoding)
    summary = {
        "images_per_s": round(result.images_per_s, 1),
        "n": args.n,
        "image_size": args.image_size,
        "encoding": args.encoding,
        "seconds": round(result.seconds, 3),
        "shards": result.shards,
    }
    print(
        f"synth: {args.n:,} images {args.image_size}x{args.image_size} {args.encoding} in {result.seconds:.2f} s: "
        f"{result.images_per_s:,.0f} images/s (one core)",
        file=sys.stderr if args.json == "-" else sys.stdout,
    )
    if args.json:
        text = json.dumps(summary, indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            with open(args.json, "w") as f:
                f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
