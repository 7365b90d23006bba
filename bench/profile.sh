#!/usr/bin/env bash
# Where an ingress spends its CPU under load: `perf record` (DWARF call graphs) of one ingest
# binary while wxload drives it against a real redis-server and a Kafka-protocol broker, then
# a flame graph (SVG, inferno) and the share of its samples by component, attributed by the
# innermost frame that names one (bench/components.py), the kernel's split into waking and
# sleeping threads against everything else.
#
#   bench/profile.sh LABEL [INGEST]     # INGEST defaults to target/release/ingest
#   RATE=15000 DURATION=8s bench/profile.sh after
#
# Writes bench/results/profile-LABEL.svg, profile-LABEL.txt (the breakdown) and, outside the
# repository, /tmp/profile-LABEL.folded (the collapsed stacks). Needs perf (Debian's
# linux-perf, and perf_event_paranoid ≤ 1 or root) and inferno (`cargo install inferno`).
set -euo pipefail
cd "$(dirname "$0")/.."

LABEL=${1:?usage: bench/profile.sh LABEL [INGEST]}
INGEST=${2:-target/release/ingest}
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-256}
RATE=${RATE:-}
FREQ=${FREQ:-499}
TOKEN=bench-token
command -v perf >/dev/null || { echo "bench/profile.sh: perf is required (apt-get install linux-perf)" >&2; exit 1; }
command -v inferno-flamegraph >/dev/null || { echo "bench/profile.sh: inferno is required (cargo install inferno)" >&2; exit 1; }
. bench/lib.sh
build wxload

start_kafka "prof$$"
start_redis
port=$(free_port)
admin=$(free_port)
INGEST_LISTEN=127.0.0.1:$port INGEST_ADMIN_LISTEN=127.0.0.1:$admin WECHAT_TOKEN=$TOKEN \
  KAFKA_BROKERS=$BROKERS KAFKA_TOPIC_PREFIX=prof$$ \
  REDIS_URL=redis://127.0.0.1:$REDIS_PORT/ RUST_LOG=error "$INGEST" &
pid=$!
PIDS+=("$pid")
wait_ingest "$port" "$admin"
# Warm up: connections, the producer's metadata, the allocator's pages.
$BIN/wxload run --url "http://127.0.0.1:$port/wechat" --token "$TOKEN" --count 2000 --connections 8 --no-progress >/dev/null

data=$(mktemp /tmp/profile-XXXX.data)
perf record -F "$FREQ" --call-graph dwarf,16384 -p "$pid" -o "$data" 2>/dev/null &
perf_pid=$!
sleep 0.5
t0=$(ticks "$pid")
$BIN/wxload run --url "http://127.0.0.1:$port/wechat" --token "$TOKEN" --connections "$CONNECTIONS" \
  ${RATE:+--rate "$RATE"} --duration "$DURATION" --no-progress --json "$data.json" >/dev/null
t1=$(ticks "$pid")
kill -INT "$perf_pid"
wait "$perf_pid" 2>/dev/null || true

folded=/tmp/profile-$LABEL.folded
perf script -i "$data" 2>/dev/null | inferno-collapse-perf --kernel >"$folded"
# The CPU a push under perf (which adds its own cost): for the record, not for comparisons.
summary=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(f\"{d['acked']} pushes, {d['throughput_per_s']:.0f}/s, {int(sys.argv[2]) * 1e4 / max(d['acked'], 1):.1f} µs of CPU a push under perf\")" "$data.json" $((t1 - t0)))
echo "ingest, $LABEL: $summary" >"$OUT/profile-$LABEL.txt"
# Frames narrower than 0.3 px are left out: the SVG is a fifth of the size.
inferno-flamegraph --minwidth 0.3 --title "ingest, $LABEL: $summary" <"$folded" >"$OUT/profile-$LABEL.svg"
python3 bench/components.py "$folded" >>"$OUT/profile-$LABEL.txt"
cat "$OUT/profile-$LABEL.txt"
rm -f "$data" "$data.json"
echo "bench/profile.sh: $OUT/profile-$LABEL.svg, $OUT/profile-$LABEL.txt" >&2
