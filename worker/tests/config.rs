//! The configuration as operators give it, through the `worker` binary: `REDIS_URL` fails
//! closed beside Kafka, the config file both binaries share, secrets from files, and
//! `worker validate [--connect]`.

mod common;

use std::path::PathBuf;

use common::*;

/// The worker binary with none of the environment's settings that would change the test.
const WORKER: testkit::Bare = testkit::Bare {
    program: env!("CARGO_BIN_EXE_worker"),
    unset: "WECHAT_APPSECRET",
    admin_listen: "WORKER_ADMIN_LISTEN",
};

fn file(name: &str, content: &str) -> PathBuf {
    testkit::temp_file("wxpipe-worker-config", name, content)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_without_redis_url_stops_the_start_naming_it() {
    let brokers = format!("127.0.0.1:{}", testkit::free_port());
    let said = WORKER
        .exits_with(2, &[], &[("KAFKA_BROKERS", &brokers)])
        .await;
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
    let said = WORKER
        .exits_with(
            0,
            &[
                "validate",
                "--connect",
                "--config",
                config.to_str().unwrap(),
            ],
            &[("WORKER_CONCURRENCY", "4")],
        )
        .await;
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
    let said = WORKER
        .exits_with(
            0,
            &[
                "validate",
                "--config",
                config.to_str().unwrap(),
                "--concurrency",
                "5",
            ],
            &[("WORKER_CONCURRENCY", "4")],
        )
        .await;
    assert!(said.contains("WORKER_CONCURRENCY = \"5\" (flag)"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_stops_the_start_naming_the_closest_known_one() {
    let config = file("wxpipe.toml", "[worker]\nconcurency = 3\n");
    let said = WORKER
        .exits_with(
            2,
            &[],
            &[
                ("WXPIPE_CONFIG", config.to_str().unwrap()),
                ("KAFKA_BROKERS", "127.0.0.1:1"),
                ("REDIS_URL", "memory://"),
            ],
        )
        .await;
    assert!(
        said.contains("concurency") && said.contains("[worker] concurrency"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_names_every_problem_and_exits_2() {
    let said = WORKER
        .exits_with(
            2,
            &["validate"],
            &[
                ("KAFKA_BROKERS", "127.0.0.1:9092"),
                ("WORKER_MAX_ATTEMPTS", "0"),
                ("REDIS_URL_FILE", "/nonexistent/wxpipe-redis-url"),
            ],
        )
        .await;
    for setting in ["REDIS_URL_FILE", "WORKER_MAX_ATTEMPTS"] {
        assert!(said.contains(setting), "{setting} in:\n{said}");
    }
}
