//! Open Platform mode: one third-party platform (a *component*) receives the pushes of every
//! Official Account that authorized it, all signed with the component's Token and encrypted
//! with its key for its AppID. Two kinds of route, both POST only:
//!
//! ```text
//! {INGEST_PATH}/component/auth ─▶ signature ─▶ msg_signature, decrypt ─▶ parse (InfoType) ─▶ record ─▶ deliver ─▶ 200 "success"
//!                                   403        403 (another AppID)        400               503         503
//! {INGEST_PATH}/component/{A}  ─▶ signature ─▶ msg_signature, decrypt ─▶ parse ─▶ not an account's ─▶ normalize (appid A) ─▶ admit ─▶ deliver ─▶ 200 "" (or a release-check reply)
//!                                   403        403 (plaintext too)       400       403                 400                   403/503   503
//! ```
//!
//! - **record**: the authorization URL's events change the component's state before they are
//!   answered: the newest ticket, and whether each authorizer is authorized (by `CreateTime`),
//!   so that once `unauthorized` is answered `success` its authorizer's pushes are refused.
//! - **admit**: an authorizer's push passes unless it withdrew its authorization, or its
//!   `ToUserName` is not the authorizer's known `gh_` id (the first push teaches it). Without
//!   the store's answer nothing is taken (503): the route fails closed.
//!
//! Everything else is an account push's: the same replay window, dedup, spool and topics. A
//! record of an authorizer's route carries `appid`, which its identity covers.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use schemas::{Event, Topic};
use store::component::{Admission, Authorization, AuthorizerOf, Components, Ticket, UserName};
use wechat::accounts::ComponentEntry;
use wechat::decrypt::AesKey;
use wechat::normalize::{normalize_component, normalize_on};
use wechat::parse::{ParseError, Push};
use wechat::reply::TextReply;

use crate::accounts::{Account, Accounts};
use crate::cloudevents::CloudEvent;
use crate::config::{Config, Secret};
use crate::deliver::{Accepted, Durability};
use crate::deliver::{BodyBinding, Prepared};
use crate::error::{PushError, Rejection, Unavailable};
use crate::pipeline::{open, unix_now, Opened, Signed};
use sha1::{Digest, Sha1};

/// The metrics' and logs' `account` of both component routes (never an authorizer's AppID:
/// there may be thousands).
pub const LABEL: &str = "component";

/// What the authorization URL answers once an event is durable.
const SUCCESS: &str = "success";

/// Which component route a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `{INGEST_PATH}/component/auth`: authorization events.
    Auth,
    /// `{INGEST_PATH}/component/{AUTHORIZER_APPID}`: an authorizer's pushes.
    Authorizer(String),
}

/// The component served, with what its pushes need.
#[derive(Debug)]
pub struct Component {
    /// The component as an account: its Token, its key and AppID, plaintext refused. The
    /// query and envelope checks are an encrypted account push's.
    account: Account,
    /// `{INGEST_PATH}/component/`.
    prefix: String,
    release_check: bool,
    /// Every configured account's `gh_` id: a component-signed push naming one is refused.
    original_ids: Vec<String>,
    store: Arc<dyn Components>,
    durability: Arc<Durability>,
    deadline: std::time::Duration,
    /// The account its (timestamp, nonce) bindings are kept under: `component/{appid}`, which
    /// no account's name can be.
    binding_account: String,
}

impl Component {
    /// The component a config names, if any, served beside `accounts`.
    pub fn new(
        entry: ComponentEntry,
        config: &Config,
        accounts: &Accounts,
        store: Arc<dyn Components>,
        durability: Arc<Durability>,
    ) -> Result<Component, String> {
        entry.check("[component]")?;
        let aes_key = AesKey::parse(entry.encoding_aes_key.expose())
            .map_err(|e| format!("[component] encoding_aes_key: {e}"))?;
        let binding_account = format!("component/{}", entry.appid);
        Ok(Component {
            binding_account,
            account: Account {
                name: LABEL.to_owned(),
                token: Secret::new(entry.token.expose()),
                appid: Some(entry.appid),
                aes_key: Some(aes_key),
                appsecret: None,
                original_id: None,
                accept_plaintext: false,
            },
            prefix: format!("{}/component/", config.path.trim_end_matches('/')),
            release_check: entry.release_check,
            original_ids: accounts
                .iter()
                .filter_map(|(_, a)| a.original_id.clone())
                .collect(),
            store,
            durability,
            deadline: config.ack_deadline(),
        })
    }

    /// The component's AppID.
    pub fn appid(&self) -> &str {
        self.account.appid.as_deref().unwrap_or_default()
    }

    /// One of the component's authorizers, as the store names it.
    fn of<'a>(&'a self, authorizer: &'a str) -> AuthorizerOf<'a> {
        AuthorizerOf {
            component: self.appid(),
            authorizer,
        }
    }

    /// The component as the pipeline's checks see it (Token, key, AppID).
    pub fn account(&self) -> &Account {
        &self.account
    }

    /// The route a request path is, if one of the component's: `auth`, or an AppID of 1 to
    /// 64 letters, digits, `_` or `-` (anything else is no route: 404).
    pub fn route(&self, path: &str) -> Option<Route> {
        route(&self.prefix, path)
    }

    /// One signed push on `route`, received at `arrived`: `Ok` is the 200 and its body. Also
    /// returns the push's topic when it got that far, for metrics.
    pub async fn push(
        &self,
        route: &Route,
        signed: &Signed,
        body: &[u8],
        arrived: Instant,
    ) -> (Option<Topic>, Result<(Accepted, Bytes), PushError>) {
        let mut topic = None;
        let result = async {
            let Opened { xml, .. } = open(&self.account, signed, body)?;
            let push = self.envelope(route, &xml)?;
            if signed.create_time_ahead(push.create_time) {
                return Err(Rejection::CreateTimeAhead.into());
            }
            match route {
                Route::Auth => self.authorization(push, arrived, &mut topic).await,
                Route::Authorizer(appid) => {
                    self.authorizer(appid, signed, push, &xml, arrived, &mut topic)
                        .await
                }
            }
        }
        .await;
        (topic, result)
    }

    /// A push's envelope, parsed as `route` takes it and held to the tenant boundary.
    fn envelope(&self, route: &Route, xml: &[u8]) -> Result<Push, PushError> {
        let push = match route {
            Route::Auth => Push::component(xml)?,
            Route::Authorizer(_) => Push::try_from(xml)?,
        };
        let foreign = match route {
            // The ciphertext named the component already; the AppId beside it must agree.
            Route::Auth => push.to_user != self.appid(),
            // The component's key never speaks for a configured account.
            Route::Authorizer(_) => self.original_ids.contains(&push.to_user),
        };
        if foreign {
            return Err(Rejection::WrongAccount.into());
        }
        Ok(push)
    }

    /// An authorization event: recorded, then made durable, then `success`.
    async fn authorization(
        &self,
        push: Push,
        arrived: Instant,
        topic: &mut Option<Topic>,
    ) -> Result<(Accepted, Bytes), PushError> {
        let event = normalize_component(push, received_at())?;
        *topic = Some(event.topic());
        self.record(&event, arrived).await?;
        let accepted = self.durability.deliver(prepared(event), arrived).await?;
        Ok((accepted, Bytes::from_static(SUCCESS.as_bytes())))
    }

    /// Records what an authorization event changes, before it is answered: WeChat retries
    /// until `success`, and each step is idempotent.
    async fn record(&self, event: &Event, arrived: Instant) -> Result<(), PushError> {
        let component = self.appid();
        let field = |name: &str, element: &'static str| {
            event
                .fields
                .get(name)
                .and_then(serde_json::Value::as_str)
                .ok_or(PushError::from(ParseError::Missing(element)))
        };
        let by = self.store_by(arrived);
        let timeout = || Unavailable::ComponentStore(store::StoreError::Timeout);
        let stored = match event.type_.as_str() {
            "component_verify_ticket" => {
                let ticket = field("ticket", "ComponentVerifyTicket")?;
                tokio::time::timeout_at(
                    by,
                    self.store.set_ticket(Ticket {
                        component,
                        ticket,
                        created_at: event.created_at,
                    }),
                )
                .await
                .map_err(|_| timeout())?
                .map(drop)
            }
            type_ @ ("authorized" | "updateauthorized" | "unauthorized") => {
                let authorizer = field("authorizer_appid", "AuthorizerAppid")?;
                let authorized = type_ != "unauthorized";
                tracing::info!(authorizer, authorized, "component authorization event");
                tokio::time::timeout_at(
                    by,
                    self.store.set_authorized(Authorization {
                        of: self.of(authorizer),
                        authorized,
                        created_at: event.created_at,
                    }),
                )
                .await
                .map_err(|_| timeout())?
                .map(drop)
            }
            _ => Ok(()),
        };
        stored.map_err(|e| Unavailable::ComponentStore(e).into())
    }

    /// An authorizer's push (its `xml` beside it): admitted, then made durable; answered
    /// empty, or with its fixed reply when it is one of WeChat's release-check pushes and that
    /// is on.
    async fn authorizer(
        &self,
        appid: &str,
        signed: &Signed,
        push: Push,
        xml: &[u8],
        arrived: Instant,
        topic: &mut Option<Topic>,
    ) -> Result<(Accepted, Bytes), PushError> {
        let reply = self
            .release_check
            .then(|| {
                wechat::reply::release_check(
                    appid,
                    &push.to_user,
                    &push.msg_type,
                    push.text("Event"),
                    push.text("Content"),
                )
                .map(|content| (push.from_user.clone(), push.to_user.clone(), content))
            })
            .flatten();
        // The route is bound to the request: `msg_signature` covers the timestamp, the nonce
        // and the ciphertext but not the path, so a captured push replayed on another
        // authorizer's route finds its (timestamp, nonce) bound to this route and is refused.
        // WeChat's retries come on the same route, with the same push.
        let route_sha1: [u8; 20] = {
            let mut digest = Sha1::new();
            digest.update(appid.as_bytes());
            digest.update([0]);
            digest.update(xml);
            digest.finalize().into()
        };
        let event = normalize_on(push, received_at(), Some(appid))?;
        *topic = Some(event.topic());
        let admission = tokio::time::timeout_at(
            self.store_by(arrived),
            self.store.admit(self.of(appid), &event.account),
        )
        .await
        .map_err(|_| Unavailable::ComponentStore(store::StoreError::Timeout))?
        .map_err(Unavailable::ComponentStore)?;
        match admission {
            Admission::Admitted => {}
            Admission::Unauthorized => return Err(Rejection::Unauthorized.into()),
            Admission::OtherAccount { known } => {
                tracing::info!(
                    authorizer = appid,
                    known,
                    "push names another account than the authorizer's"
                );
                return Err(Rejection::WrongAccount.into());
            }
        }
        let user_name = event.account.clone();
        let mut record = prepared(event);
        record.binding = Some(BodyBinding {
            account: &self.binding_account,
            timestamp: signed.timestamp(),
            nonce: signed.nonce(),
            body_sha1: route_sha1,
            body_digest: hex::encode(route_sha1),
        });
        let accepted = self.durability.deliver(record, arrived).await?;
        // Its gh_ id, once it is known to be this route's (a replay the binding refused never
        // gets here), in the background: the answer does not wait for it. The worker's
        // api_get_authorizer_info has the last word.
        let (store, component, authorizer) = (
            Arc::clone(&self.store),
            self.appid().to_owned(),
            appid.to_owned(),
        );
        tokio::spawn(async move {
            if let Err(error) = store
                .write_user_name(
                    AuthorizerOf {
                        component: &component,
                        authorizer: &authorizer,
                    },
                    UserName::Learned(&user_name),
                )
                .await
            {
                tracing::warn!(%error, %authorizer, "an authorizer's gh_ id not learned: the next push teaches it");
            }
        });
        let body = match reply {
            None => Bytes::new(),
            Some((user, account, content)) => self.seal(&user, &account, &content),
        };
        Ok((accepted, body))
    }

    /// Until when the component store may answer for a push that arrived at `arrived`: half
    /// the ack deadline, leaving the other half to making it durable.
    fn store_by(&self, arrived: Instant) -> tokio::time::Instant {
        (arrived + self.deadline / 2).into()
    }

    /// A passive text reply from `account` to `user`, in safe mode with the component's key.
    fn seal(&self, user: &str, account: &str, content: &str) -> Bytes {
        let mut random = [0u8; 24];
        if let Err(error) = getrandom::fill(&mut random) {
            // The push is durable: it is answered, without its reply.
            tracing::warn!(%error, "no randomness for a release-check reply: answered empty");
            return Bytes::new();
        }
        let (prefix, nonce) = random.split_at(16);
        let now = unix_now();
        let reply = TextReply {
            to_user: user,
            from_user: account,
            create_time: now,
            content,
        };
        let sealed = reply.encrypted(
            self.account
                .aes_key
                .as_ref()
                .expect("a component has a key"),
            self.appid(),
            self.account.token.expose(),
            &now.to_string(),
            &hex::encode(nonce),
            prefix.try_into().expect("16 bytes"),
        );
        Bytes::from(sealed)
    }
}

/// The route `path` is under `prefix` (`{INGEST_PATH}/component/`).
fn route(prefix: &str, path: &str) -> Option<Route> {
    let rest = path.strip_prefix(prefix)?;
    if rest == "auth" {
        return Some(Route::Auth);
    }
    let valid = (1..=64).contains(&rest.len())
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    valid.then(|| Route::Authorizer(rest.to_owned()))
}

fn received_at() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// An event's Kafka record: keyed by its `openid` (an authorization event's authorizer, or
/// the component for a ticket). No nonce binding: every component push is encrypted, and
/// `msg_signature` covers its ciphertext.
fn prepared(event: Event) -> Prepared<'static> {
    let ce = CloudEvent::of(&event);
    let payload = serde_json::to_vec(&event).expect("an event serializes");
    Prepared {
        topic: event.topic(),
        id: event.id,
        key: event.openid,
        payload,
        ce,
        binding: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_auth_or_an_appid() {
        let prefix = "/wechat/component/";
        assert_eq!(route(prefix, "/wechat/component/auth"), Some(Route::Auth));
        assert_eq!(
            route(prefix, "/wechat/component/wx570bc396a51b8ff8"),
            Some(Route::Authorizer("wx570bc396a51b8ff8".into()))
        );
        assert_eq!(
            route(prefix, &format!("{prefix}{}", "a-_9".repeat(16))),
            Some(Route::Authorizer("a-_9".repeat(16)))
        );
        for path in [
            "/wechat/component/",
            "/wechat/component",
            "/wechat/component/wx/x",
            "/wechat/component/wx.1",
            "/wechat/component/wx%20",
            "/wechat/other/wx1",
        ] {
            assert_eq!(route(prefix, path), None, "{path}");
        }
        assert_eq!(route(prefix, &format!("{prefix}{}", "a".repeat(65))), None);
    }
}
