//! The configuration as operators give it, through the `worker` binary: `REDIS_URL` fails
//! closed beside Kafka, the config file both binaries share, secrets from files, and
//! `worker validate [--connect]`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use testkit::{printed as text, run_to_end as run};

/// The worker binary with none of the environment's settings that would change the test.
fn worker(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut command = testkit::bare_command(
        env!("CARGO_BIN_EXE_worker"),
        &[
            "KAFKA_BROKERS",
            "REDIS_URL",
            "WXPIPE_CONFIG",
            "KAFKA_CONFIG",
            "WECHAT_APPSECRET",
        ],
        &[("WORKER_ADMIN_LISTEN", "")],
    );
    command.args(args).envs(envs.iter().copied());
    command
}

fn file(name: &str, content: &str) -> PathBuf {
    testkit::temp_file("wxpipe-worker-config", name, content)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_without_redis_url_stops_the_start_naming_it() {
    let brokers = format!("127.0.0.1:{}", testkit::free_port());
    let out = run(worker(&[], &[("KAFKA_BROKERS", &brokers)])).await;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("REDIS_URL") && said.contains("memory://") && said.contains("redis://"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_config_file_configures_the_worker_and_validate_reaches_its_services() {
    let env = Env::start().await;
    let appsecret = file("appsecret", "hunter2-appsecret\n");
    // One file for both binaries: the ingress's settings are known here too.
    let config = file(
        "wxpipe.toml",
        &format!(
            "[kafka]\nbrokers = \"{}\"\ntopic_prefix = \"from-file\"\n[redis]\nurl = \"{}\"\n\
             [worker]\nroles = [\"unbind\", \"location\"]\nconcurrency = 3\n\
             [ingest]\nlisten = \"0.0.0.0:8080\"\nmax_in_flight = 10\n\
             [wechat]\nappid = \"wxfile\"\nappsecret_file = \"{}\"\ntoken = \"hunter2-token\"\n\
             [kafka.consumer_config]\n\"client.id\" = \"a,b\"\n",
            env.kafka.brokers(),
            env.redis.url(),
            appsecret.display()
        ),
    );
    let out = run(worker(
        &[
            "validate",
            "--connect",
            "--config",
            config.to_str().unwrap(),
        ],
        &[("WORKER_CONCURRENCY", "4")],
    ))
    .await;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    for line in [
        "KAFKA_TOPIC_PREFIX = \"from-file\" (file)",
        "WORKER_ROLES = \"unbind,location\" (file)",
        "WORKER_CONCURRENCY = \"4\" (env)",
        "KAFKA_CONSUMER_CONFIG = \"client.id=a,b\" (file)",
        "WECHAT_APPSECRET_FILE = ",
        "roles: unbind,location",
        "kafka: ok",
        "redis: ok",
    ] {
        assert!(said.contains(line), "{line} in:\n{said}");
    }
    assert!(!said.contains("hunter2"), "a secret printed:\n{said}");

    // A flag after the subcommand wins over the file and the environment.
    let out = run(worker(
        &[
            "validate",
            "--config",
            config.to_str().unwrap(),
            "--concurrency",
            "5",
        ],
        &[("WORKER_CONCURRENCY", "4")],
    ))
    .await;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("WORKER_CONCURRENCY = \"5\" (flag)"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_stops_the_start_naming_the_closest_known_one() {
    let config = file("wxpipe.toml", "[worker]\nconcurency = 3\n");
    let out = run(worker(
        &[],
        &[
            ("WXPIPE_CONFIG", config.to_str().unwrap()),
            ("KAFKA_BROKERS", "127.0.0.1:1"),
            ("REDIS_URL", "memory://"),
        ],
    ))
    .await;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("concurency") && said.contains("[worker] concurrency"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_names_every_problem_and_exits_2() {
    let out = run(worker(
        &["validate"],
        &[
            ("KAFKA_BROKERS", "127.0.0.1:9092"),
            ("WORKER_MAX_ATTEMPTS", "0"),
            ("REDIS_URL_FILE", "/nonexistent/wxpipe-redis-url"),
        ],
    ))
    .await;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    for setting in ["REDIS_URL_FILE", "WORKER_MAX_ATTEMPTS"] {
        assert!(said.contains(setting), "{setting} in:\n{said}");
    }
}
