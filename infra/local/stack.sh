#!/usr/bin/env bash
# A production-like stack on 127.0.0.1: a Ray cluster (a head with the Jobs API and N-1 worker
# nodes, token auth on every node), moto_server as the S3 endpoint, and an MLflow tracking server
# whose runs and registry live in PostgreSQL (artifacts proxied to S3), as infra/mlflow/README.md
# tells production to run it.
#
#   infra/local/stack.sh up [--nodes N]    start what is not running (idempotent); N Ray nodes (default 1)
#   infra/local/stack.sh env               export lines for a client shell: eval "$(infra/local/stack.sh env)"
#   infra/local/stack.sh status            what runs, on which ports
#   infra/local/stack.sh kill-node K       SIGKILL worker node K's processes, as a lost machine (K >= 2)
#   infra/local/stack.sh add-node [--gpus G]  start one more worker node (G GPUs advertised: Ray's resource only)
#   infra/local/stack.sh down              stop only what `up` started
#
# State (pids, ports, token, logs) lives in MTL_RAY_STACK_DIR (default ./.mtl-ray-stack); Ray's temp
# dirs and PostgreSQL's files in /tmp/mtl-ray-stack-<hash of that dir>*. Worker nodes have
# MTL_RAY_NODE_CPUS CPUs each (default 2). With
# MTL_RAY_STACK_PRIVATE=DIR, worker nodes run in their own mount namespace with DIR hidden (an empty
# tmpfs over it; needs root), so that, as on separate machines, they cannot read the head's files
# there. Needs `ray`, `moto_server`, `mlflow`, psycopg2 (pip install -e ".[test]") and PostgreSQL's
# `initdb`/`pg_ctl` on PATH. Every port is picked free (Ray's fixed defaults, e.g. the dashboard
# agent's 52365, would collide with another local Ray and leave the Jobs API without an agent).
set -euo pipefail

STATE=${MTL_RAY_STACK_DIR:-$PWD/.mtl-ray-stack}
NODE_CPUS=${MTL_RAY_NODE_CPUS:-2}
PRIVATE=${MTL_RAY_STACK_PRIVATE:-}
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
ray_tmp() { echo "/tmp/mtl-ray-stack-$(cksum <<<"$STATE" | cut -d' ' -f1)${1:+-node$1}"; }
node_pids() { pgrep -f -- "$(ray_tmp "$1")( |/|$)" || true; }  # a node's processes name its temp dir
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u nobody -- "$@"; else "$@"; fi; }  # initdb refuses root
# PostgreSQL's files, beside Ray's temp dirs: as root it runs as nobody, who may not enter the state dir.
pg_dir() { echo "$(ray_tmp)-postgres"; }

up_postgres() {
  local home pgdata
  home=$(pg_dir)
  pgdata="$home/data"
  if [ -f "$pgdata/postmaster.pid" ] && as_postgres pg_ctl -D "$pgdata" status > /dev/null 2>&1; then return 0; fi
  mkdir -p "$home"
  if [ "$(id -u)" = 0 ]; then chown nobody "$home"; fi
  if [ ! -d "$pgdata" ] && ! as_postgres initdb -D "$pgdata" -U mlflow --auth trust > "$home/initdb.log" 2>&1; then
    echo "stack: PostgreSQL's initdb failed (log: $home/initdb.log)" >&2
    return 1
  fi
  free_port > "$STATE/postgres.port"
  as_postgres pg_ctl -D "$pgdata" -w -l "$home/server.log" \
    -o "-p $(port postgres) -k $home -c listen_addresses=127.0.0.1" start > /dev/null ||
    { echo "stack: PostgreSQL did not start (log: $home/server.log)" >&2; return 1; }
}

psql_do() { psql -h 127.0.0.1 -p "$(port postgres)" -U mlflow -d postgres -q -v ON_ERROR_STOP=1 -c "$1" > /dev/null; }

up_moto() {
  alive moto && return 0
  # moto keeps S3 in memory: a fresh one has no objects, so the registry that pointed at them goes too.
  if alive mlflow; then pkill -TERM -P "$(cat "$STATE/mlflow.pid")" 2>/dev/null || true; kill "$(cat "$STATE/mlflow.pid")"; fi
  rm -f "$STATE/mlflow.pid"
  psql_do "DROP DATABASE IF EXISTS mlflow"
  psql_do "CREATE DATABASE mlflow"
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
    mlflow server --backend-store-uri "postgresql+psycopg2://mlflow@127.0.0.1:$(port postgres)/mlflow" \
    --artifacts-destination "s3://$BUCKET/mlflow" \
    --host 127.0.0.1 --port "$(port mlflow)" --workers 1 > "$STATE/mlflow.log" 2>&1 &
  echo $! > "$STATE/mlflow.pid"
  wait_http "http://127.0.0.1:$(port mlflow)/health" mlflow
}

# The environment every Ray node starts with: jobs read s3:// through moto, token auth on every node,
# RAY_API_SERVER_ADDRESS so Ray Train's placement-group cleaner finds this cluster's state API, and
# 30 s, not 60, for Ray Train to start a worker group: after a lost node it first sizes the group
# with the dead node still counted, and waits this long before sizing it again (docs/cluster.md);
# Ray Train's controller polling its workers every 0.25 s, not 2 (mtl_ray.cluster.runtime.TRAIN_POLL).
node_env() {
  echo "${CREDS[@]}" AWS_ENDPOINT_URL="http://127.0.0.1:$(port moto)" RAY_AUTH_MODE=token \
    RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=30 RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.25 \
    RAY_AUTH_TOKEN="$(cat "$STATE/token")" RAY_API_SERVER_ADDRESS="http://127.0.0.1:$(port dashboard)" \
    RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1
}

up_head() {
  if [ -f "$STATE/dashboard.port" ] && answers "http://127.0.0.1:$(port dashboard)/api/version"; then return 0; fi
  [ -f "$STATE/token" ] || python3 -c 'import secrets; print(secrets.token_hex(32))' > "$STATE/token"
  for p in ray dashboard agent agent_grpc client node_manager object_manager metrics runtime_env; do
    free_port > "$STATE/$p.port"
  done
  # shellcheck disable=SC2046
  env $(node_env) ray start --head --node-ip-address 127.0.0.1 --port "$(port ray)" --num-cpus "$NODE_CPUS" \
    --dashboard-host 127.0.0.1 --dashboard-port "$(port dashboard)" --dashboard-agent-listen-port "$(port agent)" \
    --dashboard-agent-grpc-port "$(port agent_grpc)" --ray-client-server-port "$(port client)" \
    --node-manager-port "$(port node_manager)" --object-manager-port "$(port object_manager)" \
    --metrics-export-port "$(port metrics)" --runtime-env-agent-port "$(port runtime_env)" \
    --temp-dir "$(ray_tmp)" --disable-usage-stats > "$STATE/ray.log" 2>&1
  wait_http "http://127.0.0.1:$(port dashboard)/api/version" ray
  echo 1 > "$STATE/nodes"
}

# Worker node K, in its own mount namespace when MTL_RAY_STACK_PRIVATE hides a folder from it.
start_node() {
  local k=$1 gpus=${2:-0} ports=()
  for p in node_manager object_manager metrics agent agent_grpc runtime_env; do ports+=("$(free_port)"); done
  local cmd=(ray start --address "127.0.0.1:$(port ray)" --node-ip-address 127.0.0.1 --num-cpus "$NODE_CPUS"
    --num-gpus "$gpus" --resources "{\"mtl_node_$k\": 1}" --node-manager-port "${ports[0]}"
    --object-manager-port "${ports[1]}" --metrics-export-port "${ports[2]}" --dashboard-agent-listen-port "${ports[3]}"
    --dashboard-agent-grpc-port "${ports[4]}" --runtime-env-agent-port "${ports[5]}" --temp-dir "$(ray_tmp "$k")"
    --disable-usage-stats)
  if [ -n "$PRIVATE" ]; then
    # shellcheck disable=SC2046
    env $(node_env) unshare --mount --propagation private \
      bash -c 'mount -t tmpfs tmpfs "$0" && exec "$@"' "$PRIVATE" "${cmd[@]}" > "$STATE/node$k.log" 2>&1
  else
    # shellcheck disable=SC2046
    env $(node_env) "${cmd[@]}" > "$STATE/node$k.log" 2>&1
  fi
}

cluster_nodes() {  # alive nodes, as the GCS counts them
  env RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$(cat "$STATE/token")" python3 - "127.0.0.1:$(port ray)" <<'PY' 2>/dev/null
import sys
from ray._raylet import GcsClient
print(sum(n.state == 0 for n in GcsClient(address=sys.argv[1]).get_all_node_info().values()))
PY
}

wait_nodes() {
  for _ in $(seq 1 120); do
    [ "$(cluster_nodes)" -ge "$1" ] && return 0
    sleep 0.5
  done
  echo "stack: $1 Ray nodes did not join (logs: $STATE/node*.log)" >&2
  return 1
}

up_nodes() {
  local want=$1 have
  have=$(cat "$STATE/nodes")
  for k in $(seq $((have + 1)) "$want"); do
    start_node "$k"
    echo "$k" > "$STATE/nodes"
  done
  wait_nodes "$want"
}

cmd_up() {
  local nodes=1
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) nodes=$2; shift 2 ;;
      *) echo "stack: up: unknown argument $1 (expected --nodes N)" >&2; exit 2 ;;
    esac
  done
  mkdir -p "$STATE"
  up_postgres
  up_moto
  up_mlflow
  up_head
  up_nodes "$nodes"
  cmd_status
}

cmd_add_node() {
  local gpus=0
  [ "${1:-}" = "--gpus" ] && gpus=$2
  local k=$(($(cat "$STATE/nodes") + 1))
  local before
  before=$(cluster_nodes)
  start_node "$k" "$gpus"
  echo "$k" > "$STATE/nodes"
  wait_nodes $((before + 1))
  echo "node $k: joined ($NODE_CPUS CPUs, $gpus GPUs)"
}

cmd_kill_node() {
  local k=${1:?usage: $0 kill-node K (a worker node, K >= 2)}
  [ "$k" -ge 2 ] || { echo "stack: kill-node: node 1 is the head; kill worker nodes (2 and up)" >&2; exit 2; }
  local pids
  pids=$(node_pids "$k")
  [ -n "$pids" ] || { echo "stack: node $k: not running" >&2; exit 1; }
  # shellcheck disable=SC2086
  kill -KILL $pids
  echo "node $k: killed ($(wc -w <<<"$pids") processes)"
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
# a driver on this machine joins the cluster itself with RAY_ADDRESS=127.0.0.1:$(port ray)
EOF
}

cmd_status() {
  for s in moto mlflow; do
    if alive "$s"; then echo "$s: running on 127.0.0.1:$(port $s) (pid $(cat "$STATE/$s.pid"))"; else echo "$s: stopped"; fi
  done
  if [ -f "$STATE/postgres.port" ] && as_postgres pg_ctl -D "$(pg_dir)/data" status > /dev/null 2>&1; then
    echo "postgres: running on 127.0.0.1:$(port postgres) (MLflow's runs and registry)"
  else
    echo "postgres: stopped"
  fi
  if [ -f "$STATE/ray.port" ] && [ -n "$(node_pids "")" ]; then
    echo "ray: running, $(cluster_nodes) node(s), GCS 127.0.0.1:$(port ray), Jobs API http://127.0.0.1:$(port dashboard)"
  else
    echo "ray: stopped"
  fi
  echo "s3 bucket: s3://$BUCKET (MLflow artifacts under s3://$BUCKET/mlflow)"
  echo "state: S3 lives in moto's memory; up after down starts S3 and the registry empty, together"
}

stop_node() {  # by the pids whose command lines name the node's temp dir: never a stop of every Ray on the machine
  local pids
  pids=$(node_pids "$1")
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 1 40); do [ -n "$(node_pids "$1")" ] || return 0; sleep 0.25; done
  pids=$(node_pids "$1")
  # shellcheck disable=SC2086
  [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
}

cmd_down() {
  [ -d "$STATE" ] || { echo "stack: nothing to stop"; return 0; }
  if [ -f "$STATE/nodes" ]; then
    for k in $(seq 2 "$(cat "$STATE/nodes")"); do stop_node "$k"; done
    stop_node ""
    rm -f "$STATE/nodes" "$STATE/ray.port" "$STATE/dashboard.port"
  fi
  for s in mlflow moto; do
    if alive "$s"; then
      pid=$(cat "$STATE/$s.pid")
      pkill -TERM -P "$pid" 2>/dev/null || true
      kill "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE/$s.pid"
  done
  if [ -f "$(pg_dir)/data/postmaster.pid" ]; then
    as_postgres pg_ctl -D "$(pg_dir)/data" -m fast stop > /dev/null 2>&1 || true
  fi
  rm -rf "$(pg_dir)"  # the next up starts the registry empty anyway, with S3
  echo "stack: down"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  kill-node) cmd_kill_node "${2:-}" ;;
  add-node) shift; cmd_add_node "$@" ;;
  *) echo "usage: $0 up [--nodes N] | down | status | env | kill-node K | add-node [--gpus G]" >&2; exit 2 ;;
esac
