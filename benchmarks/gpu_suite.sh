#!/usr/bin/env bash
# Every GPU workload of docs/benchmarks.md in one go, each side by side in its own run (about
# 4-5 minutes on one H200 with 16 cores): the input path alone on that machine's CPUs, then
# training throughput for 64 px raw scenes with backbone `l` and for 224 px JPEG scenes with
# resnet18, decoded every epoch by nvJPEG (`--decode worker`) and with the default (`auto`: these
# scenes fit the object store, so Ray Data decodes them once on the CPUs). One JSON file per workload
# goes to DIR. SCALE multiplies the scene counts (0.02 makes a quick smoke run).
#
#   bash benchmarks/gpu_suite.sh [DIR]
#
# On a GPU machine without Ray installed, from the project root (see ../shared/device/ray_bundle.sh):
#   bash .whl/install.sh && export PYTHONPATH=/tmp/site:$PWD; bash benchmarks/gpu_suite.sh "$OUT"
set -euo pipefail
out=$(mkdir -p "${1:-gpu-results}" && cd "${1:-gpu-results}" && pwd)
cd "$(dirname "$0")"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(cd .. && pwd)"
scale=${SCALE:-1}
count() { python3 -c "print(max(200, int($1 * $scale)))"; }
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT

python3 -m mtl_ray.cli data synth "$data/raw64" --n "$(count 50000)" --encoding raw --quiet
python3 -m mtl_ray.cli data synth "$data/jpeg224" --n "$(count 8000)" --image-size 224 --encoding jpeg --quiet
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true

python3 input.py --data "$data/raw64" --json "$out/input_raw64.json"
python3 gpu.py --data "$data/raw64" --backbone l --json "$out/gpu_raw64_l.json"
python3 gpu.py --data "$data/jpeg224" --image-size 224 --backbone resnet18 --decode worker \
  --json "$out/gpu_jpeg224_resnet18_nvjpeg.json"
python3 gpu.py --data "$data/jpeg224" --image-size 224 --backbone resnet18 \
  --json "$out/gpu_jpeg224_resnet18_auto.json"
