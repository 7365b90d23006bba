//! CloudEvents headers (Kafka protocol binding, binary content mode) on every record the
//! ingress writes, published at once or spooled and replayed: through the real binary.

mod common;

use std::time::{Duration, UNIX_EPOCH};

use common::*;

fn push(account: &str, from: &str, created_at: i64, msg: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{account}]]></ToUserName><FromUserName><![CDATA[{from}]]></FromUserName>\
         <CreateTime>{created_at}</CreateTime>{msg}</xml>"
    )
}

const SUBSCRIBE: &str = "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event>\
    <EventKey><![CDATA[qrscene_42]]></EventKey>";
const TEXT: &str =
    "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello]]></Content><MsgId>1234567</MsgId>";
const UNKNOWN_EVENT: &str =
    "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[Brand_New_Thing]]></Event>";

async fn spawn(configure: impl FnOnce(&mut ingest::Config)) -> (RedisServer, TestApp) {
    let redis = RedisServer::start();
    let mut config = test_config(&redis.url());
    configure(&mut config);
    (redis, TestApp::spawn_binary(config).await)
}

fn rfc3339(created_at: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(created_at as u64))
        .to_string()
}

/// Reads `topic`'s single record and checks its CloudEvents headers against its value.
fn assert_cloudevent(app: &TestApp, suffix: &str, ce_type: &str) {
    let records = app.kafka.read(&app.topic(suffix), 1);
    assert_eq!(records.len(), 1, "{suffix}");
    let record = &records[0];
    let event = schemas::Event::from_json(&record.value).unwrap();
    let header = |name: &str| {
        record
            .header(name)
            .unwrap_or_else(|| panic!("{suffix}: no {name} header in {:?}", record.headers))
            .to_owned()
    };
    assert_eq!(header("ce_specversion"), "1.0");
    assert_eq!(header("ce_id").as_str(), &*event.id);
    assert_eq!(header("ce_source"), format!("/wechat/{}", event.account));
    assert_eq!(header("ce_type"), ce_type);
    assert_eq!(header("ce_time"), rfc3339(event.created_at));
    assert_eq!(header("content-type"), "application/json");
    // The value is the JSON record it always was.
    assert_eq!(
        record.key.as_deref(),
        Some(&*event.openid),
        "{suffix}: keyed by OpenID"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_carries_cloudevents_headers() {
    let (_redis, app) = spawn(|_| {}).await;
    let t = now();
    for msg in [SUBSCRIBE, TEXT, UNKNOWN_EVENT] {
        let (status, reason) = app.post_push(&push("gh_ce", "oCe", t, msg)).await;
        assert_eq!(status, 200, "{reason}");
    }
    assert_cloudevent(&app, "event.subscribe", "wechat.event.subscribe");
    assert_cloudevent(&app, "message.text", "wechat.message.text");
    // `ce_type` names the event's type, not the catch-all topic it went to.
    assert_cloudevent(&app, "event.other", "wechat.event.brand_new_thing");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_and_replayed_records_carry_the_same_headers() {
    let spool = std::env::temp_dir().join(unique("wxpipe-spool-"));
    let (_redis, app) = spawn(|config| config.spool_dir = Some(spool)).await;
    let Some(mock) = app.kafka.mock_cluster() else {
        return;
    };
    mock.broker_down(1).unwrap();
    let t = now();
    for msg in [SUBSCRIBE, TEXT] {
        let (status, reason) = app.post_push(&push("gh_spooled", "oSp", t, msg)).await;
        assert_eq!(status, 200, "spooled: {reason}");
    }
    mock.broker_up(1).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || app.count("event.subscribe")
            == 1
            && app.count("message.text") == 1)
        .await,
        "the spool replayed"
    );
    assert_cloudevent(&app, "event.subscribe", "wechat.event.subscribe");
    assert_cloudevent(&app, "message.text", "wechat.message.text");
    app.stop().await;
}
