//! `ingest topics` creates every topic the contract names, through the real binary.

use std::process::Command;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// Needs a real broker: librdkafka's mock cluster does not implement CreateTopics.
#[test]
fn creates_every_topic_and_is_idempotent() {
    let Ok(brokers) = std::env::var("KAFKA_BROKERS") else {
        eprintln!("KAFKA_BROKERS is not set: the mock cluster cannot create topics; skipped");
        return;
    };
    let prefix = testkit::unique("topics");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_ingest"))
            .args(["topics", "--partitions", "6", "--replication-factor", "1"])
            .env("KAFKA_BROKERS", &brokers)
            .env("KAFKA_TOPIC_PREFIX", &prefix)
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8(first.stdout).unwrap();
    let expected = schemas::all_topic_names(&prefix);
    assert!(expected.contains(&format!("{prefix}.event.subscribe")));
    assert!(expected.contains(&format!("{prefix}.dlq.welcome")));
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("created ")).count(),
        expected.len(),
        "{stdout}"
    );

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(5))
        .unwrap();
    for name in &expected {
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(topic.partitions().len(), 6, "{name}");
    }

    // The topics a rebuild reads keep every record.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
    let subscribe = format!("{prefix}.event.subscribe");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let described = runtime
        .block_on(admin.describe_configs(
            &[rdkafka::admin::ResourceSpecifier::Topic(&subscribe)],
            &rdkafka::admin::AdminOptions::new(),
        ))
        .unwrap();
    let config = described.into_iter().next().unwrap().unwrap();
    let value = |key: &str| {
        config
            .entries
            .iter()
            .find(|e| e.name == key)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(value("retention.ms").as_deref(), Some("-1"));
    assert_eq!(value("cleanup.policy").as_deref(), Some("delete"));

    let again = run();
    assert!(again.status.success());
    let stdout = String::from_utf8(again.stdout).unwrap();
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("exists ")).count(),
        expected.len(),
        "{stdout}"
    );
}

#[test]
fn the_list_covers_the_contract() {
    let topics = schemas::all_topic_names("wechat");
    for name in [
        "wechat.event.subscribe",
        "wechat.event.other",
        "wechat.message.text",
        "wechat.message.other",
        "wechat.dlq.unbind",
        "wechat.dlq.welcome",
        "wechat.dlq.location",
        "wechat.dlq.component",
        "wechat.component.component_verify_ticket",
        "wechat.component.authorized",
        "wechat.component.other",
    ] {
        assert!(topics.iter().any(|t| t == name), "{name}");
    }
    // One dead-letter topic per worker role: unbind, welcome, location, component.
    assert_eq!(topics.len(), schemas::Topic::all().count() + 4);
}

#[test]
fn without_brokers_it_says_so() {
    let output = Command::new(env!("CARGO_BIN_EXE_ingest"))
        .arg("topics")
        .env_remove("KAFKA_BROKERS")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("KAFKA_BROKERS"));
}
