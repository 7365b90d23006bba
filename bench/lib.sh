# Shared by bench/run.sh, bench/chaos.sh and bench/compare.sh (sourced, from the workspace
# root): the release binaries in BIN, results in OUT, the processes a benchmark starts, ended on
# exit, and the helpers to build, start and watch them.

BIN=target/release
OUT=${OUT:-bench/results}
mkdir -p "$OUT"

# build BINARY...: release builds of these binaries of the workspace.
build() { local bin args=(); for bin in "$@"; do args+=(--bin "$bin"); done; cargo build --release --locked "${args[@]}" >&2; }

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

command -v redis-server >/dev/null || { echo "bench: redis-server is required (tests/run installs it)" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 100); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "bench: $1 did not come up" >&2; exit 1; }
# wait_ingest PORT ADMIN_PORT: an ingress answers /healthz on its admin listener (builds before
# the admin listener answered it on the public port: those pass too).
wait_ingest() {
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$2/healthz" >/dev/null 2>&1 && return 0
    curl -fsS "http://127.0.0.1:$1/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "bench: the ingress on port $1 did not come up" >&2
  exit 1
}
# CPU time of a process so far, in clock ticks (1/100 s): utime + stime.
ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }

# start_kafka PREFIX: a Kafka-protocol broker in its own process (librdkafka's mock cluster,
# 8 partitions a topic); sets KAFKA_PID and BROKERS once it has printed its whole address.
start_kafka() {
  local log
  log=$(mktemp)
  "$BIN/wxload" mock-kafka --brokers 1 --topic-prefix "$1" --partitions 8 >"$log" &
  KAFKA_PID=$!
  PIDS+=("$KAFKA_PID")
  for _ in $(seq 300); do
    if [ "$(wc -l <"$log")" -ge 1 ]; then BROKERS=$(head -1 "$log"); return; fi
    sleep 0.1
  done
  echo "bench: no Kafka" >&2
  exit 1
}

# start_redis: a redis-server without persistence on a free port; sets REDIS_PORT, REDIS_PID.
start_redis() {
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
}

# start_redis_cluster: six redis-servers (ports below 55536: a node's cluster bus is its port
# + 10000) joined as three masters with a replica each; sets CLUSTER_URL once the cluster is ok.
start_redis_cluster() {
  local dir seeds=() port
  dir=$(mktemp -d)
  for _ in 1 2 3 4 5 6; do
    port=$(free_port)
    while [ "$port" -ge 55536 ]; do port=$(free_port); done
    (cd "$dir" && exec redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --cluster-enabled yes --cluster-config-file "nodes-$port.conf" --cluster-node-timeout 1000 \
      --cluster-replica-validity-factor 0) >/dev/null &
    PIDS+=($!)
    seeds+=("127.0.0.1:$port")
  done
  for seed in "${seeds[@]}"; do
    for _ in $(seq 100); do redis-cli -p "${seed#*:}" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  redis-cli --cluster create "${seeds[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
  for _ in $(seq 100); do
    redis-cli -p "${seeds[0]#*:}" cluster info | grep -q cluster_state:ok && break
    sleep 0.1
  done
  CLUSTER_URL="redis+cluster://$(IFS=,; echo "${seeds[*]}")"
}
