#!/usr/bin/env bash
# The chaos soak: a WeChat-like load (wxload: signed pushes, a 5 s timeout, 3 retries of the
# same request) against the release ingress with a spool, a real redis-server and a
# Kafka-protocol broker in its own process, while a scheduler injects a fault every INTERVAL
# seconds, in turn:
#   - SIGKILL of the ingress, restarted at once (its spool survives);
#   - Redis paused (CLIENT PAUSE 3 s);
#   - Redis killed and restarted empty (dedup state lost);
#   - the broker paused (SIGSTOP for 6 s, then SIGCONT): pushes go to the spool;
#   - the spool's disk full while the broker is paused (as root: the spool is on a tmpfs);
#   - clients that hang up (a second wxload with a 30 ms timeout and no retries).
# Faults stop HEAL seconds before the load does, so the spool drains. Then Kafka is read back
# by id, and the last line is
#   chaos: acked=N on_kafka=N lost=N duplicates=N faults=N
# lost = acknowledged (200) pushes whose id is not on Kafka; duplicates = records beyond the
# first of each id (a copy with the same id is the documented price of an unknown outcome).
# Exits 1 when lost > 0.
#
#   bench/chaos.sh                     # 300 s
#   DURATION=600 RATE=150 bench/chaos.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-300}
RATE=${RATE:-150}
INTERVAL=${INTERVAL:-8}
HEAL=${HEAL:-20}
TOKEN=chaos-token
. bench/lib.sh
build ingest wxload

PREFIX=chaos$$
start_kafka "$PREFIX"
start_redis

# The spool: on a small tmpfs when we may mount one (disk-full faults), else a plain folder.
SPOOL_ROOT=$(mktemp -d)
DISK=0
if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=64m tmpfs "$SPOOL_ROOT" 2>/dev/null; then
  DISK=1
fi
unmount() { [ "$DISK" = 1 ] && umount -l "$SPOOL_ROOT" 2>/dev/null; rm -rf "$SPOOL_ROOT"; }
trap 'cleanup; unmount' EXIT

PORT=$(free_port)
ADMIN=$(free_port)
LOG=$OUT/chaos-ingest.log
: >"$LOG"
start_ingest() {
  INGEST_LISTEN=127.0.0.1:$PORT INGEST_ADMIN_LISTEN=127.0.0.1:$ADMIN WECHAT_TOKEN=$TOKEN \
    KAFKA_BROKERS=$BROKERS KAFKA_TOPIC_PREFIX=$PREFIX REDIS_URL=redis://127.0.0.1:$REDIS_PORT/ \
    INGEST_SPOOL_DIR=$SPOOL_ROOT/spool RUST_LOG=warn "$BIN/ingest" >>"$LOG" 2>&1 &
  INGEST_PID=$!
  PIDS+=("$INGEST_PID")
  wait_ingest "$PORT" "$ADMIN"
}
restart_redis() {
  kill -9 "$REDIS_PID" 2>/dev/null || true
  wait "$REDIS_PID" 2>/dev/null || true
  sleep 1
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
}
pause_broker() { kill -STOP "$KAFKA_PID"; sleep "$1"; kill -CONT "$KAFKA_PID"; }

start_ingest
REPORT=$OUT/chaos.json
"$BIN/wxload" run --url "http://127.0.0.1:$PORT/wechat" --token "$TOKEN" --rate "$RATE" \
  --duration "${DURATION}s" --connections 64 --timeout 5s --retries 3 \
  --kafka-brokers "$BROKERS" --topic-prefix "$PREFIX" --json "$REPORT" --no-progress >/dev/null &
LOAD=$!

FAULTS=0
KINDS=(kill_ingest pause_redis pause_broker hang_ups restart_redis disk_full)
started=$(date +%s)
i=0
while kill -0 "$LOAD" 2>/dev/null && [ $(($(date +%s) - started)) -lt $((DURATION - HEAL)) ]; do
  sleep "$INTERVAL"
  kind=${KINDS[$((i % ${#KINDS[@]}))]}
  i=$((i + 1))
  case $kind in
    kill_ingest)
      kill -9 "$INGEST_PID"; wait "$INGEST_PID" 2>/dev/null || true
      start_ingest ;;
    pause_redis) redis-cli -p "$REDIS_PORT" CLIENT PAUSE 3000 ALL >/dev/null ;;
    restart_redis) restart_redis ;;
    pause_broker) pause_broker 6 ;;
    disk_full)
      [ "$DISK" = 1 ] || continue
      kill -STOP "$KAFKA_PID"
      dd if=/dev/zero of="$SPOOL_ROOT/filler" bs=1M 2>/dev/null || true
      sleep 4
      rm -f "$SPOOL_ROOT/filler"
      sleep 2
      kill -CONT "$KAFKA_PID" ;;
    hang_ups)
      "$BIN/wxload" run --url "http://127.0.0.1:$PORT/wechat" --token "$TOKEN" --account gh_hangup \
        --rate 200 --duration 3s --connections 16 --timeout 30ms --retries 0 --no-progress >/dev/null 2>&1 || true ;;
  esac
  FAULTS=$((FAULTS + 1))
  echo "chaos: $(($(date +%s) - started)) s: $kind" >&2
done
wait "$LOAD"

python3 - "$REPORT" "$FAULTS" <<'PY'
import json, sys
report, faults = json.load(open(sys.argv[1])), int(sys.argv[2])
kafka = report.get("kafka", {})
lost, dups = kafka.get("missing"), kafka.get("duplicates")
print(json.dumps(report, indent=2), file=sys.stderr)
if lost is None:
    print(f"chaos: read-back skipped ({kafka.get('read_back')}): no verdict", file=sys.stderr)
    sys.exit(2)
print(f"chaos: acked={report['acked']} on_kafka={kafka['on_kafka']} lost={lost} duplicates={dups} faults={faults}")
sys.exit(1 if lost else 0)
PY
