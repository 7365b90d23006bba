//! The public corpus through the real server: every plaintext push of `tests/vectors/plain/`,
//! every compatible/safe-mode sample of `tests/vectors/crypto/`, and several accounts.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::Value;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors");

/// The contract's event types and message types, each with a topic of its own (the rest go
/// to `event.other` and `message.other`): written out independently of the code under test.
const EVENTS: &[&str] = &[
    "subscribe",
    "unsubscribe",
    "scan",
    "location",
    "click",
    "view",
    "view_miniprogram",
    "scancode_push",
    "scancode_waitmsg",
    "pic_sysphoto",
    "pic_photo_or_album",
    "pic_weixin",
    "location_select",
    "templatesendjobfinish",
    "masssendjobfinish",
    "subscribe_msg_popup_event",
    "subscribe_msg_change_event",
    "subscribe_msg_sent_event",
    "user_info_modified",
    "kf_create_session",
    "kf_close_session",
    "kf_switch_session",
    "qualification_verify_success",
    "qualification_verify_fail",
    "naming_verify_success",
    "naming_verify_fail",
    "annual_renew",
    "verify_expired",
    "merchant_order",
    "wificonnected",
    "shakearoundusershake",
    "submit_invoice_title",
    "update_invoice_status",
    "user_authorize_invoice",
];
const MESSAGES: &[&str] = &[
    "text",
    "image",
    "voice",
    "video",
    "shortvideo",
    "location",
    "link",
];

/// The topic a push belongs on.
fn expected_topic(msg_type: &str, event: Option<&str>) -> String {
    let msg_type = msg_type.to_lowercase();
    if msg_type == "event" {
        let event = event.unwrap().to_lowercase();
        let name = if EVENTS.contains(&event.as_str()) {
            event
        } else {
            "other".into()
        };
        format!("event.{name}")
    } else {
        let name = if MESSAGES.contains(&msg_type.as_str()) {
            msg_type
        } else {
            "other".into()
        };
        format!("message.{name}")
    }
}

#[test]
fn the_contract_topics_exist() {
    let names: Vec<String> = schemas::Topic::all().map(schemas::Topic::suffix).collect();
    let events = EVENTS
        .iter()
        .chain(&["other"])
        .map(|e| format!("event.{e}"));
    let messages = MESSAGES
        .iter()
        .chain(&["other"])
        .map(|m| format!("message.{m}"));
    for name in events.chain(messages) {
        assert!(names.contains(&name), "{name}");
    }
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "no topic twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_plain_vector_lands_once_on_its_topic_and_validates() {
    let (redis, app) = on_redis().await;
    let manifest: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(format!("{VECTORS}/plain/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest.len(), 77);
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut conn = redis.conn();
    for entry in &manifest {
        let file = entry["file"].as_str().unwrap();
        let xml = std::fs::read_to_string(format!("{VECTORS}/{file}")).unwrap();
        // Several SDKs' suites hold the very same push (same user, second and type): that is
        // one event, so start each file with no claims to see it land on its own.
        let _: () = redis::cmd("FLUSHDB").query(&mut conn).unwrap();
        let (status, reason) = app.post_push(&xml).await;
        assert_eq!((status, reason.as_str()), (200, ""), "{file}");
        // WeChat's retry: no second record.
        assert_eq!(app.post_push(&xml).await.0, 200, "{file}");
        let topic = expected_topic(entry["msg_type"].as_str().unwrap(), entry["event"].as_str());
        expected
            .entry(topic)
            .or_default()
            .push(entry["from"].as_str().unwrap().to_owned());
    }
    let mut seen = 0;
    for (topic, openids) in &expected {
        let records = app.read(topic, openids.len());
        assert_eq!(records.len(), openids.len(), "{topic}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            app.count(topic),
            openids.len() as i64,
            "{topic}: exactly once each"
        );
        let mut got: Vec<String> = records.iter().map(|(key, _, _)| key.clone()).collect();
        let mut want = openids.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{topic}");
        for (key, event, value) in &records {
            assert_eq!(key, &event.openid);
            assert_eq!(&event.topic().suffix(), topic);
            assert_schema_valid(event.topic(), value);
        }
        seen += records.len();
    }
    assert_eq!(seen, 77);
    assert_eq!(app.count_all(), 77, "nothing anywhere else");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_fields_of_the_corpus() {
    let app = TestApp::spawn("memory://").await;
    let post = |file: &'static str| {
        let xml = std::fs::read_to_string(format!("{VECTORS}/plain/{file}")).unwrap();
        let app = &app;
        async move { assert_eq!(app.post_push(&xml).await.0, 200, "{file}") }
    };
    post("wechatpy/test_events__test_scan_code_push_event.xml").await;
    post("wechatpy/test_events__test_pic_photo_or_album_event.xml").await;
    post("wechatpy/test_events__test_location_select_event.xml").await;
    post("wechatpy/test_events__test_template_subscribe_msg_popup_event.xml").await;
    post("wechatpy/test_events__test_mass_send_job_finish_event.xml").await;
    post("official/voice_recognition.xml").await;

    let one = |topic: &str| serde_json::Value::Object(app.read(topic, 1).remove(0).1.fields);
    let scan = one("event.scancode_push");
    assert_eq!(
        (
            scan["key"].as_str(),
            scan["scan_type"].as_str(),
            scan["scan_result"].as_str()
        ),
        (Some("6"), Some("qrcode"), Some("1"))
    );
    let pics = one("event.pic_photo_or_album");
    assert_eq!(pics["count"], 1);
    assert_eq!(
        pics["pics"],
        serde_json::json!([{"md5": "5a75aaca956d97be686719218f275c6b"}])
    );
    let location = one("event.location_select");
    assert_eq!(
        (
            location["latitude"].as_f64(),
            location["longitude"].as_f64()
        ),
        (Some(23.0), Some(113.0))
    );
    assert_eq!(location["label"], "广州市海珠区客村艺苑路 106号");
    assert_eq!(location["poiname"], Value::Null);
    let popup = one("event.subscribe_msg_popup_event");
    assert_eq!(popup["subscriptions"].as_array().unwrap().len(), 2);
    assert_eq!(popup["subscriptions"][1]["status"], "reject");
    let mass = one("event.masssendjobfinish");
    assert_eq!(
        (
            mass["msg_id"].as_str(),
            mass["status"].as_str(),
            mass["total_count"].as_i64()
        ),
        (Some("1000001625"), Some("err(30003)"), Some(0))
    );
    let mass_record = &app.read("event.masssendjobfinish", 1)[0].1;
    assert!(
        mass_record.extra.contains_key("CopyrightCheckResult"),
        "nested elements are kept"
    );
    let voice = one("message.voice");
    assert!(
        voice["recognition"].as_str().is_some_and(|r| !r.is_empty()),
        "{voice}"
    );
    app.stop().await;
}

fn crypto_vectors() -> Vec<Value> {
    serde_json::from_str(
        &std::fs::read_to_string(format!("{VECTORS}/crypto/crypto_vectors.json")).unwrap(),
    )
    .unwrap()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap()
}

/// The accounts file for the crypto vectors: one account per vector, named after it.
fn crypto_accounts(vectors: &[Value]) -> String {
    let mut toml = String::new();
    for v in vectors {
        let name = s(v, "id").split('_').next().unwrap().to_lowercase();
        let appid = v.get("appid").and_then(Value::as_str).unwrap_or("1000005");
        // With several accounts each names its own: the ToUserName its vector's push carries.
        let case = v.get("message_case").unwrap_or(v);
        let plaintext = case.get("plaintext").or(v.get("plaintext"));
        let to_user = plaintext
            .and_then(Value::as_str)
            .and_then(|p| p.split("<ToUserName><![CDATA[").nth(1))
            .and_then(|rest| rest.split("]]>").next())
            .map_or_else(|| format!("gh_{name}"), str::to_owned);
        toml.push_str(&format!(
            "[accounts.{name}]\ntoken = \"{}\"\nappid = \"{appid}\"\nencoding_aes_key = \"{}\"\noriginal_id = \"{to_user}\"\n\n",
            s(v, "token"),
            s(v, "encoding_aes_key")
        ));
    }
    toml
}

fn aes_query(token: &str, timestamp: &str, nonce: &str, msg_signature: &str) -> String {
    format!(
        "{}&encrypt_type=aes&msg_signature={msg_signature}",
        TestApp::signed_query_at(token, timestamp, nonce)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_crypto_vector_through_the_server() {
    let vectors = crypto_vectors();
    let redis = RedisServer::start();
    let mut config = test_config(&redis.url());
    config.shared.accounts_file = Some(accounts_file(&crypto_accounts(&vectors)));
    config.shared.original_id = Some("gh_default".into());
    // The public samples were signed years ago.
    config.timestamp_tolerance = 0;
    let app = TestApp::spawn_with(config).await;

    let mut landed = 0;
    for v in &vectors {
        let id = s(v, "id");
        let name = id.split('_').next().unwrap().to_lowercase();
        let case = v.get("message_case").unwrap_or(v);
        let encrypt = s(case, "encrypt");
        let body = v
            .get("request_body_safe_mode")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("<xml><ToUserName><![CDATA[x]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"));
        let query = aes_query(
            s(v, "token"),
            s(case, "timestamp"),
            s(case, "nonce"),
            s(case, "msg_signature"),
        );
        let (status, reason) = app.post_to(&format!("/wechat/{name}"), &query, &body).await;
        let plaintext = case
            .get("plaintext")
            .or(v.get("plaintext"))
            .and_then(Value::as_str)
            .unwrap();
        if id.starts_with("C5") {
            // The AppID inside is the corp's, not the configured one.
            assert_eq!(status, 403, "{id}: {reason}");
            assert!(reason.contains("AppID"), "{reason}");
        } else if plaintext.starts_with("<xml>") {
            assert_eq!((status, reason.as_str()), (200, ""), "{id}");
            landed += 1;
        } else {
            // C1a's plaintext is not a push: decrypted fine, then refused as malformed.
            assert_eq!(status, 400, "{id}: {reason}");
        }
    }
    assert_eq!(landed, 4, "C1b, C2, C3 and C4 carry pushes");
    let video = app.read("message.video", 1);
    assert_eq!(video.len(), 1);
    assert_eq!(video[0].1.account, "oia2Tj我是中文jewbmiOUlr6X-1crbLOvLw");
    let texts = app.read("message.text", 3);
    assert_eq!(texts.len(), 3);
    let mut contents: Vec<&str> = texts
        .iter()
        .map(|(_, e, _)| e.text("content").unwrap())
        .collect();
    contents.sort();
    assert_eq!(contents, ["hello", "hello", "test"]);
    for (_, event, value) in texts.iter().chain(&video) {
        assert_schema_valid(event.topic(), value);
    }
    assert_eq!(app.count_all(), 4);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_pushes_trust_only_the_decrypted_fields() {
    let redis = RedisServer::start();
    let key_text = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    let mut config = test_config(&redis.url());
    config.shared.appid = Some("wxapp".into());
    config.encoding_aes_key = Some(ingest::config::Secret::new(key_text));
    let app = TestApp::spawn_with(config).await;
    let key = wechat::decrypt::AesKey::parse(key_text).unwrap();
    let inner = format!(
        "<xml><ToUserName><![CDATA[gh_real]]></ToUserName><FromUserName><![CDATA[o_real]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[unsubscribe]]></Event></xml>",
        now()
    );
    let encrypt = key.encrypt(inner.as_bytes(), "wxapp", *b"0123456789abcdef");
    let sign = |encrypt: &str, nonce: &str| {
        let ts = now().to_string();
        let msg_signature = wechat::Signer::plaintext(TOKEN).msg_signature(&ts, nonce, encrypt);
        aes_query(TOKEN, &ts, nonce, &msg_signature)
    };
    // Compatible mode: plaintext fields beside the ciphertext, here forged.
    let compatible = format!(
        "<xml><ToUserName><![CDATA[gh_forged]]></ToUserName><FromUserName><![CDATA[o_forged]]></FromUserName>\
         <CreateTime>1</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event>\
         <Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    );
    assert_eq!(
        app.post_with_query(&sign(&encrypt, "c1"), &compatible)
            .await
            .0,
        200
    );
    let records = app.read("event.unsubscribe", 1);
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].1.account.as_str(), records[0].1.openid.as_str()),
        ("gh_real", "o_real")
    );
    assert_eq!(app.count("event.subscribe"), 0);

    // Every malformed envelope is a 403 and publishes nothing.
    let other_app = key.encrypt(inner.as_bytes(), "wxother", *b"0123456789abcdef");
    let garbage = "AAAA";
    let safe = |encrypt: &str| {
        format!(
            "<xml><ToUserName>gh_real</ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        )
    };
    for (query, body, status) in [
        (
            sign(&encrypt, "c2").replace("msg_signature=", "msg_signature=0"),
            safe(&encrypt),
            403,
        ),
        (sign(&other_app, "c3"), safe(&other_app), 403),
        (sign(garbage, "c4"), safe(garbage), 403),
        (sign("%%%", "c5"), safe("%%%"), 403),
        (
            sign(&encrypt, "c6"),
            "<xml><ToUserName>gh_real</ToUserName></xml>".to_owned(),
            400,
        ),
        (
            TestApp::signed_query(TOKEN, "c7") + "&encrypt_type=aes",
            safe(&encrypt),
            400,
        ),
    ] {
        let (got, reason) = app.post_with_query(&query, &body).await;
        assert_eq!(got, status, "{body}: {reason}");
    }
    assert_eq!(app.count_all(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_accounts_each_with_its_own_secrets() {
    let redis = RedisServer::start();
    let mut config = test_config(&redis.url());
    config.shared.accounts_file = Some(accounts_file(
        "[accounts.shop]\ntoken = \"shop-token\"\noriginal_id = \"gh_shop\"\n\n[accounts.news]\ntoken = \"news-token\"\noriginal_id = \"gh_news\"\n",
    ));
    config.shared.original_id = Some("gh_default".into());
    let app = TestApp::spawn_with(config).await;
    let push = |to: &str, from: &str| {
        format!(
            "<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[{from}]]></FromUserName>\
             <CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event></xml>",
            now()
        )
    };
    let shop = TestApp::signed_query("shop-token", &unique("n"));
    let news = TestApp::signed_query("news-token", &unique("n"));
    // Each account's own token opens it; another account's token does not.
    for (path, query, to, from, status) in [
        ("/wechat/shop", &shop, "gh_shop", "u1", 200),
        ("/wechat/news", &news, "gh_news", "u2", 200),
        ("/wechat/news", &shop, "gh_news", "u3", 403),
        ("/wechat/shop", &news, "gh_shop", "u4", 403),
    ] {
        let answer = app.post_to(path, query, &push(to, from)).await;
        assert_eq!(answer.0, status, "{from} to {path}");
    }
    // A push addressed to another account, on the shop's URL, is refused.
    let shop2 = TestApp::signed_query("shop-token", &unique("n"));
    assert_eq!(
        app.post_to("/wechat/shop", &shop2, &push("gh_news", "u5"))
            .await
            .0,
        403
    );
    // The single-account variables keep working at the base path.
    assert_eq!(app.post_push(&push("gh_default", "u6")).await.0, 200);
    assert_eq!(
        app.post_to("/wechat/unknown", &shop, &push("gh_shop", "u7"))
            .await
            .0,
        404
    );
    // URL verification per account.
    let verify = app.get(&format!("/wechat/shop?{shop}&echostr=e1")).await;
    assert_eq!(verify.1, "e1");
    let verify = app.get(&format!("/wechat/news?{shop}&echostr=e1")).await;
    assert_eq!(verify.0, 403);

    let accounts = app.accounts("event.subscribe", 3);
    assert_eq!(accounts, ["gh_default", "gh_news", "gh_shop"]);
    assert_eq!(app.count_all(), 3);
    app.stop().await;
}
