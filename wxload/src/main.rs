//! `wxload`: load-tests a wxpipe deployment the way WeChat would, and hosts the servers the
//! benchmarks compare against. It signs pushes with the `wechat` crate, as WeChat does, and
//! must never depend on the ingress it measures.
//!
//! ```text
//! wxload run --url http://127.0.0.1:8080/wechat --token T --connections 64 --count 100000 \
//!            --kafka-brokers localhost:9092        # then: sent, acked, on Kafka, latencies
//! wxload run --url http://127.0.0.1:8080/wechat --component-appid wxC --component-token T \
//!            --component-key K --authorizers 100   # an Open Platform component's traffic
//! wxload baseline --listen 127.0.0.1:9000          # the bare limit: 200 and nothing else
//! wxload fake-wechat --listen 127.0.0.1:9100       # a WeChat API for worker benchmarks
//! wxload produce --kafka-brokers B --type subscribe --count 100000
//! ```

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use wechat::decrypt::AesKey;

mod component;
mod component_load;
mod kafka;
mod push;
mod run;
mod servers;

use component::Component;
use push::{Mix, Signer, Target};

#[derive(Debug, Parser)]
#[command(
    name = "wxload",
    version,
    about = "Load-test wxpipe the way WeChat pushes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send signed pushes and report what was acknowledged and what reached Kafka.
    ///
    /// With --component-appid it plays WeChat for an Open Platform third-party platform (a
    /// component) instead: a component_verify_ticket push to {url}/component/auth at the start
    /// and every --ticket-interval, one `authorized` event there per authorizer before the load,
    /// and the load spread over --authorizers authorizers, wxauthorizer{i} (ToUserName
    /// gh_authorizer{i}) at {url}/component/wxauthorizer{i}; all encrypted with the
    /// component's token and key. --token, --aes-key, --appid and --account are then unused.
    Run(Box<RunArgs>),
    /// Serve the bare limit: 200 with an empty body, nothing else.
    Baseline {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
    },
    /// Serve a fake WeChat API (stable_token, custom send, /stats).
    FakeWechat {
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: String,
    },
    /// Host a Kafka-protocol broker (librdkafka's mock cluster) until killed; prints its address.
    /// It keeps only a few MB per partition: count by end offsets, not by reading back.
    MockKafka {
        #[arg(long, default_value_t = 1)]
        brokers: i32,
        #[arg(long, env = "KAFKA_TOPIC_PREFIX", default_value = "wechat")]
        topic_prefix: String,
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
    /// Write normalized events straight to Kafka (a backlog for worker benchmarks).
    Produce {
        #[arg(long, env = "KAFKA_BROKERS")]
        kafka_brokers: String,
        #[arg(long, env = "KAFKA_TOPIC_PREFIX", default_value = "wechat")]
        topic_prefix: String,
        #[arg(long = "type", default_value = "subscribe")]
        type_: String,
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        #[arg(long, default_value_t = 100_000)]
        users: u64,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The URL WeChat calls, path included.
    #[arg(long, default_value = "http://127.0.0.1:8080/wechat")]
    url: String,
    #[arg(
        long,
        env = "WECHAT_TOKEN",
        required_unless_present = "component_appid"
    )]
    token: Option<String>,
    /// Safe mode: the EncodingAESKey (with --appid).
    #[arg(long, env = "WECHAT_ENCODING_AES_KEY")]
    aes_key: Option<String>,
    #[arg(long, env = "WECHAT_APPID")]
    appid: Option<String>,
    /// ToUserName of every push.
    #[arg(long, default_value = "gh_wxload")]
    account: String,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Pushes per second in all; 0 = as fast as answered.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Pushes to send (default 10000 unless --duration).
    #[arg(long)]
    count: Option<u64>,
    /// How long to send, e.g. 30s.
    #[arg(long, value_parser = humantime_duration)]
    duration: Option<Duration>,
    /// Distinct users (OpenIDs).
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Weighted push types.
    #[arg(
        long,
        default_value = "subscribe=5,unsubscribe=2,scan=3,location=40,click=20,view=10,text=20"
    )]
    mix: String,
    /// WeChat's wait before it retries.
    #[arg(long, default_value = "5s", value_parser = humantime_duration)]
    timeout: Duration,
    #[arg(long, default_value_t = 3)]
    retries: u32,
    #[arg(long, default_value = "1s", value_parser = humantime_duration)]
    retry_delay: Duration,
    /// Kafka to count what arrived (unset: no Kafka figures).
    #[arg(long, env = "KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    #[arg(long, env = "KAFKA_TOPIC_PREFIX", default_value = "wechat")]
    topic_prefix: String,
    /// Read every record back to find duplicates and missing ids (when the broker still holds them).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    read_back: bool,
    /// Write the report as JSON here too.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    #[arg(long)]
    no_progress: bool,
    /// Open Platform mode: the component_appid of the third-party platform to play WeChat for.
    #[arg(
        long,
        env = "WECHAT_COMPONENT_APPID",
        requires_all = ["component_token", "component_key"],
        help_heading = "Open Platform (component) mode"
    )]
    component_appid: Option<String>,
    /// The component's message Token.
    #[arg(
        long,
        env = "WECHAT_COMPONENT_TOKEN",
        help_heading = "Open Platform (component) mode"
    )]
    component_token: Option<String>,
    /// The component's EncodingAESKey (every component push is encrypted).
    #[arg(
        long,
        env = "WECHAT_COMPONENT_ENCODING_AES_KEY",
        help_heading = "Open Platform (component) mode"
    )]
    component_key: Option<String>,
    /// Authorizers the load is spread over: push n goes to authorizer n % N.
    #[arg(
        long,
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..),
        requires = "component_appid",
        help_heading = "Open Platform (component) mode"
    )]
    authorizers: u64,
    /// How often a ticket push follows the first (WeChat: every 10 minutes).
    #[arg(
        long,
        default_value = "10m",
        value_parser = humantime_duration,
        requires = "component_appid",
        help_heading = "Open Platform (component) mode"
    )]
    ticket_interval: Duration,
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len()),
    );
    let n: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {text:?} (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Baseline { listen } => {
            servers::baseline(listen_on(&listen, "baseline").await?).await;
            Ok(())
        }
        Command::FakeWechat { listen } => {
            servers::fake_wechat(listen_on(&listen, "fake WeChat API").await?).await;
            Ok(())
        }
        Command::Produce {
            kafka_brokers,
            topic_prefix,
            type_,
            count,
            users,
        } => produce(&kafka_brokers, &topic_prefix, &type_, count, users).await,
        Command::Run(args) => run_load(*args).await,
        Command::MockKafka {
            brokers,
            topic_prefix,
            partitions,
        } => {
            let cluster = rdkafka::mocking::MockCluster::new(brokers)?;
            for topic in schemas::all_topic_names(&topic_prefix) {
                cluster.create_topic(&topic, partitions, brokers.min(3))?;
            }
            println!("{}", cluster.bootstrap_servers());
            tokio::signal::ctrl_c().await?;
            drop(cluster);
            Ok(())
        }
    }
}

/// Binds `listen` and says so: "`what` listening on …".
async fn listen_on(listen: &str, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| listen.to_owned())?;
    println!("{what} listening on {}", listener.local_addr()?);
    Ok(listener)
}

async fn produce(
    brokers: &str,
    prefix: &str,
    type_: &str,
    count: u64,
    users: u64,
) -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let mix = Mix::parse(type_).map_err(anyhow::Error::msg)?;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let signer = Signer::plaintext("");
    let base_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let started = std::time::Instant::now();
    let mut pending = Vec::new();
    for seq in 0..count {
        let request = push::build(
            seq,
            users,
            base_time,
            &mix,
            &Target::account("gh_wxload", "/"),
            &signer,
        );
        let push = wechat::parse::Push::try_from(request.body.as_bytes())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let at = humantime_rfc3339_now();
        let event = wechat::normalize::normalize(push, at).map_err(|e| anyhow::anyhow!("{e}"))?;
        let topic = event.topic().name(prefix);
        let value = serde_json::to_vec(&event)?;
        pending.push(
            producer
                .send_result(
                    FutureRecord::to(&topic)
                        .key(event.openid.as_str())
                        .payload(&value),
                )
                .map_err(|(e, _)| e)?,
        );
        if pending.len() >= 10_000 {
            for delivery in pending.drain(..) {
                delivery.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for delivery in pending {
        delivery.await?.map_err(|(e, _)| e)?;
    }
    println!(
        "produced {count} {type_} events in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn humantime_rfc3339_now() -> String {
    // Millisecond RFC 3339, as the ingress writes `received_at`.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}Z", now.as_secs(), now.subsec_millis())
}

async fn run_load(args: RunArgs) -> anyhow::Result<()> {
    let url = args
        .url
        .strip_prefix("http://")
        .context("--url must be http://host:port/path")?;
    let (addr, path) = url
        .split_once('/')
        .map_or((url, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let retry = run::Retry {
        timeout: args.timeout,
        retries: args.retries,
        retry_delay: args.retry_delay,
    };
    let component = match &args.component_appid {
        None => None,
        Some(appid) => {
            // Clap requires both with the AppID.
            let token = args.component_token.as_deref().unwrap_or_default();
            let key = args.component_key.as_deref().unwrap_or_default();
            let key = AesKey::parse(key).map_err(|e| anyhow::anyhow!("--component-key: {e}"))?;
            if args.ticket_interval.is_zero() {
                bail!("--ticket-interval must be more than 0");
            }
            Some(Component::new(appid, token, key, &path))
        }
    };
    let (targets, signer) = match &component {
        Some(component) => (
            (0..args.authorizers)
                .map(|i| component.authorizer(i))
                .collect(),
            component.signer().clone(),
        ),
        None => {
            let aes = match (&args.aes_key, &args.appid) {
                (Some(key), Some(appid)) => Some((
                    AesKey::parse(key).map_err(|e| anyhow::anyhow!("{e}"))?,
                    appid.clone(),
                )),
                (Some(_), None) => bail!("--aes-key needs --appid"),
                _ => None,
            };
            // Clap requires --token without --component-appid.
            let token = args.token.as_deref().unwrap_or_default();
            let signer = match aes {
                None => Signer::plaintext(token),
                Some((key, appid)) => Signer::encrypted(token, key, &appid),
            };
            (vec![Target::account(&args.account, &path)], signer)
        }
    };
    let count = args.count.or(if args.duration.is_none() {
        Some(10_000)
    } else {
        None
    });
    let before = args
        .kafka_brokers
        .as_deref()
        .map(|b| kafka::end_offsets(b, &args.topic_prefix));
    let load = run::Load {
        addr: addr.to_owned(),
        connections: args.connections,
        rate: args.rate,
        count,
        duration: args.duration,
        users: args.users.max(1),
        mix: Mix::parse(&args.mix).map_err(anyhow::Error::msg)?,
        targets,
        signer,
        retry,
        progress: !args.no_progress,
    };
    let (outcome, component_report) = match &component {
        None => (run::run(load).await, None),
        Some(component) => {
            let done = component_load::run_component(load, component, args.ticket_interval).await;
            let Some(mut outcome) = done.load else {
                bail!(
                    "no authorization event was answered 200 `success` at http://{addr}{} \
                     (is the ingress serving this component?)",
                    component.auth_path()
                );
            };
            outcome
                .acked_ids
                .extend(done.authorizations.acked_ids.iter().cloned());
            outcome
                .acked_ids
                .extend(done.tickets.acked_ids.iter().cloned());
            let figures = serde_json::json!({
                "appid": args.component_appid,
                "authorizers": args.authorizers,
                "authorizations": done.authorizations.json(),
                "tickets": done.tickets.json(),
            });
            (outcome, Some(figures))
        }
    };
    let cpu = cpu_seconds();
    let percentile = |q: f64| outcome.latency.value_at_quantile(q) as f64 / 1000.0;
    let throughput = outcome.acked as f64 / outcome.elapsed.as_secs_f64().max(1e-9);
    let mut report = serde_json::json!({
        "sent": outcome.sent,
        "acked": outcome.acked,
        "failed": outcome.failed,
        "retried": outcome.retried,
        "seconds": outcome.elapsed.as_secs_f64(),
        "throughput_per_s": throughput,
        // The generator's own CPU time, so a benchmark can tell its share of the machine.
        "cpu_seconds": cpu,
        "latency_ms": {
            "p50": percentile(0.50), "p90": percentile(0.90), "p99": percentile(0.99),
            "p99.9": percentile(0.999),
            "max": outcome.latency.max() as f64 / 1000.0,
        },
    });
    if let Some((second, h)) = outcome.worst_second() {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        report["worst_second"] = serde_json::json!({
            "second": second, "acked": h.len(),
            "p50_ms": ms(0.5), "p99_ms": ms(0.99), "max_ms": h.max() as f64 / 1000.0,
        });
    }
    let component_mode = component_report.is_some();
    if let Some(figures) = component_report {
        // The figures above are the authorizers' pushes; these, the authorization events.
        report["component"] = figures;
    }
    if let (Some(brokers), Some(before)) = (args.kafka_brokers.as_deref(), before) {
        let brokers = brokers.to_owned();
        let prefix = args.topic_prefix.clone();
        let read_back = args.read_back;
        let acked_ids = outcome.acked_ids;
        let kafka_report = tokio::task::spawn_blocking(move || {
            let after = kafka::settled(&brokers, &prefix, Duration::from_secs(30));
            let on_kafka = kafka::written(&before, &after);
            let mut figures = serde_json::json!({ "on_kafka": on_kafka });
            if component_mode {
                // Of `on_kafka`, the authorization events: `component.acked` of them.
                figures["on_kafka_component"] = serde_json::json!(kafka::written_on(
                    &before,
                    &after,
                    &format!("{prefix}.component.")
                ));
            }
            if read_back {
                match kafka::read_ids(&brokers, &before, &after) {
                    Some(ids) => {
                        let unique: std::collections::HashSet<&String> = ids.iter().collect();
                        let missing = acked_ids.iter().filter(|id| !unique.contains(id)).count();
                        figures["duplicates"] = serde_json::json!(ids.len() - unique.len());
                        figures["missing"] = serde_json::json!(missing);
                    }
                    None => {
                        figures["read_back"] =
                            serde_json::json!("skipped: the broker no longer holds all of it")
                    }
                }
            }
            figures
        })
        .await?;
        report["kafka"] = kafka_report;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

/// This process's CPU time so far (user + system), where `/proc` tells it.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which may hold spaces, start at the state (field 3);
    // utime and stime are fields 14 and 15, in clock ticks of 1/100 s on Linux.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    Some((ticks(14)? + ticks(15)?) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `wxload run` with these arguments, or clap's error.
    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let cli = Cli::try_parse_from(["wxload", "run"].iter().chain(args))?;
        match cli.command {
            Command::Run(args) => Ok(*args),
            other => panic!("{other:?}"),
        }
    }

    /// These tests mean the flags alone: they say nothing when the settings are in the
    /// environment (clap reads it).
    fn environment_is_clear() -> bool {
        let set: Vec<_> = [
            "WECHAT_TOKEN",
            "WECHAT_COMPONENT_APPID",
            "WECHAT_COMPONENT_TOKEN",
            "WECHAT_COMPONENT_ENCODING_AES_KEY",
        ]
        .into_iter()
        .filter(|v| std::env::var_os(v).is_some())
        .collect();
        if !set.is_empty() {
            eprintln!("skipped: {set:?} set in the environment");
        }
        set.is_empty()
    }

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    #[test]
    fn an_account_still_needs_its_token_and_nothing_of_a_component() {
        if !environment_is_clear() {
            return;
        }
        let args = run_args(&["--token", "t"]).unwrap();
        assert_eq!(args.token.as_deref(), Some("t"));
        assert_eq!(args.component_appid, None);
        assert!(run_args(&[]).is_err(), "--token is required");
        // The component's own flags mean nothing without the component.
        for flags in [&["--authorizers", "3"][..], &["--ticket-interval", "1s"]] {
            let mut all = vec!["--token", "t"];
            all.extend(flags);
            assert!(run_args(&all).is_err(), "{flags:?}");
        }
    }

    #[test]
    fn a_component_needs_its_token_and_key_and_not_an_accounts() {
        if !environment_is_clear() {
            return;
        }
        const COMPONENT: [&str; 6] = [
            "--component-appid",
            "wxc",
            "--component-token",
            "ct",
            "--component-key",
            KEY,
        ];
        let with = |more: &[&'static str]| run_args(&[&COMPONENT[..], more].concat());
        let args = with(&["--authorizers", "5", "--ticket-interval", "30s"]).unwrap();
        assert_eq!(args.component_appid.as_deref(), Some("wxc"));
        assert_eq!(args.component_token.as_deref(), Some("ct"));
        assert_eq!(args.component_key.as_deref(), Some(KEY));
        assert_eq!(args.authorizers, 5);
        assert_eq!(args.ticket_interval, Duration::from_secs(30));
        let defaults = with(&[]).unwrap();
        assert_eq!(defaults.authorizers, 10);
        assert_eq!(defaults.ticket_interval, Duration::from_secs(600));
        assert!(run_args(&["--component-appid", "wxc", "--component-token", "ct"]).is_err());
        assert!(run_args(&["--component-appid", "wxc", "--component-key", KEY]).is_err());
        assert!(with(&["--authorizers", "0"]).is_err());
    }
}
