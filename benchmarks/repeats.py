"""Does the same command repeat its run? `mtl-ray train` with defaults, N times on each world's data.

Each world of benchmarks/mtl_quality.py (data seed = `--seed`) is trained N times by the same
command, `mtl-ray train --data DATA` with no config (2 workers, training seed 0), one after the
other. Printed per world: each run's mean validation AUROC, last training loss and wall time, and
the largest difference in mean AUROC between the runs. Load the machine with other work while it
runs to check that timing does not decide the result.

    python benchmarks/repeats.py [--worlds synthetic,digits,hf] [--repeats 3] [--seed 0] [--n 4000] [--json FILE]

About 3 minutes per run on 2 idle CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from mtl_quality import make
from report import emit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", default="synthetic,digits,hf")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="the data's seed")
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    out, lines = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for world in args.worlds.split(","):
            data = make(world, os.path.join(tmp, world), args.n, args.seed)
            runs = []
            for k in range(args.repeats):
                summary = os.path.join(tmp, f"{world}-{k}.json")
                command = ["mtl-ray", "train", "--data", data, "--storage", os.path.join(tmp, "runs"), "--quiet"]
                subprocess.run([*command, "--json", summary], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
                with open(summary) as f:
                    result = json.load(f)
                runs.append(
                    {
                        "mean_auroc": result["mean_auroc"],
                        "last_loss": result["history"][-1]["train_loss"],
                        "seconds": result["seconds"],
                    }
                )
            spread = max(r["mean_auroc"] for r in runs) - min(r["mean_auroc"] for r in runs)
            out[world] = {"runs": runs, "mean_auroc_spread": spread}
            lines.append(
                f"{world:<10} mean AUROC "
                + ", ".join(f"{r['mean_auroc']:.6f} (loss {r['last_loss']:.5f}, {r['seconds']:.0f} s)" for r in runs)
                + f"; largest difference {spread:.6f}"
            )
    emit("\n".join(lines), out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
