//! One push through the ingress, straight: [`prepare`] checks it and makes its Kafka record,
//! then [`Durability::deliver`] makes that durable.
//!
//! prepare: the query's signature and replay window → open (decrypt) → parse → normalize →
//! a [`Prepared`] record (topic, key, payload, and a plaintext push's nonce binding). What
//! fails here is the client's (4xx), and nothing is claimed or published.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use schemas::Topic;
use sha1::{Digest, Sha1};

use crate::accounts::Account;
use crate::cloudevents::CloudEvent;
use crate::config::Config;
use crate::deliver::{Accepted, BodyBinding, Durability, Prepared};
use crate::error::{PushError, Rejection};
use wechat::normalize::normalize;
use wechat::parse::{self, ParseError, Push};
use wechat::verify;

pub use wechat::Query;

/// A parameter the query must carry.
fn required<'a>(value: &'a Option<String>, name: &'static str) -> Result<&'a str, Rejection> {
    value.as_deref().ok_or(Rejection::MissingParam(name))
}

/// How far a push's `CreateTime` may lie ahead of its signed `timestamp`: WeChat stamps the
/// event before it signs the request, so a later `CreateTime` is a forgery that would win every
/// last-write-wins comparison downstream.
pub const MAX_CREATE_TIME_AHEAD: i64 = 60;

/// A query whose `signature` and `timestamp` passed: checked before the body is read, so an
/// unsigned request costs neither a read nor an in-flight permit.
#[derive(Debug)]
pub struct Signed {
    query: Query,
    timestamp: i64,
}

impl Signed {
    pub(crate) fn timestamp(&self) -> &str {
        self.query.timestamp.as_deref().unwrap_or_default()
    }

    pub(crate) fn nonce(&self) -> &str {
        self.query.nonce.as_deref().unwrap_or_default()
    }

    /// Whether a push stamped `create_time` claims to be later than its signature allows.
    pub(crate) fn create_time_ahead(&self, create_time: i64) -> bool {
        create_time > self.timestamp.saturating_add(MAX_CREATE_TIME_AHEAD)
    }
}

/// A verified push: its plaintext XML, and the digest its (timestamp, nonce) is bound to, if
/// any (see [`BodyBinding`]).
pub(crate) struct Opened<'b> {
    pub(crate) xml: Cow<'b, [u8]>,
    bound: Option<[u8; 20]>,
}

/// The checks a push needs and where it goes next, shared by all requests.
#[derive(Debug)]
pub struct Pipeline {
    tolerance: u64,
    durability: Arc<Durability>,
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Pipeline {
    pub fn new(config: &Config, durability: Arc<Durability>) -> Self {
        Pipeline {
            tolerance: config.timestamp_tolerance,
            durability,
        }
    }

    /// `GET`: WeChat's URL verification. Returns the `echostr` to echo.
    pub fn verify_url(&self, account: &Account, query: Query) -> Result<String, Rejection> {
        let signature = required(&query.signature, "signature")?;
        let timestamp = required(&query.timestamp, "timestamp")?;
        let nonce = required(&query.nonce, "nonce")?;
        required(&query.echostr, "echostr")?;
        verify::check(signature, &mut [account.token.expose(), timestamp, nonce])?;
        Ok(query.echostr.unwrap_or_default())
    }

    /// Checks a push's query: its `signature` over (token, timestamp, nonce) and the replay
    /// window. WeChat sends `signature` in every mode, so this needs no body.
    pub fn check_query(&self, account: &Account, query: Query) -> Result<Signed, Rejection> {
        let signature = required(&query.signature, "signature")?;
        let timestamp = required(&query.timestamp, "timestamp")?;
        let nonce = required(&query.nonce, "nonce")?;
        verify::check(signature, &mut [account.token.expose(), timestamp, nonce])?;
        let timestamp = verify::check_timestamp(timestamp, unix_now(), self.tolerance)?;
        Ok(Signed { query, timestamp })
    }

    /// `POST`: one push for `account`, received at `arrived`. `Ok` means answer 200. Also
    /// returns the push's topic when it got that far, for metrics.
    pub async fn push(
        &self,
        account: &Account,
        signed: &Signed,
        body: &[u8],
        arrived: Instant,
    ) -> (Option<Topic>, Result<Accepted, PushError>) {
        let prepared = match prepare(account, signed, body) {
            Ok(prepared) => prepared,
            Err(error) => return (None, Err(error)),
        };
        let topic = prepared.topic;
        (
            Some(topic),
            self.durability.deliver(prepared, arrived).await,
        )
    }
}

/// Checks a signed push and makes its Kafka record.
pub fn prepare<'a>(
    account: &'a Account,
    signed: &'a Signed,
    body: &[u8],
) -> Result<Prepared<'a>, PushError> {
    let Opened { xml, bound } = open(account, signed, body)?;
    let push = Push::try_from(&xml[..])?;
    if account
        .original_id
        .as_ref()
        .is_some_and(|id| *id != push.to_user)
    {
        return Err(Rejection::WrongAccount.into());
    }
    if signed.create_time_ahead(push.create_time) {
        return Err(Rejection::CreateTimeAhead.into());
    }
    let received_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let event = normalize(push, received_at)?;
    let topic = event.topic();
    let ce = CloudEvent::of(&event);
    let payload = serde_json::to_vec(&event).expect("an event serializes");
    let binding = bound.map(|body_sha1: [u8; 20]| BodyBinding {
        account: &account.name,
        timestamp: signed.timestamp(),
        nonce: signed.nonce(),
        body_sha1,
        body_digest: hex::encode(body_sha1),
    });
    Ok(Prepared {
        topic,
        id: event.id,
        key: event.openid,
        payload,
        ce,
        binding,
    })
}

/// Returns a signed push's plaintext XML: the body itself, or in compatible and safe mode
/// the decrypted `Encrypt` (the plaintext fields beside it do not count).
pub(crate) fn open<'b>(
    account: &Account,
    signed: &'b Signed,
    body: &'b [u8],
) -> Result<Opened<'b>, Rejection> {
    let query = &signed.query;
    if !query
        .encrypt_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("aes"))
    {
        // WeChat always encrypts for an account with a key: a plaintext push there is a
        // captured query with its `encrypt_type` and `msg_signature` dropped.
        if account.aes_key.is_some() {
            if !account.accept_plaintext {
                return Err(Rejection::PlaintextRefused);
            }
            tracing::warn!(account = %account.name, "plaintext push accepted for an account with an EncodingAESKey (accept_plaintext is on)");
        }
        return Ok(Opened {
            xml: body.into(),
            bound: Some(Sha1::digest(body).into()),
        });
    }
    let msg_signature = required(&query.msg_signature, "msg_signature")?;
    let key = account.aes_key.as_ref().ok_or(Rejection::NoAesKey)?;
    let envelope = parse::parse_document(body)?;
    let encrypt = envelope
        .iter()
        .find_map(|(name, value)| (name == "Encrypt").then(|| value.as_str()).flatten())
        .ok_or(ParseError::Missing("Encrypt"))?;
    verify::check(
        msg_signature,
        &mut [
            account.token.expose(),
            signed.timestamp(),
            signed.nonce(),
            encrypt,
        ],
    )?;
    let appid = account.appid.as_deref().unwrap_or_default();
    let xml = key.decrypt(encrypt, appid)?;
    // Bound to the decrypted push, not its ciphertext: a retry encrypted afresh (another
    // random prefix) under the same (timestamp, nonce) is the same push and must pass.
    let bound = account.accept_plaintext.then(|| Sha1::digest(&xml).into());
    Ok(Opened {
        xml: xml.into(),
        bound,
    })
}
