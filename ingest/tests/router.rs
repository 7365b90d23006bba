//! The whole HTTP router against arbitrary requests: methods, paths, queries, headers and
//! bodies, sent as raw HTTP/1.1 to the real server. Whatever arrives, the server answers
//! with a sensible status and never panics, and nothing reaches Kafka without a valid
//! signature.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use schemas::Topic;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone)]
enum Signature {
    Valid,
    WrongToken,
    Garbage(String),
    Missing,
}

#[derive(Debug, Clone)]
enum Body {
    /// A well-formed push (its `FromUserName` is unique to the case).
    Push {
        event: String,
        create_ahead: i64,
    },
    /// A well-formed push with one byte changed.
    Mutated {
        at: prop::sample::Index,
        byte: u8,
    },
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Case {
    method: String,
    path: String,
    signature: Signature,
    timestamp_offset: i64,
    nonce: String,
    extra_query: String,
    headers: Vec<(String, String)>,
    body: Body,
}

fn case() -> impl Strategy<Value = Case> {
    let method = prop_oneof![
        4 => Just("POST".to_owned()),
        1 => Just("GET".to_owned()),
        1 => "[A-Z]{1,8}",
    ];
    let path = prop_oneof![
        4 => Just("/wechat".to_owned()),
        1 => Just("/wechat/".to_owned()),
        1 => Just("/healthz".to_owned()),
        1 => "/[a-zA-Z0-9/%._~-]{0,24}",
    ];
    let signature = prop_oneof![
        4 => Just(Signature::Valid),
        1 => Just(Signature::WrongToken),
        1 => "[0-9a-fA-F]{0,44}".prop_map(Signature::Garbage),
        1 => Just(Signature::Missing),
    ];
    let timestamp_offset = prop_oneof![4 => Just(0i64), 1 => -1_000_000i64..1_000_000];
    let extra_query = prop_oneof![
        3 => Just(String::new()),
        1 => Just("&encrypt_type=aes&msg_signature=00".to_owned()),
        1 => "(&[a-z_]{1,12}=[a-zA-Z0-9%]{0,12}){1,3}",
    ];
    // Framing headers stay the test's own, so every request is one well-framed request.
    let header_name = "[a-z][a-z0-9-]{0,15}".prop_filter("framing", |n| {
        !matches!(
            n.as_str(),
            "content-length" | "transfer-encoding" | "connection" | "host" | "upgrade" | "expect"
        )
    });
    let headers = prop::collection::vec((header_name, "[ -~]{0,40}"), 0..4);
    let body = prop_oneof![
        3 => (
            prop_oneof![Just("subscribe".to_owned()), Just("unsubscribe".to_owned()), Just("CLICK".to_owned()), "[A-Za-z_]{1,12}"],
            prop_oneof![4 => Just(0i64), 1 => -100_000i64..100_000],
        )
            .prop_map(|(event, create_ahead)| Body::Push { event, create_ahead }),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, byte)| Body::Mutated { at, byte }),
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Body::Bytes),
    ];
    (
        method,
        path,
        signature,
        timestamp_offset,
        "[a-zA-Z0-9]{1,12}",
        extra_query,
        headers,
        body,
    )
        .prop_map(
            |(method, path, signature, timestamp_offset, nonce, extra_query, headers, body)| Case {
                method,
                path,
                signature,
                timestamp_offset,
                nonce,
                extra_query,
                headers,
                body,
            },
        )
}

fn push_xml(openid: &str, create_time: i64, event: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>\
         <CreateTime>{create_time}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[{event}]]></Event><EventKey><![CDATA[k]]></EventKey></xml>"
    )
}

/// The `FromUserName` written in a body, read without the parser under test.
fn from_user_name(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let rest = text.split_once("<FromUserName><![CDATA[")?.1;
    Some(rest.split_once("]]></FromUserName>")?.0.to_owned())
}

/// Sends one raw request and returns the status of the answer.
async fn send(addr: std::net::SocketAddr, head: String, body: &[u8]) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (403, 413) without reading the body, and close.
    let _ = stream.write_all(body).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer within 10 s");
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    status.unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"))
}

#[test]
fn arbitrary_requests_never_panic_and_publish_nothing_unsigned() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = runtime.block_on(async {
        let mut config = test_config("memory://");
        config.read_timeout_ms = 2000;
        TestApp::spawn_with(config).await
    });
    let counter = AtomicUsize::new(0);
    // The bodies of the pushes that were signed, sent to the account's path and answered
    // 200. A plaintext signature covers the timestamp and nonce, not the body, so a
    // mutated body under a valid signature is a genuine push whose `FromUserName` may
    // differ from the case's own.
    let accepted = Mutex::new(Vec::new());
    let mut runner = TestRunner::new(RunnerConfig {
        // 256 by default; `PROPTEST_CASES` runs more.
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    runner
        .run(&case(), |case| {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let openid = format!("p{n}");
            let timestamp = (now() + case.timestamp_offset).to_string();
            let token = match case.signature {
                Signature::WrongToken => "not-the-token",
                _ => TOKEN,
            };
            let signed = wechat::Signer::plaintext(token).signature(&timestamp, &case.nonce);
            let signature = match &case.signature {
                Signature::Valid | Signature::WrongToken => format!("signature={signed}&"),
                Signature::Garbage(garbage) => format!("signature={garbage}&"),
                Signature::Missing => String::new(),
            };
            let query = format!(
                "{signature}timestamp={timestamp}&nonce={}{}",
                case.nonce, case.extra_query
            );
            let body = match &case.body {
                Body::Push {
                    event,
                    create_ahead,
                } => push_xml(&openid, now() + create_ahead, event).into_bytes(),
                Body::Mutated { at, byte } => {
                    let mut xml = push_xml(&openid, now(), "subscribe").into_bytes();
                    let at = at.index(xml.len());
                    xml[at] = *byte;
                    xml
                }
                Body::Bytes(bytes) => bytes.clone(),
            };
            let mut head = format!(
                "{} {}?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
                case.method,
                case.path,
                body.len()
            );
            for (name, value) in &case.headers {
                head.push_str(&format!("{name}: {}\r\n", value.trim()));
            }
            head.push_str("\r\n");
            let status = runtime.block_on(send(app.addr, head, &body));
            prop_assert!(
                matches!(status, 200 | 400 | 403 | 404 | 405 | 408 | 413 | 503),
                "status {status} for {case:?}"
            );
            let to_account = case.path == "/wechat";
            let valid =
                matches!(case.signature, Signature::Valid) && case.timestamp_offset.abs() <= 300;
            if to_account && case.method == "POST" && !valid {
                prop_assert!(status >= 400, "unsigned push answered {status}: {case:?}");
            }
            if to_account && case.method == "POST" && valid && status == 200 {
                accepted.lock().unwrap().push(body.clone());
            }
            Ok(())
        })
        .unwrap();

    // Every record on Kafka is one of the signed pushes answered 200.
    let accepted: HashSet<String> = accepted
        .into_inner()
        .unwrap()
        .iter()
        .filter_map(|body| from_user_name(body))
        .collect();
    let mut published = 0;
    for topic in Topic::all() {
        let count = app.count(&topic.suffix());
        for (key, event, _) in app.read(&topic.suffix(), count as usize) {
            assert!(
                accepted.contains(event.openid.as_str()),
                "unsigned on Kafka: {key}"
            );
            published += 1;
        }
    }
    assert!(published > 0, "the valid cases published something");
    // Still serving.
    runtime.block_on(async {
        let xml = push_xml("after", now(), "subscribe");
        assert_eq!(app.post_push(&xml).await.0, 200);
    });
    drop(app);
}
