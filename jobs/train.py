"""Ray job entry point: `mtl-ray train` from a job config (see jobs/configs and docs/cluster.md).

ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/driving.yaml
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the uploaded working dir holds mtl_ray

from mtl_ray.cli.jobs import job_main

if __name__ == "__main__":
    sys.exit(job_main("train"))
