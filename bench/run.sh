#!/usr/bin/env bash
# The benchmark: in one run, on this machine, measures
#   (a) the bare limit: a hyper server that answers 200 and does nothing, under the load below;
#   (b) the full ingress, with a real redis-server and a Kafka-protocol broker (librdkafka's
#       mock cluster in its own process), under the same load;
# and prints (b)/(a), latency percentiles (to p99.9, and the run's worst second), the
# ingress's peak memory, the CPU each process
# spends per push, latency against offered load (CSV and a PNG plot), and the workers'
# throughput per role with the welcome latency of a 100k-event backlog. Results go to
# bench/results/. Figures are ratios against the baseline measured in the same run: these
# machines are shared and noisy, and CPU per push is the steadiest figure of all.
#
# Both servers are driven over CONNECTIONS connections (256): enough to saturate each, so
# both figures are throughput limits. At 64 the ingress is latency-bound (64 pushes in flight
# over a ~2 ms ack cannot exceed 32k/s whatever the CPU), which the run also reports.
#
#   bench/run.sh                 # everything, a few minutes
#   DURATION=5s bench/run.sh     # shorter loads
#   INGEST=… WORKER=… bench/run.sh   # other builds of the ingress and the worker (a "before"),
#                                # under this run's generator, broker and Redis
#   bench/run.sh cluster         # the cluster variant: the full ingress on one redis-server and
#                                # on a six-node Redis Cluster, under the same load, in one run
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-256}
# Offered loads of the latency curve, in % of the bare limit.
RATES=${RATES:-5 10 20 30 40 50}
BACKLOG=${BACKLOG:-100000}
TOKEN=bench-token
. bench/lib.sh
build ingest worker wxload
INGEST=${INGEST:-$BIN/ingest}
WORKER=${WORKER:-$BIN/worker}

rss_peak_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
json() { python3 -c "import json,sys; d=json.load(open('$1')); print($2)"; }

PREFIX=bench$$
start_kafka "$PREFIX"
start_redis

if [ "${1:-}" = cluster ]; then
  start_redis_cluster
  # run_ingress NAME REDIS_URL: the same load as (b) on an ingress with that Redis.
  run_ingress() {
    local port admin pid
    port=$(free_port); admin=$(free_port)
    INGEST_LISTEN=127.0.0.1:$port INGEST_ADMIN_LISTEN=127.0.0.1:$admin WECHAT_TOKEN=$TOKEN \
      KAFKA_BROKERS=$BROKERS KAFKA_TOPIC_PREFIX=$PREFIX REDIS_KEY_PREFIX="$1" \
      REDIS_URL=$2 RUST_LOG=warn "$INGEST" &
    pid=$!
    PIDS+=($pid)
    wait_ingest "$port" "$admin"
    $BIN/wxload run --url "http://127.0.0.1:$port/wechat" --token "$TOKEN" --count 2000 --no-progress \
      --connections 8 >/dev/null
    $BIN/wxload run --url "http://127.0.0.1:$port/wechat" --token "$TOKEN" --connections "$CONNECTIONS" \
      --duration "$DURATION" --no-progress --json "$OUT/redis-$1.json" >/dev/null
    kill "$pid"
  }
  echo "== the full ingress on one redis-server" >&2
  run_ingress single "redis://127.0.0.1:$REDIS_PORT/"
  echo "== the full ingress on a six-node Redis Cluster" >&2
  run_ingress cluster "$CLUSTER_URL"
  python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
single, cluster = (json.load(open(f"{out}/redis-{n}.json")) for n in ("single", "cluster"))
summary = {
    "single_throughput_per_s": round(single["throughput_per_s"]),
    "cluster_throughput_per_s": round(cluster["throughput_per_s"]),
    "cluster_over_single": round(cluster["throughput_per_s"] / single["throughput_per_s"], 3),
    "single_p99_ms": single.get("latency_ms", {}).get("p99"),
    "cluster_p99_ms": cluster.get("latency_ms", {}).get("p99"),
}
json.dump(summary, open(f"{out}/redis-cluster-summary.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
PY
  exit 0
fi

echo "== (a) bare limit" >&2
BASE_PORT=$(free_port)
$BIN/wxload baseline --listen "127.0.0.1:$BASE_PORT" >/dev/null &
BASE_PID=$!
PIDS+=($BASE_PID)
wait_http "http://127.0.0.1:$BASE_PORT/"
B0=$(ticks "$BASE_PID")
$BIN/wxload run --url "http://127.0.0.1:$BASE_PORT/wechat" --token "$TOKEN" --connections "$CONNECTIONS" \
  --duration "$DURATION" --no-progress --json "$OUT/baseline.json" >/dev/null
BASE_TICKS=$(($(ticks "$BASE_PID") - B0))

echo "== (b) full ingress" >&2
INGEST_PORT=$(free_port)
INGEST_ADMIN_PORT=$(free_port)
INGEST_LISTEN=127.0.0.1:$INGEST_PORT INGEST_ADMIN_LISTEN=127.0.0.1:$INGEST_ADMIN_PORT WECHAT_TOKEN=$TOKEN \
  KAFKA_BROKERS=$BROKERS KAFKA_TOPIC_PREFIX=$PREFIX \
  REDIS_URL=redis://127.0.0.1:$REDIS_PORT/ RUST_LOG=warn "$INGEST" &
INGEST_PID=$!
PIDS+=($INGEST_PID)
wait_ingest "$INGEST_PORT" "$INGEST_ADMIN_PORT"
# Warm up connections and metadata.
$BIN/wxload run --url "http://127.0.0.1:$INGEST_PORT/wechat" --token "$TOKEN" --count 2000 --no-progress \
  --connections 8 >/dev/null
I0=$(ticks "$INGEST_PID"); R0=$(ticks "$REDIS_PID"); K0=$(ticks "$KAFKA_PID")
$BIN/wxload run --url "http://127.0.0.1:$INGEST_PORT/wechat" --token "$TOKEN" --connections "$CONNECTIONS" \
  --duration "$DURATION" --no-progress --json "$OUT/ingress.json" >/dev/null
INGEST_TICKS=$(($(ticks "$INGEST_PID") - I0)); REDIS_TICKS=$(($(ticks "$REDIS_PID") - R0))
KAFKA_TICKS=$(($(ticks "$KAFKA_PID") - K0))
# The same load again, then what reached Kafka: counted by end offsets and read back by id
# (apart from the run above, whose CPU figures the read-back would blur).
echo "== (b) durability: every acked push on Kafka once" >&2
$BIN/wxload run --url "http://127.0.0.1:$INGEST_PORT/wechat" --token "$TOKEN" --connections "$CONNECTIONS" \
  --duration "$DURATION" --no-progress --kafka-brokers "$BROKERS" --topic-prefix "$PREFIX" \
  --json "$OUT/durability.json" >/dev/null
echo "== (b) full ingress over 64 connections (latency-bound)" >&2
$BIN/wxload run --url "http://127.0.0.1:$INGEST_PORT/wechat" --token "$TOKEN" --connections 64 \
  --duration "$DURATION" --no-progress --json "$OUT/ingress-64.json" >/dev/null

BASE_TPS=$(json "$OUT/baseline.json" 'round(d["throughput_per_s"])')
INGRESS_TPS=$(json "$OUT/ingress.json" 'round(d["throughput_per_s"])')

echo "== latency against offered load" >&2
echo "offered_per_s,achieved_per_s,p50_ms,p90_ms,p99_ms,max_ms,failed" >"$OUT/latency.csv"
for pct in $RATES; do
  RATE=$((BASE_TPS * pct / 100))
  $BIN/wxload run --url "http://127.0.0.1:$INGEST_PORT/wechat" --token "$TOKEN" --connections "$CONNECTIONS" \
    --rate "$RATE" --duration "$DURATION" --no-progress --json "$OUT/rate-$pct.json" >/dev/null
  json "$OUT/rate-$pct.json" "f'$RATE,{d[\"throughput_per_s\"]:.0f},{d[\"latency_ms\"][\"p50\"]},{d[\"latency_ms\"][\"p90\"]},{d[\"latency_ms\"][\"p99\"]},{d[\"latency_ms\"][\"max\"]},{d[\"failed\"]}'" >>"$OUT/latency.csv"
done
PEAK_KIB=$(rss_peak_kib "$INGEST_PID")
kill "$INGEST_PID"; wait "$INGEST_PID" 2>/dev/null || true

echo "== workers" >&2
# A Redis and a broker of their own: the ingress's runs left a million keys and records behind,
# whose upkeep would weigh on the workers' figures, more or less with each ingress build.
kill "$REDIS_PID" "$KAFKA_PID"
start_redis
FAKE_PORT=$(free_port)
$BIN/wxload fake-wechat --listen "127.0.0.1:$FAKE_PORT" >/dev/null &
PIDS+=($!)
wait_http "http://127.0.0.1:$FAKE_PORT/stats"
WPREFIX=w$$
start_kafka "$WPREFIX"
WBROKERS=$BROKERS
# events_per_s counts from the worker's start, so it includes the group join, which the broker
# holds for group.initial.rebalance.delay.ms (3 s on Kafka and on librdkafka's mock alike) before
# a new group's first assignment; events_per_s_after_first counts from the first event done, the
# rate a worker sustains.
# The CPU each event cost the worker and Redis, from /proc, over the whole role's run.
echo "role,events,seconds,events_per_s,first_event_s,events_per_s_after_first,worker_cpu_us_per_event,redis_cpu_us_per_event" >"$OUT/workers.csv"
ADMIN_PORT=$(free_port)
metric_sum() { curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v r="role=\"$1\"" '/^wxpipe_worker_events_total/ && index($0, r) {s += $NF} END {print s+0}'; }
run_role() { # role, events
  local role=$1 events=$2 start end first="" redis0 worker_ticks redis_ticks
  start=$(date +%s.%N)
  redis0=$(ticks "$REDIS_PID")
  KAFKA_BROKERS=$WBROKERS KAFKA_TOPIC_PREFIX=$WPREFIX REDIS_URL=redis://127.0.0.1:$REDIS_PORT/ REDIS_KEY_PREFIX=$WPREFIX \
    WECHAT_APPID=wxbench WECHAT_APPSECRET=secret WECHAT_API_BASE=http://127.0.0.1:$FAKE_PORT \
    WORKER_ADMIN_LISTEN=127.0.0.1:$ADMIN_PORT RUST_LOG=warn "$WORKER" --role "$role" &
  local pid=$!
  wait_http "http://127.0.0.1:$ADMIN_PORT/healthz"
  for _ in $(seq 2400); do
    done_now=$(metric_sum "$role")
    [ -z "$first" ] && [ "$done_now" -gt 0 ] && first=$(date +%s.%N)
    [ "$done_now" -ge "$events" ] && break
    sleep 0.05
  done
  end=$(date +%s.%N)
  worker_ticks=$(ticks "$pid"); redis_ticks=$(($(ticks "$REDIS_PID") - redis0))
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 -c "print(f'$role,$events,{$end-$start:.2f},{$events/($end-$start):.0f},{${first:-$end}-$start:.2f},{$events/max($end-${first:-$start},1e-3):.0f},{$worker_ticks*1e4/$events:.1f},{$redis_ticks*1e4/$events:.1f}')" >>"$OUT/workers.csv"
}
BACKLOG_AT=$(python3 -c 'import time; print(int(time.time()*1000))')
$BIN/wxload produce --kafka-brokers "$WBROKERS" --topic-prefix "$WPREFIX" --type subscribe --count "$BACKLOG" --users "$BACKLOG" >&2
$BIN/wxload produce --kafka-brokers "$WBROKERS" --topic-prefix "$WPREFIX" --type location --count "$BACKLOG" --users "$BACKLOG" >&2
WELCOME_FROM=$(python3 -c 'import time; print(int(time.time()*1000))')
run_role welcome "$BACKLOG"
curl -fsS "http://127.0.0.1:$FAKE_PORT/stats?since=$WELCOME_FROM" >"$OUT/welcome.json"
run_role unbind "$BACKLOG"
run_role location "$BACKLOG"

python3 - "$OUT" <<'PY'
import csv, json, sys
out = sys.argv[1]
rows = list(csv.DictReader(open(f"{out}/latency.csv")))
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = [float(r["offered_per_s"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99")):
        ax.plot(x, [float(r[key]) for r in rows], marker="o", label=label)
    ax.axhline(10, color="grey", linestyle="--", linewidth=0.8, label="10 ms target")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (pushes/s, open loop)")
    ax.set_ylabel("ack latency (ms, log scale)")
    ax.set_title("wxpipe ingress: ack latency against offered load")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(f"{out}/latency.png", dpi=120)
except ImportError:
    print("bench: matplotlib not installed (pip install matplotlib): no plot", file=sys.stderr)
PY

BASE_P99=$(json "$OUT/baseline.json" 'd["latency_ms"]["p99"]')
CONNECTIONS=$CONNECTIONS python3 - "$OUT" "$PEAK_KIB" "$BASE_TICKS" "$INGEST_TICKS" "$REDIS_TICKS" "$KAFKA_TICKS" <<'PY'
import csv, json, sys
out, peak_kib = sys.argv[1], int(sys.argv[2])
import os
base_ticks, ingest_ticks, redis_ticks, kafka_ticks = (int(t) for t in sys.argv[3:7])
base, ing = json.load(open(f"{out}/baseline.json")), json.load(open(f"{out}/ingress.json"))
ing64 = json.load(open(f"{out}/ingress-64.json"))
dur = json.load(open(f"{out}/durability.json"))
per_push = lambda seconds, run: round(seconds * 1e6 / max(run["acked"], 1), 1)
welcome = json.load(open(f"{out}/welcome.json"))
half = next((r for r in csv.DictReader(open(f"{out}/latency.csv")) if r and int(r["offered_per_s"]) > 0 and abs(int(r["offered_per_s"]) / base["throughput_per_s"] - 0.5) < 0.01), None)
summary = {
    "baseline_per_s": round(base["throughput_per_s"]),
    "ingress_per_s": round(ing["throughput_per_s"]),
    "ratio": round(ing["throughput_per_s"] / base["throughput_per_s"], 3),
    "connections": int(os.environ["CONNECTIONS"]),
    "ingress_per_s_64_connections": round(ing64["throughput_per_s"]),
    "ingress_latency_ms_64_connections": ing64["latency_ms"],
    # The second of the run with the worst p99: a stall a whole-run percentile averages away.
    "ingress_worst_second_64_connections": ing64.get("worst_second"),
    "cpu_us_per_push": {
        "baseline": {"server": per_push(base_ticks / 100, base), "generator": per_push(base["cpu_seconds"] or 0, base)},
        "ingress": {"ingest": per_push(ingest_ticks / 100, ing), "redis": per_push(redis_ticks / 100, ing),
                    "kafka_broker": per_push(kafka_ticks / 100, ing), "generator": per_push(ing["cpu_seconds"] or 0, ing)},
    },
    "ingress_latency_ms_at_max": ing["latency_ms"],
    "ingress_worst_second_at_max": ing.get("worst_second"),
    "baseline_latency_ms_at_max": base["latency_ms"],
    "ingress_p99_ms_at_half_baseline": float(half["p99_ms"]) if half else None,
    "ingress_peak_rss_mib": round(peak_kib / 1024, 1),
    "durability": {"acked": dur["acked"], "failed": dur["failed"], **(dur.get("kafka") or {})},
    "ingress_failed": ing["failed"],
    "workers": list(csv.DictReader(open(f"{out}/workers.csv"))),
    "welcome_backlog": welcome,
}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
PY
