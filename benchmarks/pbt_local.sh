#!/usr/bin/env bash
# Population Based Training end to end on a three-node Ray on this machine (infra/local/stack.sh:
# head plus two worker nodes of MTL_RAY_NODE_CPUS CPUs each, moto_server as S3, MLflow on
# PostgreSQL), submitted as a Ray job the way a user submits to a cluster. A 2-core machine alone
# sizes tune trials one at a time (each keeps a CPU for Ray Data), and PBT needs its population side
# by side: the stack's logical CPUs give it that room.
#
#   bash benchmarks/pbt_local.sh [N_ROWS] [EPOCHS]     # defaults 1500 rows, 6 epochs
#
# A user's cluster takes the same tune command through `mtl-ray submit` (docs/cluster.md).
#
# Four trials: static task weights [1,1,1,1] or [1,1,1,4] (traffic_light labeled on 5 % of rows) and
# a learning rate drawn log-uniformly, perturbed every 2 epochs. The JSON summary lands in $OUT
# (default ./pbt-result.json); printed: the Train runs on storage, those that continued from another
# trial's checkpoint named. Stops only what it started, by pid (stack.sh down).
set -euo pipefail  # needs the project's environment on PATH (source .venv/bin/activate)
cd "$(dirname "$0")/.."
ROWS=${1:-1500}
EPOCHS=${2:-6}
OUT=${OUT:-$PWD/pbt-result.json}
export MTL_RAY_STACK_DIR=${MTL_RAY_STACK_DIR:-$(mktemp -d)}
export MTL_RAY_NODE_CPUS=${MTL_RAY_NODE_CPUS:-2}
bash infra/local/stack.sh up --nodes 3
trap 'bash infra/local/stack.sh down' EXIT
eval "$(bash infra/local/stack.sh env)"
work=$(mktemp -d)
mtl-ray data synth s3://mtl-ray/pbt/data --n "$ROWS" --image-size 32 --label-rate traffic_light=0.05 --seed 0 --quiet
cat > "$work/pbt.yaml" <<EOF
train: {backbone: s, epochs: $EPOCHS, workers: 1}
search:
  weighting: [{name: static, weights: [1, 1, 1, 1]}, {name: static, weights: [1, 1, 1, 4]}]
  lr: {loguniform: [0.0005, 0.01]}
num_samples: 2
scheduler: {name: pbt, perturbation_interval: 2}
registry: {name: pbt-demo, alias: champion}
EOF
started=$(date +%s)
# The tune driver on this machine joins the cluster (as `stack.sh env` says); its trials' Train
# workers run on every node, their data and checkpoints on S3.
RAY_ADDRESS=127.0.0.1:$(cat "$MTL_RAY_STACK_DIR/ray.port") mtl-ray tune --config "$work/pbt.yaml" \
  --data s3://mtl-ray/pbt/data --storage s3://mtl-ray/pbt/runs --name pbt --json "$OUT"
echo "pbt job: $(( $(date +%s) - started )) s"
"$(dirname "$(command -v mtl-ray)")/python" - <<'PY'
import os, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
runs = set()
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="mtl-ray", Prefix="pbt/runs/"):
    runs |= {o["Key"].split("/")[2] for o in page.get("Contents", [])}
exploits = sorted(r for r in runs if "-from-" in r)
print(f"Train runs: {len(runs)}, of which continued from another checkpoint (PBT exploit or restart): {len(exploits)}")
print("\n".join(exploits))
PY
