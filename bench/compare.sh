#!/usr/bin/env bash
# Compares two builds of the ingress in one run on this machine: each drives the same load
# (wxload, CONNECTIONS connections, DURATION) against the same redis-server and Kafka-protocol
# broker, alternately, ROUNDS times, and prints per round the throughput, the ack latency and
# the CPU time each process spent per push (ingest, redis-server, broker, generator), which is
# far steadier than throughput on a shared machine.
#
#   git worktree add /tmp/old HEAD~3 && (cd /tmp/old && cargo build --release --bin ingest)
#   bench/compare.sh /tmp/old/target/release/ingest target/release/ingest
#   RATE=15000 ROUNDS=5 bench/compare.sh OLD NEW   # both at one offered rate
set -euo pipefail
cd "$(dirname "$0")/.."

OLD=${1:?usage: bench/compare.sh OLD_INGEST NEW_INGEST}
NEW=${2:?usage: bench/compare.sh OLD_INGEST NEW_INGEST}
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-256}
ROUNDS=${ROUNDS:-3}
# RATE=N: an open-loop load of N pushes/s instead of a closed loop, so both builds batch alike
# (Redis's and the broker's CPU per push falls as batches grow with throughput).
RATE=${RATE:-}
TOKEN=bench-token
. bench/lib.sh
build wxload

start_kafka cmp
start_redis

measure() { # label, ingest binary
  local port admin pid i0 r0 k0 json
  port=$(free_port)
  admin=$(free_port)
  json=$(mktemp)
  INGEST_LISTEN=127.0.0.1:$port INGEST_ADMIN_LISTEN=127.0.0.1:$admin WECHAT_TOKEN=$TOKEN \
    KAFKA_BROKERS=$BROKERS KAFKA_TOPIC_PREFIX=cmp \
    REDIS_URL=redis://127.0.0.1:$REDIS_PORT/ RUST_LOG=error "$2" &
  pid=$!
  wait_ingest "$port" "$admin"
  $BIN/wxload run --url "http://127.0.0.1:$port/wechat" --token "$TOKEN" --count 2000 --connections 8 --no-progress >/dev/null
  i0=$(ticks "$pid"); r0=$(ticks "$REDIS_PID"); k0=$(ticks "$KAFKA_PID")
  $BIN/wxload run --url "http://127.0.0.1:$port/wechat" --token "$TOKEN" --connections "$CONNECTIONS" \
    ${RATE:+--rate "$RATE"} --duration "$DURATION" --no-progress --json "$json" >/dev/null
  python3 - "$1" "$json" $(($(ticks "$pid") - i0)) $(($(ticks "$REDIS_PID") - r0)) $(($(ticks "$KAFKA_PID") - k0)) <<'PY'
import json, sys
label, path, ingest, redis, kafka = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
d = json.load(open(path))
us = lambda ticks: ticks * 1e4 / max(d["acked"], 1)
print(f"{label:4} {d['throughput_per_s']:8.0f}/s  p50 {d['latency_ms']['p50']:6.2f} p99 {d['latency_ms']['p99']:6.2f} ms  "
      f"failed {d['failed']}  µs/push: ingest {us(ingest):5.1f} redis {us(redis):5.1f} "
      f"broker {us(kafka):4.1f} generator {(d['cpu_seconds'] or 0) * 1e6 / max(d['acked'], 1):5.1f}")
PY
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for round in $(seq "$ROUNDS"); do
  echo "== round $round"
  measure old "$OLD"
  measure new "$NEW"
done
