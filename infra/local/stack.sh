#!/usr/bin/env bash
# A production-like stack on 127.0.0.1: a Ray head with the Jobs API (token auth), moto_server as
# the S3 endpoint, and an MLflow tracking server (sqlite backend, artifacts proxied to S3).
#
#   infra/local/stack.sh up        start what is not running (idempotent)
#   infra/local/stack.sh env       export lines for a client shell: eval "$(infra/local/stack.sh env)"
#   infra/local/stack.sh status    what runs, on which ports
#   infra/local/stack.sh down      stop only what `up` started
#
# State (pids, ports, token, sqlite db, Ray's temp dir) lives in MTL_RAY_STACK_DIR (default
# ./.mtl-ray-stack). Needs `ray`, `moto_server` and `mlflow` on PATH (pip install -e ".[test]").
# Every port is picked free at `up` (Ray's fixed defaults, e.g. the dashboard agent's 52365, would
# collide with another local Ray and leave the Jobs API without an agent).
set -euo pipefail

STATE=${MTL_RAY_STACK_DIR:-$PWD/.mtl-ray-stack}
BUCKET=mtl-ray
CREDS=(AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
alive() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }
port() { cat "$STATE/$1.port"; }
answers() {  # any HTTP answer counts (the Jobs API says 401 without a token)
  python3 - "$1" <<'PY' 2>/dev/null
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError:
    pass
PY
}
wait_http() {
  for _ in $(seq 1 120); do
    answers "$1" && return 0
    sleep 0.5
  done
  echo "stack: $2 did not answer at $1 (log: $STATE/$2.log)" >&2
  return 1
}
ray_tmp() { echo "/tmp/mtl-ray-stack-$(cksum <<<"$STATE" | cut -d' ' -f1)"; }

up_moto() {
  alive moto && return 0
  # moto keeps S3 in memory: a fresh one has no objects, so the registry that pointed at them goes too.
  if alive mlflow; then pkill -TERM -P "$(cat "$STATE/mlflow.pid")" 2>/dev/null || true; kill "$(cat "$STATE/mlflow.pid")"; fi
  rm -f "$STATE/mlflow.pid" "$STATE/mlflow.db"
  free_port > "$STATE/moto.port"
  moto_server -H 127.0.0.1 -p "$(port moto)" > "$STATE/moto.log" 2>&1 &
  echo $! > "$STATE/moto.pid"
  wait_http "http://127.0.0.1:$(port moto)/moto-api/" moto
  env "${CREDS[@]}" python3 -c 'import boto3, sys; boto3.client("s3", endpoint_url=sys.argv[1]).create_bucket(Bucket=sys.argv[2])' \
    "http://127.0.0.1:$(port moto)" "$BUCKET"
}

up_mlflow() {
  alive mlflow && return 0
  free_port > "$STATE/mlflow.port"
  env "${CREDS[@]}" AWS_ENDPOINT_URL="http://127.0.0.1:$(port moto)" MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:$(port moto)" \
    mlflow server --backend-store-uri "sqlite:///$STATE/mlflow.db" --artifacts-destination "s3://$BUCKET/mlflow" \
    --host 127.0.0.1 --port "$(port mlflow)" --workers 1 > "$STATE/mlflow.log" 2>&1 &
  echo $! > "$STATE/mlflow.pid"
  wait_http "http://127.0.0.1:$(port mlflow)/health" mlflow
}

up_ray() {
  if [ -f "$STATE/dashboard.port" ] && answers "http://127.0.0.1:$(port dashboard)/api/version"; then return 0; fi
  [ -f "$STATE/token" ] || python3 -c 'import secrets; print(secrets.token_hex(32))' > "$STATE/token"
  for p in ray dashboard agent client; do free_port > "$STATE/$p.port"; done
  # Jobs read s3:// through moto with these variables (mtl-ray submit forwards the client's too);
  # RAY_API_SERVER_ADDRESS lets Ray Train's placement-group cleaner find this cluster's state API.
  env "${CREDS[@]}" AWS_ENDPOINT_URL="http://127.0.0.1:$(port moto)" RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$(cat "$STATE/token")" \
    RAY_API_SERVER_ADDRESS="http://127.0.0.1:$(port dashboard)" \
    ray start --head --node-ip-address 127.0.0.1 --port "$(port ray)" --dashboard-host 127.0.0.1 \
    --dashboard-port "$(port dashboard)" --dashboard-agent-listen-port "$(port agent)" --ray-client-server-port "$(port client)" \
    --temp-dir "$(ray_tmp)" --disable-usage-stats > "$STATE/ray.log" 2>&1
  wait_http "http://127.0.0.1:$(port dashboard)/api/version" ray
}

cmd_up() {
  mkdir -p "$STATE"
  up_moto
  up_mlflow
  up_ray
  cmd_status
}

cmd_env() {
  [ -f "$STATE/ray.port" ] || { echo "stack: not up (no $STATE); run: $0 up" >&2; exit 1; }
  cat <<EOF
export RAY_ADDRESS=http://127.0.0.1:$(port dashboard)
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN=$(cat "$STATE/token")
export MLFLOW_TRACKING_URI=http://127.0.0.1:$(port mlflow)
export AWS_ENDPOINT_URL=http://127.0.0.1:$(port moto)
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_DEFAULT_REGION=us-east-1
EOF
}

cmd_status() {
  for s in moto mlflow; do
    if alive "$s"; then echo "$s: running on 127.0.0.1:$(port $s) (pid $(cat "$STATE/$s.pid"))"; else echo "$s: stopped"; fi
  done
  if [ -f "$STATE/ray.port" ] && pgrep -f -- "$(ray_tmp)" > /dev/null; then
    echo "ray: running, GCS 127.0.0.1:$(port ray), Jobs API http://127.0.0.1:$(port dashboard)"
  else
    echo "ray: stopped"
  fi
  echo "s3 bucket: s3://$BUCKET (MLflow artifacts under s3://$BUCKET/mlflow)"
  echo "state: S3 lives in moto's memory; up after down starts S3 and the registry empty, together"
}

cmd_down() {
  [ -d "$STATE" ] || { echo "stack: nothing to stop"; return 0; }
  if [ -f "$STATE/ray.port" ]; then
    pkill -TERM -f -- "$(ray_tmp)" 2>/dev/null || true
    for _ in $(seq 1 40); do pgrep -f -- "$(ray_tmp)" > /dev/null || break; sleep 0.25; done
    pkill -KILL -f -- "$(ray_tmp)" 2>/dev/null || true
    rm -f "$STATE/ray.port" "$STATE/dashboard.port" "$STATE/agent.port" "$STATE/client.port"
  fi
  for s in mlflow moto; do
    if alive "$s"; then
      pid=$(cat "$STATE/$s.pid")
      pkill -TERM -P "$pid" 2>/dev/null || true
      kill "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE/$s.pid"
  done
  echo "stack: down"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
