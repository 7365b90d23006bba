//! Open Platform mode through the real binary, on a real Redis and the mock Kafka: a
//! component's authorization events and its authorizers' pushes, each made durable once,
//! every forgery and every withdrawn authorization refused, and WeChat's release check.

mod common;

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use common::*;
use ingest::Config;
use wechat::decrypt::AesKey;
use wechat::sign::SignedPush;
use wechat::Signer;

const COMPONENT: &str = "wxcomponent0000001";
const COMPONENT_TOKEN: &str = "component-token";
const COMPONENT_KEY: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";
/// An authorizer of the component, and its `gh_` id.
const AUTHORIZER: &str = "wxauthorizer000001";
const AUTHORIZER_GH: &str = "gh_authorizer01";

const SETTLE: Duration = Duration::from_millis(500);

fn key() -> AesKey {
    AesKey::parse(COMPONENT_KEY).unwrap()
}

/// WeChat, signing for the component.
fn signer() -> Signer {
    Signer::encrypted(COMPONENT_TOKEN, key(), COMPONENT)
}

fn with_component(config: &mut Config) {
    // Beside a component, the account needs its gh_ id.
    config.shared.original_id = Some("gh_own".into());
    config.shared.component_appid = Some(COMPONENT.into());
    config.shared.component_token = Some(COMPONENT_TOKEN.parse().unwrap());
    config.shared.component_encoding_aes_key = Some(COMPONENT_KEY.parse().unwrap());
}

async fn spawn(configure: impl FnOnce(&mut Config)) -> (RedisServer, TestApp) {
    let redis = RedisServer::start();
    let mut config = test_config(&redis.url());
    with_component(&mut config);
    configure(&mut config);
    (redis, TestApp::spawn_binary(config).await)
}

/// `xml` as WeChat sends it with `signer`, now, with a fresh nonce.
fn sign_with(signer: &Signer, xml: &str) -> SignedPush {
    static RANDOM: AtomicU8 = AtomicU8::new(0);
    let random = [RANDOM.fetch_add(1, Ordering::Relaxed); 16];
    signer.push(xml, COMPONENT, &now().to_string(), &unique("n"), random)
}

fn sign(xml: &str) -> SignedPush {
    sign_with(&signer(), xml)
}

/// POSTs a signed push to `{INGEST_PATH}/component/{route}`.
async fn post(app: &TestApp, route: &str, push: &SignedPush) -> (u16, String) {
    let path = format!("{}/component/{route}", app.config.path);
    app.post_to(&path, &push.query, &push.body).await
}

fn ticket(created_at: i64, ticket: &str) -> String {
    format!(
        "<xml><AppId><![CDATA[{COMPONENT}]]></AppId><CreateTime>{created_at}</CreateTime>\
         <InfoType><![CDATA[component_verify_ticket]]></InfoType>\
         <ComponentVerifyTicket><![CDATA[{ticket}]]></ComponentVerifyTicket></xml>"
    )
}

fn authorization(info_type: &str, authorizer: &str, created_at: i64) -> String {
    let code = if info_type == "unauthorized" {
        String::new()
    } else {
        format!(
            "<AuthorizationCode><![CDATA[queryauthcode@@@{created_at}]]></AuthorizationCode>\
             <AuthorizationCodeExpiredTime>{}</AuthorizationCodeExpiredTime>\
             <PreAuthCode><![CDATA[preauthcode@@@x]]></PreAuthCode>",
            created_at + 3600
        )
    };
    format!(
        "<xml><AppId><![CDATA[{COMPONENT}]]></AppId><CreateTime>{created_at}</CreateTime>\
         <InfoType><![CDATA[{info_type}]]></InfoType>\
         <AuthorizerAppid><![CDATA[{authorizer}]]></AuthorizerAppid>{code}</xml>"
    )
}

fn subscribe(to: &str, from: &str, created_at: i64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[{from}]]></FromUserName>\
         <CreateTime>{created_at}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[subscribe]]></Event></xml>"
    )
}

fn text(to: &str, from: &str, created_at: i64, content: &str, msg_id: u64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[{from}]]></FromUserName>\
         <CreateTime>{created_at}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>"
    )
}

/// POSTs a subscribe from `from` (at `created_at`) on the authorizer's own route, as WeChat
/// signs it for the component.
async fn follow(app: &TestApp, from: &str, created_at: i64) -> (u16, String) {
    let push = sign(&subscribe(AUTHORIZER_GH, from, created_at));
    post(app, AUTHORIZER, &push).await
}

/// POSTs an authorization event (`info_type`) for `authorizer` to the authorization URL, as
/// WeChat signs it.
async fn post_authorization(
    app: &TestApp,
    info_type: &str,
    authorizer: &str,
    created_at: i64,
) -> (u16, String) {
    let push = sign(&authorization(info_type, authorizer, created_at));
    post(app, "auth", &push).await
}

/// A field of a Redis hash of the app's key prefix.
fn hget(redis: &RedisServer, app: &TestApp, key: &str, field: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(format!("{}:{key}", app.config.shared.key_prefix))
        .arg(field)
        .query(&mut redis.conn())
        .unwrap()
}

/// Asserts that nothing reached any topic, `SETTLE` later.
async fn assert_nothing_published(app: &TestApp, why: &str) {
    tokio::time::sleep(SETTLE).await;
    assert_eq!(app.count_all(), 0, "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_is_answered_success_once_durable_published_once_and_kept() {
    let (redis, app) = spawn(|_| {}).await;
    let push = sign(&ticket(now(), "ticket@@@one"));
    assert_eq!(post(&app, "auth", &push).await, (200, "success".into()));
    // WeChat's retry of the same push: answered the same, published once.
    assert_eq!(post(&app, "auth", &push).await, (200, "success".into()));
    let records = app
        .read_exactly(
            "component.component_verify_ticket",
            1,
            SETTLE,
            "a retried ticket is one record",
        )
        .await;
    let (key, event, value) = &records[0];
    assert_eq!(key, COMPONENT, "a ticket is keyed by the component");
    assert_eq!(event.account, COMPONENT);
    assert_eq!(value["ticket"], "ticket@@@one");
    assert_schema_valid(event.topic(), value);
    let record = &app
        .kafka
        .read(&app.topic("component.component_verify_ticket"), 1)[0];
    assert_eq!(
        record.header("ce_type"),
        Some("wechat.component.component_verify_ticket")
    );
    assert_eq!(
        record.header("ce_source"),
        Some(format!("/wechat/component/{COMPONENT}").as_str())
    );
    assert_eq!(record.header("ce_id"), Some(&*event.id));
    let key = format!("component:{{{COMPONENT}}}:ticket");
    assert_eq!(
        hget(&redis, &app, &key, "ticket").as_deref(),
        Some("ticket@@@one")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_encrypted_for_another_component_is_refused() {
    let (_redis, app) = spawn(|_| {}).await;
    // Signed with the component's Token and key, but encrypted for another AppID: a push
    // meant for another platform sharing the key cannot pass as this one's.
    let other = Signer::encrypted(COMPONENT_TOKEN, key(), "wxothercomponent01");
    let forged = sign_with(&other, &ticket(now(), "ticket@@@forged"));
    let (status, reason) = post(&app, "auth", &forged).await;
    assert_eq!(status, 403, "{reason}");
    let forged = sign_with(&other, &subscribe(AUTHORIZER_GH, "oUser", now()));
    let (status, reason) = post(&app, AUTHORIZER, &forged).await;
    assert_eq!(status, 403, "{reason}");
    // Or signed with another Token.
    let wrong_token = Signer::encrypted("another-token", key(), COMPONENT);
    let forged = sign_with(&wrong_token, &ticket(now(), "ticket@@@forged"));
    assert_eq!(post(&app, "auth", &forged).await.0, 403);
    assert_nothing_published(&app, "nothing of a refused push").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_and_its_authorizers_pushes_are_published_once_each() {
    let (redis, app) = spawn(|_| {}).await;
    let t = now();
    let authorized = sign(&authorization("authorized", AUTHORIZER, t - 10));
    assert_eq!(
        post(&app, "auth", &authorized).await,
        (200, "success".into())
    );
    assert_eq!(
        post(&app, "auth", &authorized).await,
        (200, "success".into())
    );
    let records = app
        .read_exactly("component.authorized", 1, SETTLE, "one authorization")
        .await;
    assert_eq!(records[0].0, AUTHORIZER, "keyed by the authorizer");
    assert_eq!(records[0].2["authorizer_appid"], AUTHORIZER);
    assert_schema_valid(records[0].1.topic(), &records[0].2);
    let state = format!("component:{{{COMPONENT}}}:authorizer:{AUTHORIZER}");
    assert_eq!(
        hget(&redis, &app, &state, "authorized").as_deref(),
        Some("1")
    );

    let push = sign(&subscribe(AUTHORIZER_GH, "oFollower", t));
    let (status, body) = post(&app, AUTHORIZER, &push).await;
    assert_eq!(
        (status, body.as_str()),
        (200, ""),
        "answered like an account push"
    );
    assert_eq!(post(&app, AUTHORIZER, &push).await.0, 200, "a retry");
    let records = app
        .read_exactly("event.subscribe", 1, SETTLE, "a retried push is one record")
        .await;
    let (key, event, value) = &records[0];
    assert_eq!(key, "oFollower");
    assert_eq!(
        event.account, AUTHORIZER_GH,
        "account: the push's ToUserName"
    );
    assert_eq!(value["appid"], AUTHORIZER, "appid: the route's");
    assert_schema_valid(event.topic(), value);
    assert_eq!(
        hget(&redis, &app, &state, "user_name").as_deref(),
        Some(AUTHORIZER_GH),
        "its gh_ id learned from the first push"
    );
    // One metrics label for the component, whatever the number of authorizers.
    let (_, metrics) = app.admin_get("/metrics").await;
    let series = |kind: &str| {
        metrics.lines().any(|l| {
            l.starts_with("wxpipe_pushes_total{")
                && l.contains(r#"account="component""#)
                && l.contains(&format!(r#"kind="{kind}""#))
        })
    };
    assert!(series("component") && series("event"), "{metrics}");
    assert!(
        !metrics.contains(AUTHORIZER),
        "no authorizer AppID: {metrics}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_authorizer_is_refused_until_it_authorizes_again() {
    let (_redis, app) = spawn(|_| {}).await;
    let t = now();
    assert_eq!(
        follow(&app, "o1", t).await.0,
        200,
        "an authorizer wxpipe never saw authorize is taken"
    );
    let unauthorized = sign(&authorization("unauthorized", AUTHORIZER, t - 5));
    assert_eq!(
        post(&app, "auth", &unauthorized).await,
        (200, "success".into())
    );
    app.read_exactly("component.unauthorized", 1, SETTLE, "one withdrawal")
        .await;
    for from in ["o2", "o3"] {
        let (status, reason) = follow(&app, from, t).await;
        assert_eq!(status, 403, "withdrawn: {reason}");
    }
    assert_eq!(
        app.count("event.subscribe"),
        1,
        "nothing of a withdrawn authorizer"
    );
    // An older authorization (a late retry) changes nothing.
    let older = sign(&authorization("authorized", AUTHORIZER, t - 20));
    assert_eq!(post(&app, "auth", &older).await, (200, "success".into()));
    assert_eq!(follow(&app, "o4", t).await.0, 403);
    let again = sign(&authorization("authorized", AUTHORIZER, t - 1));
    assert_eq!(post(&app, "auth", &again).await, (200, "success".into()));
    assert_eq!(follow(&app, "o5", t).await.0, 200, "authorized again");
    let records = app
        .read_exactly("event.subscribe", 2, SETTLE, "o1 and o5")
        .await;
    let mut users: Vec<&str> = records.iter().map(|(k, _, _)| k.as_str()).collect();
    users.sort_unstable();
    assert_eq!(users, ["o1", "o5"], "one partition each: any order");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_push_never_speaks_for_a_configured_account() {
    let accounts = accounts_file(&format!(
        "[accounts.shop]\ntoken = \"{TOKEN}\"\noriginal_id = \"gh_shop\"\n"
    ));
    let (_redis, app) = spawn(|config| {
        config.shared.original_id = Some("gh_default".into());
        config.shared.accounts_file = Some(accounts);
    })
    .await;
    for gh in ["gh_default", "gh_shop"] {
        let (status, reason) = post(&app, AUTHORIZER, &sign(&subscribe(gh, "o1", now()))).await;
        assert_eq!(status, 403, "{gh}: {reason}");
    }
    assert_nothing_published(&app, "the accounts' own pushes come on their own routes").await;
    // The account still takes its own.
    let (status, reason) = app.post_push(&subscribe("gh_default", "o1", now())).await;
    assert_eq!(status, 200, "{reason}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorizer_route_takes_its_own_account_only() {
    let (_redis, app) = spawn(|_| {}).await;
    let t = now();
    assert_eq!(follow(&app, "o1", t).await.0, 200);
    let (status, reason) = post(
        &app,
        AUTHORIZER,
        &sign(&subscribe("gh_someoneelse", "o2", t)),
    )
    .await;
    assert_eq!(
        status, 403,
        "another gh_ id than the authorizer's: {reason}"
    );
    // Plaintext, even signed with the component's Token, is a downgrade.
    let plain = Signer::plaintext(COMPONENT_TOKEN).push(
        &subscribe(AUTHORIZER_GH, "o3", t),
        AUTHORIZER_GH,
        &now().to_string(),
        &unique("n"),
        [0; 16],
    );
    let (status, reason) = post(&app, AUTHORIZER, &plain).await;
    assert_eq!(status, 403, "plaintext: {reason}");
    let plain = Signer::plaintext(COMPONENT_TOKEN).push(
        &ticket(t, "ticket@@@plain"),
        COMPONENT,
        &now().to_string(),
        &unique("n"),
        [0; 16],
    );
    let (status, reason) = post(&app, "auth", &plain).await;
    assert_eq!(status, 403, "plaintext: {reason}");
    tokio::time::sleep(SETTLE).await;
    assert_eq!(app.count_all(), 1, "o1 only");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_methods_and_unknown_info_types() {
    let (_redis, app) = spawn(|_| {}).await;
    let other = format!(
        "<xml><AppId><![CDATA[{COMPONENT}]]></AppId><CreateTime>{}</CreateTime>\
         <InfoType><![CDATA[notify_third_fasteregister]]></InfoType><Status>0</Status></xml>",
        now()
    );
    assert_eq!(
        post(&app, "auth", &sign(&other)).await,
        (200, "success".into())
    );
    let records = app
        .read_exactly("component.other", 1, SETTLE, "an unknown InfoType, kept")
        .await;
    assert_eq!(
        records[0].2["extra"]["InfoType"],
        "notify_third_fasteregister"
    );
    assert_schema_valid(records[0].1.topic(), &records[0].2);
    let push = sign(&subscribe(AUTHORIZER_GH, "o1", now()));
    for route in ["wx.bad", "wx/a", &"a".repeat(65), ""] {
        let (status, _) = post(&app, route, &push).await;
        assert_eq!(status, 404, "{route:?}");
    }
    // A CreateTime past its signed timestamp would win every last-write-wins comparison.
    let ahead = now() + 3600;
    let (status, reason) = post_authorization(&app, "unauthorized", AUTHORIZER, ahead).await;
    assert_eq!(status, 403, "{reason}");
    let (status, reason) = follow(&app, "o1", ahead).await;
    assert_eq!(status, 403, "{reason}");
    let path = format!("{}/component/auth?{}", app.config.path, push.query);
    assert_eq!(app.get(&path).await.0, 405);
    let path = format!("{}/component/{AUTHORIZER}?{}", app.config.path, push.query);
    assert_eq!(app.get(&path).await.0, 405);
    tokio::time::sleep(SETTLE).await;
    assert_eq!(app.count_all(), 1, "the unknown InfoType only");
    app.stop().await;
}

/// The text of an encrypted passive reply, checked as WeChat checks it: (ToUserName,
/// FromUserName, Content).
fn open_reply(body: &str) -> (String, String, String) {
    let fields =
        wechat::parse::parse_document(body.as_bytes()).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    let field = |name: &str| {
        let text = fields
            .iter()
            .find_map(|(n, v)| v.as_str().filter(|_| n == name));
        text.unwrap_or_else(|| panic!("no {name} in {body}"))
            .to_owned()
    };
    let encrypt = field("Encrypt");
    let (timestamp, nonce) = (field("TimeStamp"), field("Nonce"));
    wechat::verify::check(
        &field("MsgSignature"),
        &mut [COMPONENT_TOKEN, &timestamp, &nonce, &encrypt],
    )
    .expect("MsgSignature");
    let xml = key()
        .decrypt(&encrypt, COMPONENT)
        .expect("for the component");
    let reply = wechat::parse::Push::try_from(&xml[..]).unwrap();
    assert_eq!(reply.msg_type, "text");
    let content = reply.text("Content").unwrap_or_default().to_owned();
    (reply.to_user, reply.from_user, content)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_check_accounts_get_their_fixed_replies() {
    let (_redis, app) = spawn(|config| config.shared.component_release_check = true).await;
    let (appid, gh) = wechat::reply::RELEASE_CHECK_ACCOUNTS[1];
    let t = now();
    let event = format!(
        "<xml><ToUserName><![CDATA[{gh}]]></ToUserName><FromUserName><![CDATA[oTester]]></FromUserName>\
         <CreateTime>{t}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[LOCATION]]></Event>\
         <Latitude>23.1</Latitude><Longitude>113.3</Longitude><Precision>119.3</Precision></xml>"
    );
    let push = sign(&event);
    let (status, body) = post(&app, appid, &push).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        open_reply(&body),
        ("oTester".into(), gh.into(), "LOCATIONfrom_callback".into())
    );
    let (status, body) = post(&app, appid, &push).await;
    assert_eq!(status, 200, "a retry of the durable push");
    assert_eq!(
        open_reply(&body).2,
        "LOCATIONfrom_callback",
        "the same reply"
    );

    let test_text = text(gh, "oTester", t, "TESTCOMPONENT_MSG_TYPE_TEXT", 1);
    let (status, body) = post(&app, appid, &sign(&test_text)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(open_reply(&body).2, "TESTCOMPONENT_MSG_TYPE_TEXT_callback");

    let query_auth = text(gh, "oTester", t, "QUERY_AUTH_CODE:queryauthcode@@@x", 2);
    assert_eq!(
        post(&app, appid, &sign(&query_auth)).await,
        (200, String::new()),
        "answered empty: the component worker sends the answer"
    );
    // Published like any push.
    app.read_exactly("event.location", 1, SETTLE, "the event")
        .await;
    let texts = app
        .read_exactly("message.text", 2, SETTLE, "the texts")
        .await;
    assert!(texts
        .iter()
        .all(|(_, e, _)| e.appid.as_deref() == Some(appid)));

    // Anyone else sending the same gets the empty answer.
    let others = [
        (AUTHORIZER, event.replace(gh, AUTHORIZER_GH)),
        (
            AUTHORIZER,
            test_text
                .replace(gh, AUTHORIZER_GH)
                .replace("<MsgId>1", "<MsgId>3"),
        ),
        // A test AppID naming another test account's gh_ id.
        (
            wechat::reply::RELEASE_CHECK_ACCOUNTS[2].0,
            test_text.clone(),
        ),
    ];
    for (appid, xml) in others {
        assert_eq!(
            post(&app, appid, &sign(&xml)).await,
            (200, String::new()),
            "{appid}: {xml}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_check_is_off_unless_asked_for() {
    let (_redis, app) = spawn(|_| {}).await;
    let (appid, gh) = wechat::reply::RELEASE_CHECK_ACCOUNTS[0];
    let push = sign(&text(
        gh,
        "oTester",
        now(),
        "TESTCOMPONENT_MSG_TYPE_TEXT",
        1,
    ));
    assert_eq!(post(&app, appid, &push).await, (200, String::new()));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_alone_is_a_configuration() {
    let (_redis, app) = spawn(|config| config.token = None).await;
    assert_eq!(
        post(&app, "auth", &sign(&ticket(now(), "ticket@@@alone"))).await,
        (200, "success".into())
    );
    // No account is served at INGEST_PATH.
    let (status, _) = app.post_push(&subscribe("gh_x", "o1", now())).await;
    assert_eq!(status, 404);
    app.read_exactly("component.component_verify_ticket", 1, SETTLE, "the ticket")
        .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_component_routes_take_nothing() {
    let (mut redis, app) = spawn(|_| {}).await;
    let t = now();
    assert_eq!(follow(&app, "o1", t).await.0, 200);
    redis.stop();
    // Whether the authorizer withdrew cannot be known: fail closed (WeChat retries).
    let (status, reason) = follow(&app, "o2", t).await;
    assert_eq!(status, 503, "{reason}");
    // An authorization event must be recorded before it is answered.
    let (status, reason) = post_authorization(&app, "unauthorized", AUTHORIZER, t).await;
    assert_eq!(status, 503, "{reason}");
    tokio::time::sleep(SETTLE).await;
    assert_eq!(app.count_all(), 1, "o1 only");
    // An account's pushes are still taken without Redis (a duplicate beats a loss).
    let (status, reason) = app.post_push(&subscribe("gh_own", "o3", t)).await;
    assert_eq!(status, 200, "{reason}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_component_records_are_replayed_with_their_headers() {
    let (_redis, app) = spawn(|config| config.spool_dir = Some(spool_dir())).await;
    let push = sign(&ticket(now(), "ticket@@@spooled"));
    let Some((status, body)) = with_broker_down(&app, post(&app, "auth", &push)).await else {
        return;
    };
    assert_eq!((status, body.as_str()), (200, "success"), "spooled");
    assert!(
        eventually(Duration::from_secs(15), || app
            .count("component.component_verify_ticket")
            == 1)
        .await,
        "the spool replayed"
    );
    let record = &app
        .kafka
        .read(&app.topic("component.component_verify_ticket"), 1)[0];
    assert_eq!(
        record.header("ce_source"),
        Some(format!("/wechat/component/{COMPONENT}").as_str())
    );
    assert_eq!(
        record.header("ce_type"),
        Some("wechat.component.component_verify_ticket")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_component_routes_keep_the_listeners_limits() {
    let mut config = test_config("memory://");
    with_component(&mut config);
    config.allowed_ips = vec!["10.0.0.0/8".parse().unwrap()];
    let app = TestApp::spawn_with(config).await;
    let push = sign(&ticket(now(), "ticket@@@from-elsewhere"));
    for route in ["auth", AUTHORIZER] {
        let (status, reason) = post(&app, route, &push).await;
        assert_eq!(status, 403, "{route}: outside INGEST_ALLOWED_IPS: {reason}");
    }
    assert_nothing_published(&app, "nothing of a refused push").await;
    app.stop().await;
    let mut config = test_config("memory://");
    with_component(&mut config);
    config.max_body_bytes = 64;
    let app = TestApp::spawn_with(config).await;
    for route in ["auth", AUTHORIZER] {
        let (status, reason) = post(&app, route, &push).await;
        assert_eq!(status, 413, "{route}: {reason}");
    }
    assert_nothing_published(&app, "nothing of a refused push").await;
    app.stop().await;
}

/// The whole Open Platform flow, WeChat to welcome: the ingress binary takes the ticket and
/// the authorization, the workers (`welcome` and `component`, in this process) exchange the
/// code with the fake WeChat API and welcome the authorizer's follower with that authorizer's
/// own token; after `unauthorized`, its pushes are refused and nothing more is sent for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_the_ticket_to_a_welcome_sent_with_the_authorizers_own_token() {
    use clap::Parser;
    let (redis, app) = spawn(|_| {}).await;
    let wechat = testkit::FakeWeChat::start().await;
    let t = now();
    let code = format!("queryauthcode@@@{t}");
    wechat.authorization_code(&code, AUTHORIZER);
    wechat
        .state
        .lock()
        .unwrap()
        .user_names
        .insert(AUTHORIZER.into(), AUTHORIZER_GH.into());
    let config = worker::Config::parse_from([
        "worker",
        "--kafka-brokers",
        &app.kafka.brokers(),
        "--topic-prefix",
        &app.config.shared.topic_prefix,
        "--redis-url",
        &redis.url(),
        "--key-prefix",
        &app.config.shared.key_prefix,
        "--api-base",
        &wechat.base(),
        "--component-appid",
        COMPONENT,
        "--component-appsecret",
        "component-secret",
        "--component-token",
        COMPONENT_TOKEN,
        "--component-encoding-aes-key",
        COMPONENT_KEY,
        "--role",
        "welcome,component",
        "--welcome-max-age",
        "36500days",
        "--admin-listen",
        "",
        "--kafka-consumer-config",
        "session.timeout.ms=6000,heartbeat.interval.ms=500",
    ]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let workers = tokio::spawn(worker::run(config, async {
        let _ = stopped.await;
    }));

    let ticket = format!("ticket@@@{t}");
    let push = sign(&self::ticket(t, &ticket));
    assert_eq!(post(&app, "auth", &push).await, (200, "success".into()));
    let push = sign(&authorization("authorized", AUTHORIZER, t));
    assert_eq!(post(&app, "auth", &push).await, (200, "success".into()));
    let push = sign(&subscribe(AUTHORIZER_GH, "o_follower_1", t));
    let (status, body) = post(&app, AUTHORIZER, &push).await;
    assert_eq!((status, body.as_str()), (200, ""));

    assert!(
        eventually(Duration::from_secs(60), || wechat.sends_to("o_follower_1")
            == 1)
        .await,
        "the follower is welcomed"
    );
    let tokens = wechat.tokens_sent_to("o_follower_1");
    assert!(
        tokens[0].starts_with(&format!("TOKEN-{AUTHORIZER}-")),
        "with the authorizer's own token: {tokens:?}"
    );
    {
        let state = wechat.state.lock().unwrap();
        assert_eq!(
            state.code_exchanges,
            std::slice::from_ref(&code),
            "the code exchanged once"
        );
        assert_eq!(
            state.component_tickets,
            std::slice::from_ref(&ticket),
            "with the ticket the ingress kept"
        );
    }
    assert!(
        wechat.token_appids().is_empty(),
        "never an account's stable_token"
    );
    let authorizer_key = format!("component:{{{COMPONENT}}}:authorizer:{AUTHORIZER}");
    assert!(hget(&redis, &app, &authorizer_key, "refresh_token").is_some());

    // Withdrawn: the authorizer's pushes are refused, and nothing more is sent for it.
    let push = sign(&authorization("unauthorized", AUTHORIZER, t + 1));
    assert_eq!(post(&app, "auth", &push).await, (200, "success".into()));
    let push = sign(&subscribe(AUTHORIZER_GH, "o_follower_2", t + 2));
    assert_eq!(post(&app, AUTHORIZER, &push).await.0, 403);
    assert!(
        eventually(Duration::from_secs(30), || hget(
            &redis,
            &app,
            &authorizer_key,
            "refresh_token"
        )
        .is_none())
        .await,
        "its refresh token is forgotten"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(wechat.sends_to("o_follower_2"), 0);
    assert_eq!(wechat.sends().len(), 1, "one welcome in all");
    let _ = stop.send(());
    let _ = workers.await;
    app.stop().await;
}

/// Red team (issue 22): the component's signature covers (timestamp, nonce, ciphertext),
/// not the route. A push captured on authorizer A's route and replayed within the replay
/// window on authorizer B's route (whose `gh_` id is not known yet) must not be published as
/// B's, nor teach B's route A's `gh_` id (which would refuse B's own pushes from then on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_a_push_replayed_on_another_authorizers_route_is_refused_and_poisons_nothing() {
    const OTHER: &str = "wxauthorizer000002";
    const OTHER_GH: &str = "gh_authorizer02";
    let (_redis, app) = spawn(|_| {}).await;
    let t = now();
    let captured = sign(&subscribe(AUTHORIZER_GH, "o1", t));
    assert_eq!(post(&app, AUTHORIZER, &captured).await.0, 200);
    app.read_exactly("event.subscribe", 1, SETTLE, "A's own push")
        .await;
    // The same request, byte for byte, on B's route.
    let (replayed, reason) = post(&app, OTHER, &captured).await;
    tokio::time::sleep(SETTLE).await;
    let published = app.count("event.subscribe") as usize;
    let as_other = app
        .read("event.subscribe", published)
        .iter()
        .filter(|(_, _, value)| value["appid"] == OTHER)
        .count();
    // B's own first push.
    let (own, own_reason) = post(&app, OTHER, &sign(&subscribe(OTHER_GH, "o2", t))).await;
    assert_eq!(
        (replayed, as_other, own),
        (403, 0, 200),
        "replay on B's route: {replayed} {reason:?}, published as B's: {as_other}; \
         B's own push then: {own} {own_reason:?}"
    );
    app.stop().await;
}

/// Red team (issue 22): `user_info_modified` (and `user_authorize_invoice`) already had a
/// typed field `appid` (the push's own `AppID` element, written flat into the record), the
/// very name the route's AppID now takes. A push on authorizer A's route naming another
/// AppID must still be published with A's `appid`, once, and valid against its schema; and an
/// account's own such push must stay valid against the topic's schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_a_pushs_own_appid_element_never_stands_for_the_route() {
    let (_redis, app) = spawn(|_| {}).await;
    let modified = |to: &str, appid: Option<&str>| {
        format!(
            "<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName>\
             <CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
             <Event><![CDATA[user_info_modified]]></Event><OpenID><![CDATA[o1]]></OpenID>{}\
             <RevokeInfo><![CDATA[301]]></RevokeInfo></xml>",
            now(),
            appid.map_or(String::new(), |a| format!("<AppID><![CDATA[{a}]]></AppID>"))
        )
    };
    let (status, reason) = post(
        &app,
        AUTHORIZER,
        &sign(&modified(AUTHORIZER_GH, Some("wxforgedappid00001"))),
    )
    .await;
    assert_eq!(status, 200, "{reason}");
    let record = &app.kafka.read(&app.topic("event.user_info_modified"), 1)[0];
    let raw = String::from_utf8_lossy(&record.value).into_owned();
    let value: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
    assert_eq!(
        (raw.matches("\"appid\"").count(), value["appid"].as_str()),
        (1, Some(AUTHORIZER)),
        "one appid, the route's: {raw}"
    );
    assert_schema_valid(
        schemas::Topic::of(schemas::Kind::Event, "user_info_modified"),
        &value,
    );
    app.stop().await;
}

/// Red team (issue 22): the same collision on an account's own route: its
/// `user_info_modified` record without an `AppID` element (`"appid": null`, as before the
/// Open Platform) must still match the topic's schema, which now says `appid` is the route's,
/// a non-empty string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_an_accounts_user_info_modified_record_matches_its_schema() {
    let (_redis, app) = spawn(|_| {}).await;
    let xml = format!(
        "<xml><ToUserName><![CDATA[gh_own]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[user_info_modified]]></Event><OpenID><![CDATA[o1]]></OpenID>\
         <RevokeInfo><![CDATA[301]]></RevokeInfo></xml>",
        now()
    );
    let (status, reason) = app.post_push(&xml).await;
    assert_eq!(status, 200, "{reason}");
    let records = app.read("event.user_info_modified", 1);
    let (_, event, value) = &records[0];
    assert_schema_valid(event.topic(), value);
    app.stop().await;
}

/// Red team (issue 22): a component beside one account that names no `original_id` (which
/// the configuration allows). The account's Token then speaks for any `gh_` id, the
/// authorizer's whose id is known included, and the component's for the `gh_` id the
/// account's own pushes carry: both land on the same topics as the other's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_an_account_without_original_id_and_the_component_never_speak_for_each_other() {
    // Beside a component the account must name its gh_ id (a configuration without one is
    // refused at start: `accounts::tests`); `spawn` names it `gh_own`.
    let (_redis, app) = spawn(|_| {}).await;
    let t = now();
    // The account's own follower, and the authorizer's (its gh_ id learned).
    assert_eq!(app.post_push(&subscribe("gh_own", "o1", t)).await.0, 200);
    assert_eq!(follow(&app, "o2", t).await.0, 200);
    // The account's Token naming the authorizer's gh_ id; the component's naming the
    // account's.
    let (by_account, _) = app.post_push(&subscribe(AUTHORIZER_GH, "o3", t)).await;
    let (by_component, _) = post(
        &app,
        "wxauthorizer000009",
        &sign(&subscribe("gh_own", "o4", t)),
    )
    .await;
    assert_eq!(
        (by_account, by_component),
        (403, 403),
        "the account's Token speaking for the authorizer's gh_ id; the component's for the \
         account's"
    );
    app.stop().await;
}

/// What held (issue 22 red team): a captured push of one kind replayed on the other kind's
/// route, and hostile authorization events, get a 4xx, publish nothing, record nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_cross_kind_replays_and_hostile_authorization_events_are_refused() {
    let (redis, app) = spawn(|_| {}).await;
    let t = now();
    let ticket_push = sign(&ticket(t, "ticket@@@x"));
    let (status, reason) = post(&app, AUTHORIZER, &ticket_push).await;
    assert_eq!(status, 400, "a ticket on an authorizer's route: {reason}");
    let follow = sign(&subscribe(AUTHORIZER_GH, "o1", t));
    let (status, reason) = post(&app, "auth", &follow).await;
    assert_eq!(status, 400, "a follow on the authorization URL: {reason}");
    for authorizer in ["wx:a", &"w".repeat(200), "wx a", "wx\u{7}a"] {
        let (status, reason) = post_authorization(&app, "unauthorized", authorizer, t).await;
        assert_eq!(status, 400, "AuthorizerAppid {authorizer:?}: {reason}");
        let key = format!("component:{{{COMPONENT}}}:authorizer:{authorizer}");
        assert_eq!(
            hget(&redis, &app, &key, "authorized"),
            None,
            "{authorizer:?}"
        );
    }
    let deep = format!(
        "<xml><AppId>{COMPONENT}</AppId><CreateTime>{t}</CreateTime><InfoType>x</InfoType>{}{}</xml>",
        "<a>".repeat(5000),
        "</a>".repeat(5000)
    );
    let (status, reason) = post(&app, "auth", &sign(&deep)).await;
    assert!((400..500).contains(&status), "deep: {status} {reason}");
    // Braces (a Redis hash tag) and unicode in AuthorizerAppid stay inside the component's tag.
    let odd = "{wx}é";
    assert_eq!(
        post_authorization(&app, "unauthorized", odd, t).await,
        (200, "success".into())
    );
    let key = format!("component:{{{COMPONENT}}}:authorizer:{odd}");
    assert_eq!(hget(&redis, &app, &key, "authorized").as_deref(), Some("0"));
    tokio::time::sleep(SETTLE).await;
    assert_eq!(app.count_all(), 1, "the braces' withdrawal only");
    app.stop().await;
}

/// What held (issue 22 red team): Redis paused (a network that swallows bytes) while an
/// authorizer pushes and WeChat withdraws: each is answered 503 within the ack deadline,
/// nothing published, and once Redis is back the withdrawal (retried) is answered `success`
/// and refuses the authorizer from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_a_paused_redis_fails_both_component_routes_closed_and_in_time() {
    let redis = RedisServer::start();
    let proxy = testkit::Proxy::start(testkit::redis_addr(&redis.url())).await;
    let mut config = test_config(&proxy.redis_url());
    with_component(&mut config);
    config.ack_deadline_ms = 1500;
    let app = TestApp::spawn_binary(config).await;
    let t = now();
    assert_eq!(follow(&app, "o1", t).await.0, 200);
    app.read_exactly("event.subscribe", 1, SETTLE, "o1").await;
    proxy.stall();
    let unauthorized = sign(&authorization("unauthorized", AUTHORIZER, t));
    for attempt in 0..3 {
        let started = std::time::Instant::now();
        let (status, reason) = follow(&app, "o2", t).await;
        assert_eq!(status, 503, "{attempt}: {reason}");
        let (status, reason) = post(&app, "auth", &unauthorized).await;
        assert_eq!(status, 503, "{attempt}: {reason}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no stall: {:?}",
            started.elapsed()
        );
    }
    proxy.cut();
    proxy.resume();
    let mut answered = (0, String::new());
    for _ in 0..40 {
        answered = post(&app, "auth", &unauthorized).await;
        if answered.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        answered,
        (200, "success".into()),
        "WeChat's retry, Redis back"
    );
    let (status, reason) = follow(&app, "o3", t).await;
    assert_eq!(status, 403, "{reason}");
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        (
            app.count("event.subscribe"),
            app.count("component.unauthorized")
        ),
        (1, 1)
    );
    app.stop().await;
}
