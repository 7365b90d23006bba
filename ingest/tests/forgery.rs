//! Attacks through the real server: captured signatures carrying forged bodies, downgrades,
//! future timestamps, unauthenticated exhaustion, foreign source addresses, and events the
//! identity must not merge.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

fn push(to: &str, from: &str, create_time: i64, event: &str, more: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[{from}]]></FromUserName>\
         <CreateTime>{create_time}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[{event}]]></Event>{more}</xml>"
    )
}

/// How long after its records are read a topic must still hold only those.
const SETTLE: Duration = Duration::from_millis(300);

/// The account in safe mode: `wxapp`, with the test's key.
fn safe_mode(config: &mut ingest::Config) {
    config.shared.appid = Some("wxapp".into());
    config.encoding_aes_key = Some(ingest::config::Secret::new(KEY));
}

/// [`safe_mode`], plaintext still accepted: how an operator switches modes in WeChat's console.
fn switching_to_safe_mode(config: &mut ingest::Config) {
    safe_mode(config);
    config.accept_plaintext = true;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_with_a_key_refuses_plaintext_unless_told_to_accept_it() {
    // A captured safe-mode query with `encrypt_type` and `msg_signature` dropped still has a
    // valid `signature`: it must not carry a plaintext body.
    let redis = RedisServer::start();
    let app = TestApp::spawn_configured(&redis.url(), safe_mode).await;
    let forged = push("gh_test", "victim", now(), "unsubscribe", "");
    let (status, reason) = app.post_push(&forged).await;
    assert_eq!(status, 403, "{reason}");
    assert!(reason.contains("plaintext"), "{reason}");
    assert_eq!(app.count_all(), 0);
    app.stop().await;

    // While switching modes in WeChat's console, the operator lets plaintext through.
    let app = TestApp::spawn_configured(&redis.url(), switching_to_safe_mode).await;
    assert_eq!(app.post_push(&forged).await.0, 200);
    assert_eq!(app.read("event.unsubscribe", 1).len(), 1);
    app.stop().await;

    // The same per account of the accounts file.
    let mut config = test_config(&redis.url());
    config.token = None;
    config.shared.accounts_file = Some(accounts_file(&format!(
        "[accounts.strict]\ntoken = \"{TOKEN}\"\nappid = \"wx1\"\nencoding_aes_key = \"{KEY}\"\noriginal_id = \"gh_strict\"\n\n\
         [accounts.lax]\ntoken = \"{TOKEN}\"\nappid = \"wx2\"\nencoding_aes_key = \"{KEY}\"\naccept_plaintext = true\noriginal_id = \"gh_lax\"\n"
    )));
    let app = TestApp::spawn_with(config).await;
    let query = || TestApp::signed_query(TOKEN, &unique("n"));
    let to = |account: &str| push(account, "victim", now(), "unsubscribe", "");
    assert_eq!(
        app.post_to("/wechat/strict", &query(), &to("gh_strict"))
            .await
            .0,
        403
    );
    assert_eq!(
        app.post_to("/wechat/lax", &query(), &to("gh_lax")).await.0,
        200
    );
    assert_eq!(app.read("event.unsubscribe", 1).len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_query_carries_no_other_body_whatever_its_to_user_name() {
    let (_redis, app) = on_redis().await;
    let query = TestApp::signed_query(TOKEN, "captured");
    let genuine = push("gh_test", "fan", now(), "subscribe", "");
    assert_eq!(app.post_with_query(&query, &genuine).await.0, 200);
    // The binding is keyed by the routed account, not by the body's ToUserName.
    for to in ["gh_test", "gh_other"] {
        let forged = push(to, "victim", now(), "unsubscribe", "");
        let (status, reason) = app.post_with_query(&query, &forged).await;
        assert_eq!(status, 403, "ToUserName {to}: {reason}");
    }
    // WeChat's retry repeats the body, and passes.
    assert_eq!(app.post_with_query(&query, &genuine).await.0, 200);
    assert_eq!(app.count("event.unsubscribe"), 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_the_binding_is_checked_in_memory() {
    let port = free_port();
    let app = TestApp::spawn(&format!("redis://127.0.0.1:{port}/")).await;
    let query = TestApp::signed_query(TOKEN, "captured-offline");
    let genuine = push("gh_test", "fan", now(), "subscribe", "");
    assert_eq!(app.post_with_query(&query, &genuine).await.0, 200);
    let forged = push("gh_test", "victim", now(), "unsubscribe", "");
    let (status, reason) = app.post_with_query(&query, &forged).await;
    assert_eq!(status, 403, "{reason}");
    assert_eq!(
        app.post_with_query(&query, &genuine).await.0,
        200,
        "a retry"
    );
    assert_eq!(app.count("event.unsubscribe"), 0);

    // Redis comes back without the binding made while it was down: still refused here.
    let mut redis = RedisServer::start_on(port);
    assert!(app.wait_ready(Duration::from_secs(5)).await);
    let (status, reason) = app.post_with_query(&query, &forged).await;
    assert_eq!(status, 403, "after Redis is back: {reason}");

    // A binding made while Redis answered is remembered here too, for when it stops.
    let query = TestApp::signed_query(TOKEN, "captured-online");
    let genuine = push("gh_test", "fan2", now(), "subscribe", "");
    assert_eq!(app.post_with_query(&query, &genuine).await.0, 200);
    redis.stop();
    let (status, reason) = app.post_with_query(&query, &forged).await;
    assert_eq!(status, 403, "{reason}");
    assert_eq!(app.count("event.unsubscribe"), 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_time_ahead_of_the_signed_timestamp_is_refused() {
    let app = TestApp::spawn("memory://").await;
    let ts = now();
    let query = TestApp::signed_query_at(TOKEN, &ts.to_string(), "future");
    for create_time in [9_000_000_000, ts + 61] {
        let forged = push("gh_test", "victim", create_time, "unsubscribe", "");
        let (status, reason) = app.post_with_query(&query, &forged).await;
        assert_eq!(status, 403, "{create_time}: {reason}");
        assert!(reason.contains("CreateTime"), "{reason}");
    }
    // Up to 60 s ahead (clocks differ), and any time before (WeChat delivers late), pass.
    for (nonce, create_time) in [("n1", ts + 60), ("n2", ts - 86_400)] {
        let query = TestApp::signed_query_at(TOKEN, &ts.to_string(), nonce);
        let genuine = push("gh_test", "fan", create_time, "unsubscribe", "");
        assert_eq!(app.post_with_query(&query, &genuine).await.0, 200);
    }
    assert_eq!(app.read("event.unsubscribe", 2).len(), 2);
    app.stop().await;
}

/// An ingress without Redis that gives a request `read_timeout_ms` to arrive, its config as
/// `configure` leaves it: for the slow-connection attacks.
async fn reading_for(read_timeout_ms: u64, configure: impl FnOnce(&mut ingest::Config)) -> TestApp {
    TestApp::spawn_configured("memory://", |config| {
        config.read_timeout_ms = read_timeout_ms;
        configure(config);
    })
    .await
}

/// Sends raw bytes on a new connection and returns it.
async fn connect_and_send(app: &TestApp, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// `n` connections, the `i`th having sent `bytes(i)`.
async fn open_many(app: &TestApp, n: usize, bytes: impl Fn(usize) -> String) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for i in 0..n {
        streams.push(connect_and_send(app, bytes(i).as_bytes()).await);
    }
    streams
}

/// The head of a push to `/wechat?{query}` that announces a body of `length` bytes.
fn push_head(query: &str, length: usize) -> String {
    format!("POST /wechat?{query} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n")
}

/// The status line of the answer on `stream`, within `within`.
async fn status_line(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut buf = vec![0; 1024];
    let n = tokio::time::timeout(within, stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    head.lines().next().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_signature_is_refused_before_the_body_is_read() {
    let app = reading_for(5000, |_| {}).await;
    let bad = TestApp::signed_query("not-the-token", "x");
    let mut stream = connect_and_send(&app, push_head(&bad, 1000).as_bytes()).await;
    let line = status_line(&mut stream, Duration::from_secs(2)).await;
    assert_eq!(line.as_deref(), Some("HTTP/1.1 403 Forbidden"), "at once");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_send_their_body_hold_no_permit() {
    let app = reading_for(10_000, |config| config.max_in_flight = 4).await;
    // A valid (replayed) query, headers only: the body never comes.
    let query = TestApp::signed_query(TOKEN, "replayed");
    let silent = open_many(&app, 12, |_| push_head(&query, 500)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let genuine = push("gh_test", "fan", now(), "subscribe", "");
    let (status, reason) = app.post_push(&genuine).await;
    assert_eq!(status, 200, "{reason}");
    assert_eq!(app.read("event.subscribe", 1).len(), 1);
    drop(silent);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_past_the_limit_are_closed_first() {
    let app = reading_for(30_000, |config| config.max_connections = 8).await;
    let query = TestApp::signed_query(TOKEN, "slow");
    // 40 connections: idle ones, and ones stuck in their headers or their body.
    let mut held = open_many(&app, 40, |i| match i % 3 {
        0 => String::new(),
        1 => "POST /wechat HTTP/1.1\r\nHost: x\r\n".to_owned(),
        _ => push_head(&query, 500) + "<xml>",
    })
    .await;
    // Genuine pushes still get through, each on a new connection.
    for i in 0..5 {
        let client = reqwest::Client::new();
        let response = client
            .post(app.url(&format!(
                "/wechat?{}",
                TestApp::signed_query(TOKEN, &unique("n"))
            )))
            .body(push("gh_test", &format!("fan{i}"), now(), "subscribe", ""))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // The server closed all but a few of the held connections.
    let mut closed = 0;
    for stream in &mut held {
        let mut buf = [0u8; 256];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await
        {
            closed += 1;
        }
    }
    assert!(closed >= 40 - 8, "only {closed} of 40 closed");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_from_outside_the_allowlist_are_refused() {
    let genuine = || push("gh_test", &unique("fan"), now(), "subscribe", "");
    let forwarded = |app: &TestApp, xff: &str| {
        app.client
            .post(app.url(&format!(
                "/wechat?{}",
                TestApp::signed_query(TOKEN, &unique("n"))
            )))
            .header("X-Forwarded-For", xff.to_owned())
            .body(genuine())
    };

    // Straight from 127.0.0.1, outside the list: 403, with or without a forged header.
    let mut config = test_config("memory://");
    config.allowed_ips = vec!["10.9.0.0/16".parse().unwrap()];
    let app = TestApp::spawn_with(config).await;
    assert_eq!(app.post_push(&genuine()).await.0, 403);
    let response = forwarded(&app, "10.9.9.9").send().await.unwrap();
    assert_eq!(
        response.status(),
        403,
        "the header is ignored without trusted proxies"
    );
    app.stop().await;

    // Behind a trusted proxy, the rightmost untrusted hop is the client.
    let mut config = test_config("memory://");
    config.allowed_ips = vec!["10.9.0.0/16".parse().unwrap()];
    config.trusted_proxies = vec![
        "127.0.0.0/8".parse().unwrap(),
        "10.1.0.0/16".parse().unwrap(),
    ];
    let app = TestApp::spawn_with(config).await;
    for (xff, status) in [
        ("10.9.9.9", 200),
        ("6.6.6.6, 10.9.9.9", 200),
        ("10.9.9.9, 10.1.2.3", 200),
        ("10.9.9.9, 6.6.6.6", 403),
        ("10.9.9.9, 6.6.6.6, 10.1.2.3", 403),
        ("not-an-address", 403),
    ] {
        let response = forwarded(&app, xff).send().await.unwrap();
        assert_eq!(response.status(), status, "X-Forwarded-For: {xff}");
    }
    assert_eq!(
        app.post_push(&genuine()).await.0,
        403,
        "no header: the proxy itself"
    );
    assert_eq!(app.read("event.subscribe", 3).len(), 3);
    app.stop().await;

    // A list that holds the address lets it through.
    let app = TestApp::spawn_configured("memory://", |config| {
        config.allowed_ips = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    assert_eq!(app.post_push(&genuine()).await.0, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_differ_in_any_field_are_never_merged() {
    let (_redis, app) = on_redis().await;
    // One user's events of one second, each pair alike but for one field.
    let t = now();
    let event = |event: &str, more: &str| push("gh_test", "u1", t, event, more);
    let cases = [
        (
            "event.kf_create_session",
            event("kf_create_session", "<KfAccount>a@x</KfAccount>"),
            event("kf_create_session", "<KfAccount>b@x</KfAccount>"),
        ),
        (
            "event.other",
            event("user_get_card", "<CardId>c</CardId><UserCardCode>1</UserCardCode>"),
            event("user_get_card", "<CardId>c</CardId><UserCardCode>2</UserCardCode>"),
        ),
        (
            "event.subscribe_msg_sent_event",
            event("subscribe_msg_sent_event",
                 "<SubscribeMsgSentEvent><List><TemplateId>t</TemplateId><MsgID>1</MsgID><ErrorCode>0</ErrorCode><ErrorStatus>success</ErrorStatus></List></SubscribeMsgSentEvent>"),
            event("subscribe_msg_sent_event",
                 "<SubscribeMsgSentEvent><List><TemplateId>t</TemplateId><MsgID>2</MsgID><ErrorCode>0</ErrorCode><ErrorStatus>success</ErrorStatus></List></SubscribeMsgSentEvent>"),
        ),
    ];
    for (topic, first, second) in &cases {
        assert_eq!(app.post_push(first).await.0, 200);
        assert_eq!(app.post_push(second).await.0, 200);
        // WeChat's retry of either repeats every field: the same id, nothing published.
        assert_eq!(app.post_push(first).await.0, 200);
        let records = app.read(topic, 2);
        assert_eq!(records.len(), 2, "{topic}");
        assert_ne!(records[0].1.id, records[1].1.id);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.count_all(), 6, "two of each, no retry published");
    app.stop().await;
}

/// The tenant boundary: whoever holds one account's token speaks for that account only. A
/// push is its routed account's, so a `ToUserName` naming another account is refused before
/// anything is claimed or published (a forged unsubscribe would delete that account's binding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_accounts_token_never_speaks_for_another() {
    let mut config = test_config("memory://");
    config.shared.original_id = Some("gh_default".into());
    config.shared.accounts_file = Some(accounts_file(
        "[accounts.shop]\ntoken = \"shop-token\"\noriginal_id = \"gh_shop\"\n",
    ));
    let app = TestApp::spawn_binary(config).await;
    // Signed with the WECHAT_* account's token, naming the shop: refused.
    let (status, reason) = app
        .post_push(&push("gh_shop", "victim", now(), "unsubscribe", ""))
        .await;
    assert_eq!(status, 403, "{reason}");
    // Signed with the shop's token on its own route, naming the WECHAT_* account: refused.
    let query = TestApp::signed_query("shop-token", &unique("n"));
    let forged = push("gh_default", "victim", now(), "unsubscribe", "");
    assert_eq!(app.post_to("/wechat/shop", &query, &forged).await.0, 403);
    assert_eq!(app.count_all(), 0, "nothing published for a 403");
    // Each account's own pushes pass.
    let own = push("gh_default", "fan", now(), "subscribe", "");
    assert_eq!(app.post_push(&own).await.0, 200);
    let query = TestApp::signed_query("shop-token", &unique("n"));
    let own = push("gh_shop", "fan", now(), "subscribe", "");
    assert_eq!(app.post_to("/wechat/shop", &query, &own).await.0, 200);
    let accounts = app.accounts("event.subscribe", 2);
    assert_eq!(accounts, ["gh_default", "gh_shop"]);
    app.stop().await;
}

/// With more than one account, an account without its `original_id` could be named by any
/// push to it: the start is refused, naming the account and the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_accounts_without_their_original_ids_refuse_the_start() {
    let kafka = Kafka::start(&[]);
    let accounts =
        accounts_file("[accounts.shop]\ntoken = \"shop-token\"\noriginal_id = \"gh_shop\"\n");
    let stderr = refused_start(&[
        ("INGEST_ACCOUNTS", accounts.display().to_string()),
        ("KAFKA_BROKERS", kafka.brokers()),
        ("REDIS_URL", "memory://".to_owned()),
    ])
    .await;
    assert!(stderr.contains("WECHAT_ORIGINAL_ID"), "{stderr}");
}

/// `INGEST_DEDUP_TTL` below the replay window is floored: a captured plaintext query must not
/// carry a new body once a short-lived binding expires while its timestamp still passes, and
/// WeChat's last retry must still find its claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_dedup_ttl_never_reopens_a_captured_query() {
    let (_redis, app) = on_redis_with(|config| config.dedup_ttl_secs = Some(1)).await;
    let query = TestApp::signed_query(TOKEN, "captured");
    let genuine = push("gh_test", "fan", now(), "subscribe", "");
    assert_eq!(app.post_with_query(&query, &genuine).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let forged = push("gh_test", "victim", now(), "unsubscribe", "");
    let (status, reason) = app.post_with_query(&query, &forged).await;
    assert_eq!(
        status, 403,
        "the binding outlived INGEST_DEDUP_TTL=1: {reason}"
    );
    assert_eq!(
        app.post_with_query(&query, &genuine).await.0,
        200,
        "a retry"
    );
    let why = "a retry after INGEST_DEDUP_TTL is still the same event";
    app.read_exactly("event.subscribe", 1, SETTLE, why).await;
    assert_eq!(app.count("event.unsubscribe"), 0);
    app.stop().await;
}

/// While an account accepts plaintext (switching to safe mode), an encrypted push's
/// (timestamp, nonce) is bound too: its captured query, stripped of `encrypt_type` and
/// `msg_signature`, must not carry a plaintext body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_pushs_query_carries_no_plaintext_body() {
    let (_redis, app) = on_redis_with(switching_to_safe_mode).await;
    let key = wechat::decrypt::AesKey::parse(KEY).unwrap();
    let signer = wechat::Signer::encrypted(TOKEN, key, "wxapp");
    let ts = now().to_string();
    let xml = push("gh_test", "fan", now(), "subscribe", "");
    let genuine = signer.push(&xml, "gh_test", &ts, "captured-aes", [3; 16]);
    assert_eq!(
        app.post_with_query(&genuine.query, &genuine.body).await.0,
        200
    );
    let stripped = TestApp::signed_query_at(TOKEN, &ts, "captured-aes");
    let forged = push("gh_test", "victim", now(), "unsubscribe", "");
    let (status, reason) = app.post_with_query(&stripped, &forged).await;
    assert_eq!(status, 403, "{reason}");
    // WeChat's retry of the encrypted push passes, even encrypted afresh (another random
    // prefix, so another ciphertext) under the same (timestamp, nonce).
    assert_eq!(
        app.post_with_query(&genuine.query, &genuine.body).await.0,
        200
    );
    let again = signer.push(&xml, "gh_test", &ts, "captured-aes", [9; 16]);
    assert_ne!(again.body, genuine.body);
    assert_eq!(app.post_with_query(&again.query, &again.body).await.0, 200);
    assert_eq!(app.count("event.unsubscribe"), 0);
    app.read_exactly("event.subscribe", 1, SETTLE, "one push, retried twice")
        .await;
    app.stop().await;
}
