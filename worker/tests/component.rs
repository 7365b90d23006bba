//! Open Platform: the `component` role exchanges authorizations, and welcomes for an
//! authorizer's followers go out with that authorizer's token only; through the worker binary,
//! on the mock Kafka, a real redis-server and the fake WeChat API.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use store::component::{Authorization, AuthorizerOf, Components, Ticket};

const COMPONENT: &str = "wxcomponent";
const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

/// An authorizer of the test's component, as the store names it.
fn of(authorizer: &str) -> AuthorizerOf<'_> {
    AuthorizerOf {
        component: COMPONENT,
        authorizer,
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An authorization event as the ingress writes it to `{prefix}.component.{info_type}`.
fn authorization(
    info_type: &str,
    authorizer: &str,
    code: Option<&str>,
    at: i64,
) -> (String, Vec<u8>) {
    let mut value = json!({
        "id": format!("{COMPONENT}:{authorizer}:{at}:component.{info_type}:h0"),
        "account": COMPONENT, "openid": authorizer, "created_at": at,
        "received_at": "2026-12-06T08:00:00.000Z", "kind": "component", "type": info_type,
        "authorizer_appid": authorizer, "extra": {}
    });
    if let Some(code) = code {
        value["authorization_code"] = json!(code);
        value["authorization_code_expired_time"] = json!(at + 3600);
        value["pre_auth_code"] = json!(null);
    }
    (authorizer.to_owned(), serde_json::to_vec(&value).unwrap())
}

/// `record` with `fields` set in its value: the test events below are the common ones
/// restamped for another route or kind.
fn with_fields((key, value): (String, Vec<u8>), fields: serde_json::Value) -> (String, Vec<u8>) {
    let mut value: serde_json::Value = serde_json::from_slice(&value).unwrap();
    for (name, field) in fields.as_object().unwrap() {
        value[name] = field.clone();
    }
    (key, serde_json::to_vec(&value).unwrap())
}

/// A follow of an authorizer's account, as the ingress writes it from the authorizer's route.
fn authorizer_subscribe(authorizer: &str, openid: &str, at: i64) -> (String, Vec<u8>) {
    with_fields(
        subscribe(&format!("gh_{authorizer}"), openid, at, None),
        json!({
            "appid": authorizer,
            "id": format!("gh_{authorizer}:{openid}:{at}:event.subscribe:h{authorizer}"),
        }),
    )
}

/// A text to WeChat's release-check account, as the ingress writes it from `appid`'s
/// authorizer route.
fn release_check_text(
    appid: &str,
    openid: &str,
    at: i64,
    content: &str,
    msg_id: &str,
) -> (String, Vec<u8>) {
    let account = "gh_3c884a361561";
    with_fields(
        event(
            "text",
            account,
            openid,
            at,
            json!({"content": content, "msg_id": msg_id}),
        ),
        json!({
            "kind": "message",
            "appid": appid,
            "id": format!("{account}:{openid}:{at}:message.text:{appid}"),
        }),
    )
}

fn component_vars() -> Vec<(&'static str, String)> {
    vec![
        ("WECHAT_COMPONENT_APPID", COMPONENT.into()),
        ("WECHAT_COMPONENT_APPSECRET", "component-secret".into()),
        ("WECHAT_COMPONENT_TOKEN", "component-token".into()),
        ("WECHAT_COMPONENT_ENCODING_AES_KEY", KEY.into()),
        // The WECHAT_* account of the test's Env: beside a component, it needs its gh_ id.
        ("WECHAT_ORIGINAL_ID", "gh_test".into()),
    ]
}

/// The worker binary with the component configured, running `roles`.
fn component_worker(env: &Env, roles: &str, extra: &[(&str, String)]) -> KillOnDrop {
    KillOnDrop(
        env.command()
            .env("RUST_LOG", "warn")
            .envs(component_vars())
            .envs(extra.iter().cloned())
            .args(["--role", roles])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// The component role answering WeChat's release check.
fn release_check_worker(env: &Env) -> KillOnDrop {
    component_worker(
        env,
        "component",
        &[("WECHAT_COMPONENT_RELEASE_CHECK", "true".into())],
    )
}

fn produce(env: &Env, suffix: &str, records: &[(String, Vec<u8>)]) {
    let records: Vec<(&str, &[u8])> = records
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    env.kafka
        .produce(&format!("{}.{suffix}", env.prefix), &records);
}

/// The `authorized` records of `(authorizer, code)`s, in one batch.
fn produce_authorized(env: &Env, at: i64, authorizers: &[(&str, &str)]) {
    let records: Vec<_> = authorizers
        .iter()
        .map(|(authorizer, code)| authorization("authorized", authorizer, Some(code), at))
        .collect();
    produce(env, "component.authorized", &records);
}

/// Follows of `(authorizer, openid, at)`, in one batch.
fn produce_follows(env: &Env, follows: &[(&str, &str, i64)]) {
    let records: Vec<_> = follows
        .iter()
        .map(|(authorizer, openid, at)| authorizer_subscribe(authorizer, openid, *at))
        .collect();
    produce(env, "event.subscribe", &records);
}

/// The component store this test's workers share.
fn components(env: &Env) -> Arc<dyn Components> {
    let engine = store::Engine::open(&env.redis.url(), Duration::from_secs(1)).unwrap();
    store::component::open(&engine, &env.key_prefix)
}

/// A test's Env and component store, the component's ticket kept and each `(code,
/// authorizer)` known to the fake WeChat: what every exchange needs first.
async fn start(codes: &[(&str, &str)]) -> (Env, Arc<dyn Components>) {
    let env = Env::start().await;
    let store = components(&env);
    store
        .set_ticket(Ticket {
            component: COMPONENT,
            ticket: "ticket@@@1",
            created_at: now(),
        })
        .await
        .unwrap();
    for (code, authorizer) in codes {
        env.wechat.authorization_code(code, authorizer);
    }
    (env, store)
}

/// [`start`] with the welcome and component roles running in one worker binary.
async fn start_welcoming(codes: &[(&str, &str)]) -> (Env, Arc<dyn Components>, KillOnDrop) {
    let (env, store) = start(codes).await;
    let worker = component_worker(&env, "welcome,component", &[]);
    (env, store, worker)
}

/// Whether exactly one message has gone to `openid` within `secs` seconds.
async fn sent_once(env: &Env, openid: &str, secs: u64) -> bool {
    eventually(Duration::from_secs(secs), || {
        env.wechat.sends_to(openid) == 1
    })
    .await
}

/// The codes the fake WeChat has exchanged, in order.
fn exchanges(env: &Env) -> Vec<String> {
    env.wechat.state.lock().unwrap().code_exchanges.clone()
}

/// Produces `authorizer`'s authorization and waits until WeChat has taken its code (however
/// late it answers).
async fn authorize_until_exchanged(env: &Env, authorizer: &str, code: &str, at: i64) {
    produce_authorized(env, at, &[(authorizer, code)]);
    assert!(
        eventually(Duration::from_secs(30), || !exchanges(env).is_empty()).await,
        "the code is exchanged"
    );
}

/// Once WeChat answers at once again, a follow of `authorizer` by `fan` must be welcomed:
/// the authorization survived `what`; else the message tells what was exchanged and kept.
async fn assert_authorization_survives(
    env: &Env,
    store: &Arc<dyn Components>,
    (authorizer, fan, at): (&str, &str, i64),
    what: &str,
) {
    env.wechat.state.lock().unwrap().component_delay = Duration::ZERO;
    produce_follows(env, &[(authorizer, fan, at)]);
    let welcomed = sent_once(env, fan, 40).await;
    let exchanges = exchanges(env);
    let kept = store.authorizer(of(authorizer)).await.unwrap();
    assert!(
        welcomed,
        "the authorization survives {what}: code exchanges {exchanges:?}, refresh token kept \
         {:?}",
        kept.refresh_token
    );
}

#[tokio::test]
async fn an_authorization_is_exchanged_once_and_its_followers_are_welcomed_with_its_token() {
    let (env, store) = start(&[("code-a", "wxauth_a")]).await;
    let t = now();
    // A follow that comes before its authorizer's authorization is exchanged waits for it.
    produce_follows(&env, &[("wxauth_a", "fan_a1", t)]);
    let _worker = component_worker(&env, "welcome,component", &[]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        env.wechat.sends_to("fan_a1"),
        0,
        "no refresh token yet: nothing sent"
    );
    assert!(
        env.wechat.token_appids().is_empty(),
        "never with an account's credentials"
    );

    produce_authorized(&env, t, &[("wxauth_a", "code-a")]);
    assert!(
        sent_once(&env, "fan_a1", 30).await,
        "the held follow is welcomed once its authorization is exchanged"
    );
    let state = store.authorizer(of("wxauth_a")).await.unwrap();
    assert!(state
        .refresh_token
        .is_some_and(|r| r.starts_with("refreshtoken@@@wxauth_a")));
    assert_eq!(
        state.user_name.as_deref(),
        Some("gh_wxauth_a"),
        "api_get_authorizer_info"
    );
    let tokens = env.wechat.tokens_sent_to("fan_a1");
    assert!(
        tokens[0].starts_with("TOKEN-wxauth_a-"),
        "the authorizer's own token: {tokens:?}"
    );
    assert_eq!(
        env.wechat.state.lock().unwrap().component_tickets,
        ["ticket@@@1"],
        "the stored ticket got the component token"
    );

    // A redelivery of the authorization exchanges nothing again (a code is good once).
    produce_authorized(&env, t, &[("wxauth_a", "code-a")]);
    produce_follows(&env, &[("wxauth_a", "fan_a2", t + 1)]);
    assert!(sent_once(&env, "fan_a2", 30).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(exchanges(&env), ["code-a"], "exchanged once");
    assert_eq!(env.wechat.sends_to("fan_a1"), 1);
    assert!(
        env.wechat.token_appids().is_empty(),
        "stable_token never asked"
    );
}

#[tokio::test]
async fn after_unauthorized_nothing_more_is_sent_for_that_authorizer() {
    let (env, store, _worker) =
        start_welcoming(&[("code-b", "wxauth_b"), ("code-c", "wxauth_c")]).await;
    let t = now();
    produce_authorized(&env, t, &[("wxauth_b", "code-b"), ("wxauth_c", "code-c")]);
    produce_follows(&env, &[("wxauth_b", "fan_b1", t)]);
    assert!(sent_once(&env, "fan_b1", 30).await);

    produce(
        &env,
        "component.unauthorized",
        &[authorization("unauthorized", "wxauth_b", None, t + 10)],
    );
    assert!(
        eventually(Duration::from_secs(20), || authorized(&env, "wxauth_b")
            .as_deref()
            == Some("0"))
        .await,
        "the withdrawal is recorded"
    );
    produce_follows(
        &env,
        &[
            ("wxauth_b", "fan_b2", t + 11),
            ("wxauth_c", "fan_c1", t + 11),
        ],
    );
    assert!(
        sent_once(&env, "fan_c1", 30).await,
        "another authorizer's follows go on"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.wechat.sends_to("fan_b2"),
        0,
        "nothing sent for a withdrawn authorizer"
    );
    let state = store.authorizer(of("wxauth_b")).await.unwrap();
    assert_eq!(state.refresh_token, None, "its refresh token is forgotten");
    assert!(
        !env.has_key(&format!(
            "component:{{{COMPONENT}}}:authorizer_token:wxauth_b"
        )),
        "its cached access token is forgotten"
    );
}

/// The Redis key of the component store's hash for `authorizer`.
fn authorizer_hash(env: &Env, authorizer: &str) -> String {
    format!(
        "{}:component:{{{COMPONENT}}}:authorizer:{authorizer}",
        env.key_prefix
    )
}

/// The authorizer's `authorized` field in Redis (the component store's hash).
fn authorized(env: &Env, authorizer: &str) -> Option<String> {
    let key = authorizer_hash(env, authorizer);
    redis::Commands::hget(&mut env.redis.conn(), key, "authorized").unwrap()
}

#[tokio::test]
async fn the_release_check_exchanges_the_code_and_answers_through_the_api() {
    let test_account = "wx570bc396a51b8ff8";
    let (env, _store) = start(&[
        ("query-code-1", test_account),
        ("query-code-2", "wxnot_a_test_account"),
    ])
    .await;
    let t = now();
    let _worker = release_check_worker(&env);
    produce(
        &env,
        "message.text",
        &[
            release_check_text(
                test_account,
                "test_user",
                t,
                "QUERY_AUTH_CODE:query-code-1",
                "1",
            ),
            release_check_text(
                "wxnot_a_test_account",
                "other_user",
                t,
                "QUERY_AUTH_CODE:query-code-2",
                "1",
            ),
        ],
    );
    assert!(
        sent_once(&env, "test_user", 30).await,
        "the test account's user gets {{code}}_from_api"
    );
    let sends = env.wechat.sends();
    assert!(
        sends.contains(&("test_user".into(), "query-code-1_from_api".into())),
        "{sends:?}"
    );
    assert!(
        env.wechat.tokens_sent_to("test_user")[0].starts_with(&format!("TOKEN-{test_account}-"))
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.wechat.sends_to("other_user"),
        0,
        "only WeChat's test accounts"
    );
    assert_eq!(exchanges(&env), ["query-code-1"]);
}

#[tokio::test]
async fn an_account_without_its_gh_id_beside_a_component_refuses_to_start() {
    let env = Env::start().await;
    let mut vars: Vec<(&str, String)> = component_vars();
    vars.retain(|(name, _)| *name != "WECHAT_ORIGINAL_ID");
    let vars: Vec<(&str, &str)> = vars.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let (code, _, stderr) = env.run_command(&vars, &["--role", "welcome"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("original_id"), "{stderr}");
}

#[tokio::test]
async fn the_component_role_without_a_component_refuses_to_start() {
    let env = Env::start().await;
    let (code, _, stderr) = env.run_command(&[], &["--role", "component"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("WECHAT_COMPONENT"), "{stderr}");
    let (code, _, stderr) = env.run_command(&[], &["rebuild", "--role", "component"]);
    assert_ne!(code, 0, "{stderr}");
}

/// Red team (issue 22): an authorizer's token is cached under its AppID alone,
/// `{p}:token:{A}`, the very key a configured account's own token (its AppSecret's) is cached
/// under. A follow from the authorizer route `/component/wxtest` (the configured account's
/// AppID; e.g. a captured push of another authorizer replayed there) with no refresh token
/// kept for it must wait, never go out with the account's AppSecret token.
#[tokio::test]
async fn red_an_authorizer_route_never_borrows_a_configured_accounts_cached_token() {
    let (env, _store, _worker) = start_welcoming(&[]).await;
    let t = now();
    // The configured account (WECHAT_APPID=wxtest) welcomes its own follower: its token, from
    // its AppSecret, is cached.
    produce(
        &env,
        "event.subscribe",
        &[subscribe("gh_test", "fan_account", t, None)],
    );
    assert!(
        sent_once(&env, "fan_account", 30).await,
        "the account's own welcome"
    );
    // A follow recorded on the authorizer route named wxtest: no authorization was ever
    // exchanged for it, so no refresh token is kept.
    produce_follows(&env, &[("wxtest", "fan_route", t + 1)]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let account_token = env.wechat.tokens_sent_to("fan_account");
    assert_eq!(
        env.wechat.tokens_sent_to("fan_route"),
        Vec::<String>::new(),
        "no refresh token for authorizer wxtest: nothing may be sent, least of all with the \
         account's AppSecret token {account_token:?} (cached at token:{{wxtest}} too)"
    );
}

/// Red team (issue 22): a redelivered release-check text (the same record twice, as after a
/// worker dies before its commit) must not exchange its code again, nor send
/// `{code}_from_api` twice: an authorization record's redelivery finds its refresh token
/// kept and stops; the release check's path goes to `api_query_auth` regardless.
#[tokio::test]
async fn red_a_redelivered_release_check_exchanges_and_sends_once() {
    let test_account = "wx570bc396a51b8ff8";
    let (env, _store) = start(&[("query-code-r", test_account)]).await;
    let t = now();
    let record = release_check_text(
        test_account,
        "test_user_r",
        t,
        "QUERY_AUTH_CODE:query-code-r",
        "7",
    );
    let _worker = release_check_worker(&env);
    produce(&env, "message.text", &[record.clone(), record]);
    assert!(
        eventually(Duration::from_secs(30), || env
            .wechat
            .sends_to("test_user_r")
            >= 1)
        .await,
        "the test account's user gets {{code}}_from_api"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        (exchanges(&env), env.wechat.sends_to("test_user_r")),
        (vec!["query-code-r".to_owned()], 1),
        "one exchange and one send for one record delivered twice"
    );
}

/// Red team (issue 22): Redis fails in the moment between `api_query_auth` answering (the
/// code is spent: WeChat takes it once) and the refresh token being kept. The worker must
/// keep what the exchange gave once Redis is back, not ask WeChat again with the spent code
/// and lose the authorization: the authorizer's followers would wait for a refresh token
/// that never comes.
#[tokio::test]
async fn red_an_exchanged_code_survives_redis_failing_before_its_refresh_token_is_kept() {
    let (env, store) = start(&[("code-r", "wxauth_r")]).await;
    let proxy = testkit::Proxy::start(testkit::redis_addr(&env.redis.url())).await;
    // The exchange is taken at once and answered late, inside the API timeout.
    env.wechat.state.lock().unwrap().component_delay = Duration::from_millis(700);
    let t = now();
    let _worker = component_worker(
        &env,
        "welcome,component",
        &[("REDIS_URL", proxy.redis_url())],
    );
    authorize_until_exchanged(&env, "wxauth_r", "code-r", t).await;
    // Redis goes away while WeChat answers, and comes back.
    proxy.stall();
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.cut();
    proxy.resume();
    assert_authorization_survives(&env, &store, ("wxauth_r", "fan_r1", t + 1), "a Redis blip")
        .await;
}

/// Red team (issue 22): once the ingress has recorded an `unauthorized` (it does so before
/// answering `success`), nothing more may be sent for that authorizer, even while its
/// `component.unauthorized` record is not handled yet (the component role lags, or the record
/// sits in the ingress's spool): the welcome still finds the authorizer's access token cached
/// and sends with it.
#[tokio::test]
async fn red_no_welcome_goes_out_for_an_authorizer_the_ingress_recorded_withdrawn() {
    let (env, store, _worker) = start_welcoming(&[("code-w", "wxauth_w")]).await;
    let t = now();
    produce_authorized(&env, t - 20, &[("wxauth_w", "code-w")]);
    produce_follows(&env, &[("wxauth_w", "fan_w1", t - 10)]);
    assert!(
        sent_once(&env, "fan_w1", 30).await,
        "welcomed while authorized"
    );
    // The ingress records the withdrawal and answers success; its record has not reached
    // the component role.
    store
        .set_authorized(Authorization {
            of: of("wxauth_w"),
            authorized: false,
            created_at: t - 5,
        })
        .await
        .unwrap();
    produce_follows(&env, &[("wxauth_w", "fan_w2", t - 8)]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        env.wechat.tokens_sent_to("fan_w2"),
        Vec::<String>::new(),
        "withdrawn: nothing more is sent for it"
    );
}

/// Red team (issue 22): a welcome waiting for an authorizer's refresh token holds "only that
/// authorizer's records", but the hold is keyed by the record's `account` (its `gh_` id), not
/// by the route's AppID. A record from a route that was never authorized naming authorizer
/// A's `gh_` id (what a captured push replayed on another route publishes) must not hold A's
/// own followers' welcomes.
#[tokio::test]
async fn red_a_hold_for_an_unauthorized_route_never_holds_another_authorizers_welcomes() {
    let (env, _store, _worker) = start_welcoming(&[("code-h", "wxauth_h")]).await;
    let t = now();
    produce_authorized(&env, t - 20, &[("wxauth_h", "code-h")]);
    assert!(
        eventually(Duration::from_secs(30), || store_has_refresh(
            &env, "wxauth_h"
        ))
        .await,
        "A's authorization exchanged"
    );
    // On the route of wxnever (no authorization, no refresh token), naming A's gh_ id.
    let (_, forged) = with_fields(
        authorizer_subscribe("wxnever", "fan_h0", t - 5),
        json!({
            "account": "gh_wxauth_h",
            "id": format!("gh_wxauth_h:fan_h0:{}:event.subscribe:hwxnever", t - 5),
        }),
    );
    // One key, so one partition: a hold orders records within a partition only.
    let key = "fan_h".to_owned();
    let (_, own) = authorizer_subscribe("wxauth_h", "fan_h1", t - 4);
    produce(
        &env,
        "event.subscribe",
        &[(key.clone(), forged), (key, own)],
    );
    let welcomed = sent_once(&env, "fan_h1", 30).await;
    assert!(
        welcomed,
        "A's own follower waits behind a hold for wxnever's refresh token"
    );
}

fn store_has_refresh(env: &Env, authorizer: &str) -> bool {
    let key = authorizer_hash(env, authorizer);
    redis::Commands::hexists(&mut env.redis.conn(), key, "refresh_token").unwrap()
}

/// Red team (issue 22): WeChat takes the code but its answer to `api_query_auth` comes after
/// the worker gave up waiting (the request was written: `Unanswered`). The code is spent;
/// asking again gets 61010. WeChat's `api_get_authorizer_info` answers the authorizer's
/// refresh token too, so the authorization need not be lost: its followers must be welcomed.
#[tokio::test]
async fn red_an_authorization_survives_api_query_auth_answering_too_late() {
    let (env, store) = start(&[("code-l", "wxauth_l")]).await;
    // Past WECHAT_API_TIMEOUT_MS (1000) for the first exchange only.
    env.wechat.state.lock().unwrap().component_delay = Duration::from_millis(1800);
    let t = now();
    let _worker = component_worker(&env, "welcome,component", &[]);
    authorize_until_exchanged(&env, "wxauth_l", "code-l", t).await;
    assert_authorization_survives(&env, &store, ("wxauth_l", "fan_l1", t + 1), "a late answer")
        .await;
}
