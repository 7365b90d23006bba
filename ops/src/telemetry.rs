//! The process's metrics: the recorder, the catalog of every metric the binaries write (with
//! its help text and kind), and the rendering at `GET /metrics`.

use std::sync::OnceLock;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The metrics recorder of this process, installed on first use. Latencies are histograms
/// with buckets fit for milliseconds-to-seconds.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0,
            30.0, 60.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .expect("valid buckets")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test process): metrics then go there.
        let _ = metrics::set_global_recorder(recorder);
        describe_metrics();
        metrics::gauge!("wxpipe_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        // The recorder keeps every histogram sample until it is drained, which a scrape does;
        // with no Prometheus scraping, memory would grow with every push. Drain it here too.
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            });
        handle
    })
}

/// Every metric of both binaries, in one place: its `# HELP` line, its type, and the series
/// that exist from start (at zero), so dashboards and alerts see them before the first event.
/// A metric whose labels depend on traffic (an account, a topic) has no series until then, but
/// its `# HELP` and `# TYPE` are in `/metrics` all the same ([`render`]).
pub const METRICS: &[Metric] = &[
    describe(
        Kind::Gauge,
        "wxpipe_build_info",
        None,
        "Always 1: which wxpipe runs, by version",
        &[],
    ),
    describe(
        Kind::Counter,
        "wxpipe_pushes_total",
        None,
        "Pushes answered, by account, kind, type, outcome and reason",
        &[],
    ),
    describe(
        Kind::Histogram,
        "wxpipe_push_ack_seconds",
        Some(Unit::Seconds),
        "From a push's arrival to its answer, by outcome",
        &[&[("outcome", "published")], &[("outcome", "duplicate")], &[("outcome", "spooled")], &[("outcome", "rejected")], &[("outcome", "failed")]],
    ),
    describe(
        Kind::Gauge,
        "wxpipe_pushes_in_flight",
        None,
        "Pushes being handled now (holding an in-flight place)",
        UNLABELLED,
    ),
    describe(
        Kind::Counter,
        "wxpipe_url_verifications_total",
        None,
        "URL verifications (GET), by account and outcome",
        &[],
    ),
    describe(
        Kind::Gauge,
        "wxpipe_connections_open",
        None,
        "Open client connections of the ingress",
        UNLABELLED,
    ),
    describe(
        Kind::Counter,
        "wxpipe_connections_closed_total",
        None,
        "Connections the ingress closed to stay under INGEST_MAX_CONNECTIONS, by reason",
        &[&[("reason", "limit")], &[("reason", "all_busy")]],
    ),
    describe(
        Kind::Gauge,
        "wxpipe_kafka_in_flight",
        None,
        "Records sent to Kafka and not yet acknowledged",
        UNLABELLED,
    ),
    describe(
        Kind::Histogram,
        "wxpipe_kafka_produce_seconds",
        Some(Unit::Seconds),
        "From a record's produce to its delivery report",
        UNLABELLED,
    ),
    describe(
        Kind::Counter,
        "wxpipe_redis_errors_total",
        None,
        "Redis calls that failed or timed out, by op and kind (outage, CROSSSLOT, MOVED, NOSCRIPT, READONLY, refused, …)",
        &[],
    ),
    describe(
        Kind::Counter,
        "wxpipe_redis_cluster_reconnects_total",
        None,
        "Redis Cluster connections replaced because calls went unanswered and no node answered a PING either, or calls went on going unanswered through three checks",
        UNLABELLED,
    ),
    describe(
        Kind::Histogram,
        "wxpipe_redis_batch_ops",
        None,
        "Dedup ops carried by one group-committed Redis call",
        UNLABELLED,
    ),
    describe(
        Kind::Gauge,
        "wxpipe_dependency_up",
        None,
        "1 when the dependency answered the last check (a probe every few seconds, and each /readyz), else 0, by dependency",
        &[],
    ),
    describe(
        Kind::Gauge,
        "wxpipe_spool_bytes",
        Some(Unit::Bytes),
        "Bytes held in the spool, not yet on Kafka",
        UNLABELLED,
    ),
    describe(
        Kind::Counter,
        "wxpipe_spool_records_total",
        None,
        "Records appended to, replayed from, held in or rejected by the spool, by op",
        &[&[("op", "appended")], &[("op", "replayed")], &[("op", "held")], &[("op", "rejected")]],
    ),
    describe(
        Kind::Counter,
        "wxpipe_spool_write_errors_total",
        None,
        "Spool writes or fsyncs that failed (the segment was sealed)",
        UNLABELLED,
    ),
    describe(
        Kind::Counter,
        "wxpipe_worker_events_total",
        None,
        "Events a worker role handled, by role and outcome",
        &[],
    ),
    describe(
        Kind::Histogram,
        "wxpipe_worker_effect_seconds",
        Some(Unit::Seconds),
        "How long one effect took, by role",
        &[],
    ),
    describe(
        Kind::Gauge,
        "wxpipe_worker_consumer_lag",
        None,
        "Records not yet committed by a role's consumer group, by role and topic",
        &[],
    ),
    describe(
        Kind::Counter,
        "wxpipe_worker_dead_letter_failures_total",
        None,
        "Dead-letter writes that failed (the record's partition waits), by role",
        &[],
    ),
    describe(
        Kind::Histogram,
        "wxpipe_worker_dependency_wait_seconds",
        Some(Unit::Seconds),
        "Backoffs of records waiting for a failing dependency, by role (the sum is the time spent waiting)",
        &[],
    ),
    describe(
        Kind::Gauge,
        "wxpipe_worker_waiting_records",
        None,
        "Records of a role waiting for a failing dependency (the role is paused meanwhile), by role",
        &[],
    ),
    describe(
        Kind::Gauge,
        "wxpipe_worker_held_records",
        None,
        "Records held because the WeChat API refuses their account (the rest move on), by role and account",
        &[],
    ),
    describe(
        Kind::Counter,
        "wxpipe_worker_welcome_unknown_total",
        None,
        "Welcome sends whose outcome is unknown (written, answer lost), by then (recorded or resent)",
        &[&[("then", "recorded")], &[("then", "resent")]],
    ),
    describe(
        Kind::Counter,
        "wxpipe_wechat_api_calls_total",
        None,
        "Calls to the WeChat API, by api and errcode (0 ok, -2 no answer)",
        &[],
    ),
];

/// One label-free series.
const UNLABELLED: &[&[(&str, &str)]] = &[&[]];

/// What Prometheus calls a metric's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// Its name on a `# TYPE` line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric of [`METRICS`].
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<metrics::Unit>,
    pub help: &'static str,
    /// The label sets whose series exist from start (none: the labels depend on traffic).
    pub series: &'static [&'static [(&'static str, &'static str)]],
}

type Series = &'static [&'static [(&'static str, &'static str)]];

/// One entry of [`METRICS`].
const fn describe(
    kind: Kind,
    name: &'static str,
    unit: Option<metrics::Unit>,
    help: &'static str,
    series: Series,
) -> Metric {
    Metric {
        name,
        kind,
        unit,
        help,
        series,
    }
}

/// Describes every metric of [`METRICS`] to the recorder and creates its fixed series at zero.
fn describe_metrics() {
    for metric in METRICS {
        let name = metrics::KeyName::from_const_str(metric.name);
        let help = metrics::SharedString::const_str(metric.help);
        metrics::with_recorder(|recorder| match metric.kind {
            Kind::Counter => recorder.describe_counter(name, metric.unit, help),
            Kind::Gauge => recorder.describe_gauge(name, metric.unit, help),
            Kind::Histogram => recorder.describe_histogram(name, metric.unit, help),
        });
        for labels in metric.series {
            let labels: Vec<metrics::Label> = labels
                .iter()
                .map(|(key, value)| metrics::Label::from_static_parts(key, value))
                .collect();
            match metric.kind {
                Kind::Counter => drop(metrics::counter!(metric.name, labels)),
                Kind::Gauge => metrics::gauge!(metric.name, labels).set(0.0),
                Kind::Histogram => drop(metrics::histogram!(metric.name, labels)),
            }
        }
    }
}

/// Records whether a dependency (`redis`, `kafka`, `spool`) answered its last check.
pub fn dependency_up(dependency: &'static str, up: bool) {
    metrics::gauge!("wxpipe_dependency_up", "dependency" => dependency).set(if up {
        1.0
    } else {
        0.0
    });
}

/// This process's metrics in Prometheus text: what the recorder holds, then a `# HELP` and
/// `# TYPE` for each metric of [`METRICS`] that has no series yet.
pub fn render() -> String {
    let mut text = prometheus().render();
    for metric in METRICS {
        if !text.contains(&format!("# TYPE {} ", metric.name)) {
            text.push_str(&format!(
                "# HELP {} {}\n# TYPE {} {}\n",
                metric.name,
                metric.help,
                metric.name,
                metric.kind.name()
            ));
        }
    }
    text
}
