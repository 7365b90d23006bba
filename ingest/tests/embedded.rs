//! The README's first command: `ingest` with no Kafka or Redis runs the whole pipeline, the
//! workers included, through the real binary.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use testkit::FakeWeChat;

/// The ingest binary with `envs`, and not the environment's Kafka and Redis: the embedded
/// default unless `envs` names them.
fn ingest(envs: &[(&str, String)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ingest"));
    command
        .env_remove("KAFKA_BROKERS")
        .env_remove("REDIS_URL")
        .envs(envs.iter().map(|(name, value)| (name, value)));
    command
}

/// SIGTERM: a clean, prompt exit.
async fn stop_cleanly(child: &mut std::process::Child) {
    let status = testkit::terminate(child, Duration::from_secs(20))
        .await
        .expect("exited after SIGTERM");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_command_runs_the_whole_pipeline() {
    let wechat = FakeWeChat::start().await;
    let port = free_port();
    let admin = free_port();
    let mut child = ingest(&[
        ("INGEST_LISTEN", format!("127.0.0.1:{port}")),
        ("INGEST_ADMIN_LISTEN", format!("127.0.0.1:{admin}")),
        ("WECHAT_TOKEN", TOKEN.to_owned()),
        ("WECHAT_APPID", "wxdemo".to_owned()),
        ("WECHAT_APPSECRET", "demo-secret".to_owned()),
        ("WECHAT_API_BASE", wechat.base()),
        ("RUST_LOG", "info".to_owned()),
        ("NO_COLOR", "1".to_owned()),
    ])
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let stdout = child.stdout.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = std::sync::Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&line);
            sink.lock().unwrap().push('\n');
        }
    });
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    // Up to 30 s: a debug build starting a broker and three consumer groups on a busy
    // machine was once seen taking over 10.
    for _ in 0..300 {
        if client
            .get(format!("http://127.0.0.1:{admin}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !up {
        let _ = child.kill();
    }
    assert!(up, "ingest came up: {}", log.lock().unwrap());
    assert!(
        log.lock().unwrap().contains("EMBEDDED MODE"),
        "it says so at start-up"
    );

    let xml = format!(
        "<xml><ToUserName><![CDATA[gh_demo]]></ToUserName><FromUserName><![CDATA[oNewFan]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event></xml>",
        now()
    );
    let query = TestApp::signed_query(TOKEN, "embedded");
    let response = client
        .post(format!("{base}/wechat?{query}"))
        .body(xml)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "");
    assert!(
        eventually(Duration::from_secs(20), || wechat.sends_to("oNewFan") == 1).await,
        "the in-process welcome worker sent a welcome: {}",
        log.lock().unwrap()
    );
    // Both binaries' metrics, in one process: each HELP names the labels its series carry.
    let metrics = client
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    stop_cleanly(&mut child).await;
    assert_help_names_the_labels(&metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_file_alone_is_enough_to_start() {
    // The README: WECHAT_TOKEN is required unless INGEST_ACCOUNTS is set.
    let kafka = testkit::Kafka::start(&[]);
    let accounts = accounts_file(&format!("[accounts.shop]\ntoken = \"{TOKEN}\"\n"));
    let port = free_port();
    let mut child = ingest(&[
        ("INGEST_LISTEN", format!("127.0.0.1:{port}")),
        ("INGEST_ADMIN_LISTEN", String::new()),
        ("INGEST_ACCOUNTS", accounts.display().to_string()),
        ("KAFKA_BROKERS", kafka.brokers()),
        // With Kafka, the store is named: memory:// written out.
        ("REDIS_URL", "memory://".to_owned()),
        ("KAFKA_TOPIC_PREFIX", unique("t")),
    ])
    .env_remove("WECHAT_TOKEN")
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut status = None;
    for _ in 0..100 {
        if let Some(exit) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            panic!("ingest exited ({exit}): {stderr}");
        }
        let query = TestApp::signed_query(TOKEN, "n");
        if let Ok(response) = client
            .get(format!("{base}/wechat/shop?{query}&echostr=up"))
            .send()
            .await
        {
            status = Some((response.status().as_u16(), response.text().await.unwrap()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, Some((200, "up".to_owned())));
    stop_cleanly(&mut child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_refuses_to_start_when_its_workers_cannot() {
    // A consumer property librdkafka refuses: the workers cannot start, so neither does the
    // ingress (it used to say "workers running in-process" and answer ready).
    let port = free_port();
    let mut command = ingest(&[
        ("INGEST_LISTEN", format!("127.0.0.1:{port}")),
        ("INGEST_ADMIN_LISTEN", String::new()),
        ("WECHAT_TOKEN", TOKEN.to_owned()),
        ("KAFKA_CONSUMER_CONFIG", "no.such.property=1".to_owned()),
    ]);
    let out = testkit::output_within(&mut command, Duration::from_secs(20))
        .await
        .expect("the ingress kept running without its workers");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("KAFKA_CONSUMER_CONFIG"), "{stderr}");
}
