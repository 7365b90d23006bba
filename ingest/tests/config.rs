//! The configuration as operators give it, through the `ingest` binary: `REDIS_URL` fails
//! closed beside Kafka, the config file (`--config`, `WXPIPE_CONFIG`) and its precedence,
//! secrets from files, and `ingest validate [--connect]`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use testkit::{printed as text, run_to_end as run};

/// The ingest binary with none of the environment's settings that would change the test.
const INGEST: testkit::Bare = testkit::Bare {
    program: env!("CARGO_BIN_EXE_ingest"),
    unset: "WECHAT_TOKEN",
    admin_listen: "INGEST_ADMIN_LISTEN",
};

fn ingest(args: &[&str], envs: &[(&str, &str)]) -> Command {
    INGEST.command(args, envs)
}

fn file(name: &str, content: &str) -> PathBuf {
    testkit::temp_file("wxpipe-config", name, content)
}

/// An ingress on a free port (`RUST_LOG=warn`), once it answers: with `args` and `envs`.
async fn serving(args: &[&str], envs: &[(&str, &str)]) -> (Ingest, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut envs = envs.to_vec();
    envs.extend([("INGEST_LISTEN", listen.as_str()), ("RUST_LOG", "warn")]);
    let ingest = Ingest(
        ingest(args, &envs)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_up(port).await;
    (ingest, port)
}

/// A URL verification (GET) of `path` on `port`, signed with `token`, echoing `echostr`.
async fn verify(
    port: u16,
    path: &str,
    token: &str,
    nonce: &str,
    echostr: &str,
) -> reqwest::Response {
    let query = TestApp::signed_query(token, nonce);
    reqwest::get(format!(
        "http://127.0.0.1:{port}{path}?{query}&echostr={echostr}"
    ))
    .await
    .unwrap()
}

/// A port nothing listens on.
fn closed() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_without_redis_url_stops_the_start_naming_it() {
    let brokers = closed();
    let out = run(ingest(
        &[],
        &[("KAFKA_BROKERS", &brokers), ("WECHAT_TOKEN", "t")],
    ))
    .await;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("REDIS_URL") && said.contains("memory://") && said.contains("redis://"),
        "{said}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1,
        "one line: {said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_sets_settings_and_the_environment_and_flags_override_it() {
    let config = file(
        "wxpipe.toml",
        "[ingest]\npath = \"/from-file\"\nmax_in_flight = 7\nread_timeout_ms = 1234\n\
         [kafka]\nbrokers = \"file-broker:9092\"\n[redis]\nurl = \"memory://\"\n\
         [wechat]\ntoken = \"file-token\"\n[worker]\nroles = [\"unbind\", \"location\"]\n",
    );
    let config = config.to_str().unwrap();
    // The flag after the subcommand, the file by flag.
    let out = run(ingest(
        &["validate", "--config", config, "--path", "/from-flag"],
        &[("INGEST_MAX_IN_FLIGHT", "8")],
    ))
    .await;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    for line in [
        "INGEST_PATH = \"/from-flag\" (flag)",
        "INGEST_MAX_IN_FLIGHT = \"8\" (env)",
        "INGEST_READ_TIMEOUT_MS = \"1234\" (file)",
        "KAFKA_BROKERS = \"file-broker:9092\" (file)",
        "REDIS_URL = \"memory://\" (file)",
        "INGEST_LISTEN = \"0.0.0.0:8080\" (default)",
    ] {
        assert!(said.contains(line), "{line} in:\n{said}");
    }
    assert!(
        said.contains("memory://") && said.contains("WARN"),
        "memory:// beside Kafka is warned about: {said}"
    );
    assert!(!said.contains("file-token"), "{said}");
    // The file by WXPIPE_CONFIG, the same.
    let out = run(ingest(&["validate"], &[("WXPIPE_CONFIG", config)])).await;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("INGEST_PATH = \"/from-file\" (file)"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_or_section_stops_the_start_naming_the_closest_known_one() {
    for (content, named, closest) in [
        (
            "[ingest]\nmax_inflight = 1\n",
            "max_inflight",
            "[ingest] max_in_flight",
        ),
        ("[kafak]\nbrokers = \"x\"\n", "[kafak]", "[kafka]"),
        ("[redis]\nURL = \"memory://\"\n", "URL", "[redis] url"),
    ] {
        let config = file("wxpipe.toml", content);
        let out = run(ingest(
            &[],
            &[
                ("WXPIPE_CONFIG", config.to_str().unwrap()),
                ("WECHAT_TOKEN", "t"),
                ("INGEST_LISTEN", &closed()),
            ],
        ))
        .await;
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{content}: {said}");
        assert!(said.contains(named) && said.contains(closest), "{said}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_property_with_a_comma_reaches_librdkafka_whole() {
    // librdkafka refuses this value, and its refusal quotes what it was given: whole, not
    // split at the comma into an entry that is not key=value.
    let config = file(
        "wxpipe.toml",
        "[kafka]\nbrokers = \"127.0.0.1:1\"\n[redis]\nurl = \"memory://\"\n\
         [kafka.config]\n\"security.protocol\" = \"ssl,plaintext\"\n",
    );
    let out = run(ingest(
        &["--config", config.to_str().unwrap()],
        &[("WECHAT_TOKEN", "t"), ("INGEST_LISTEN", &closed())],
    ))
    .await;
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("ssl,plaintext") && !said.contains("not key=value"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_comes_from_a_file_without_its_trailing_newline() {
    let token = file("token", "token-from-file\n");
    let (_ingest, port) = serving(&[], &[("WECHAT_TOKEN_FILE", token.to_str().unwrap())]).await;
    let response = verify(port, "/wechat", "token-from-file", "n1", "hello").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "hello");
    let response = verify(port, "/wechat", "token-from-file\n", "n2", "hello").await;
    assert_eq!(response.status(), 403, "the newline is not the token's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_masks_every_secret() {
    let appsecret = file("appsecret", "hunter2-appsecret-file\n");
    let sasl = file("sasl", "hunter2-sasl-file\n");
    let config = file(
        "wxpipe.toml",
        &format!(
            "[kafka.config]\n\"sasl.password_file\" = \"{}\"\n\"sasl.jaas.config\" = \"a,b=hunter2-jaas\"\n\
             [accounts.shop]\ntoken = \"hunter2-shop-token\"\nappsecret = \"hunter2-shop-secret\"\noriginal_id = \"gh_shop\"\n",
            sasl.display()
        ),
    );
    let out = run(ingest(
        &["validate", "--config", config.to_str().unwrap()],
        &[
            ("KAFKA_BROKERS", "127.0.0.1:9092"),
            ("REDIS_URL", "redis://user:hunter2-redis@127.0.0.1:6379/0"),
            ("WECHAT_TOKEN", "hunter2-token"),
            ("WECHAT_ORIGINAL_ID", "gh_default"),
            ("WECHAT_APPID", "wxdefault"),
            (
                "WECHAT_ENCODING_AES_KEY",
                "hunter2hunter2hunter2hunter2hunter2hunter2h",
            ),
            ("WECHAT_APPSECRET_FILE", appsecret.to_str().unwrap()),
            ("KAFKA_PRODUCER_CONFIG", "ssl.key.password=hunter2-key"),
        ],
    ))
    .await;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(!said.contains("hunter2"), "a secret printed:\n{said}");
    for shown in [
        "WECHAT_TOKEN = \"***\" (env)",
        "REDIS_URL = \"redis://user:***@127.0.0.1:6379/0\" (env)",
        "sasl.password_file=",
        "[accounts.shop]",
    ] {
        assert!(said.contains(shown), "{shown} in:\n{said}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_names_every_problem_and_exits_2() {
    let out = run(ingest(
        &["validate"],
        &[
            ("KAFKA_BROKERS", "127.0.0.1:9092"),
            ("WECHAT_APPSECRET_FILE", "/nonexistent/wxpipe-appsecret"),
            ("INGEST_PATH", "wechat"),
            ("REDIS_KEY_PREFIX", "{wx}"),
            ("KAFKA_PRODUCER_CONFIG", "linger.ms"),
        ],
    ))
    .await;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    // Each problem on a line of its own, not only the first the start would stop at.
    let problems: Vec<&str> = said.lines().filter(|l| l.starts_with("problem")).collect();
    for setting in [
        "REDIS_URL",
        "WECHAT_TOKEN",
        "WECHAT_APPSECRET_FILE",
        "INGEST_PATH",
        "REDIS_KEY_PREFIX",
        "KAFKA_PRODUCER_CONFIG",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(setting)),
            "{setting} in the problems:\n{said}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_connect_says_what_cannot_be_reached_and_exits_1() {
    let (kafka, redis) = (closed(), closed());
    let out = run(ingest(
        &["validate", "--connect"],
        &[
            ("KAFKA_BROKERS", &kafka),
            ("REDIS_URL", &format!("redis://{redis}")),
            ("WECHAT_TOKEN", "t"),
        ],
    ))
    .await;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("kafka") && said.contains("redis"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_connect_reaches_kafka_and_redis() {
    let redis = testkit::RedisServer::start();
    let kafka = testkit::Kafka::mock(&[]);
    let out = run(ingest(
        &["validate", "--connect"],
        &[
            ("KAFKA_BROKERS", &kafka.brokers()),
            ("REDIS_URL", &redis.url()),
            ("WECHAT_TOKEN", "t"),
        ],
    ))
    .await;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("kafka: ok") && said.contains("redis: ok"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_of_the_config_file_are_served_with_their_tokens_from_files() {
    let token = file("shop-token", "shop-token-from-file\n");
    let config = file(
        "wxpipe.toml",
        &format!(
            "[accounts.shop]\ntoken_file = \"{}\"\noriginal_id = \"gh_shop\"\n",
            token.display()
        ),
    );
    let (_ingest, port) = serving(&["--config", config.to_str().unwrap()], &[]).await;
    let response = verify(port, "/wechat/shop", "shop-token-from-file", "n1", "hi").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_takes_a_component_alone_and_names_its_problems() {
    let key = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";
    let component = [
        ("WECHAT_COMPONENT_APPID", "wxcomponent"),
        ("WECHAT_COMPONENT_TOKEN", "component-token"),
        ("WECHAT_COMPONENT_ENCODING_AES_KEY", key),
    ];
    let out = run(ingest(&["validate"], &component)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for (without, named) in [
        (0, "WECHAT_COMPONENT_APPID"),
        (1, "WECHAT_COMPONENT_TOKEN"),
        (2, "WECHAT_COMPONENT_ENCODING_AES_KEY"),
    ] {
        let mut envs = component.to_vec();
        envs.remove(without);
        let out = run(ingest(&["validate"], &envs)).await;
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{said}");
        assert!(
            said.lines()
                .any(|l| l.starts_with("problem") && l.contains(named)),
            "{named} in the problems:\n{said}"
        );
    }
    let mut envs = component.to_vec();
    envs[2].1 = "too-short";
    let out = run(ingest(&["validate"], &envs)).await;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("encoding_aes_key"), "{said}");
    // In INGEST_ACCOUNTS, and in two places at once.
    let accounts = file(
        "accounts.toml",
        "[component]\nappid = \"wxc\"\ntoken = \"t\"\nencoding_aes_key = \"short\"\n",
    );
    let accounts = accounts.to_str().unwrap();
    let out = run(ingest(&["validate"], &[("INGEST_ACCOUNTS", accounts)])).await;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.lines().any(|l| l.starts_with("problem")
            && l.contains("[component]")
            && l.contains("encoding_aes_key")),
        "{said}"
    );
    let accounts = file(
        "accounts.toml",
        &format!("[component]\nappid = \"wxc\"\ntoken = \"t\"\nencoding_aes_key = \"{key}\"\n"),
    );
    let mut envs = component.to_vec();
    envs.push(("INGEST_ACCOUNTS", accounts.to_str().unwrap()));
    let out = run(ingest(&["validate"], &envs)).await;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("both set"), "{said}");
    // Neither an account nor a component: the error names both ways.
    let out = run(ingest(&["validate"], &[])).await;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("WECHAT_COMPONENT_*"), "{said}");
}
