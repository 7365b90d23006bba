//! [`Push`] → [`schemas::Event`]: the contract's JSON, with the dedup identity.

use schemas::{Detail, DetailShape, Event, Kind, Topic};
use serde_json::{Map, Value};
use sha1::{Digest, Sha1};

use crate::parse::{ParseError, Push};

/// An OpenID or account id: non-empty, at most 128 characters, and free of `:`, white space
/// and control characters, so the identity built from it is unambiguous.
fn check_id(value: &str, field: &'static str) -> Result<(), ParseError> {
    let ok = !value.is_empty()
        && value.chars().count() <= 128
        && !value.chars().any(|c| c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ParseError::BadField(field))
    }
}

/// The dedup identity: FromUserName + CreateTime, as WeChat recommends, qualified by the
/// account and the type, by `MsgId` where the push has one, and by a digest of `EventKey`
/// where it has one (two CLICKs on different keys in one second are two events). Every retry
/// of a push carries the same fields, so it gets the same identity.
pub fn identity(
    account: &str,
    openid: &str,
    created_at: i64,
    kind: Kind,
    type_: &str,
    msg_id: Option<&str>,
    event_key: Option<&str>,
) -> String {
    let kind = match kind {
        Kind::Event => "event",
        Kind::Message => "message",
    };
    let mut id = format!("{account}:{openid}:{created_at}:{kind}.{type_}");
    if let Some(msg_id) = msg_id.map(str::trim).filter(|m| !m.is_empty()) {
        id.push_str(":m");
        id.push_str(msg_id);
    }
    if let Some(key) = event_key.filter(|k| !k.is_empty()) {
        let digest = Sha1::digest(key.as_bytes());
        id.push_str(":k");
        id.push_str(&hex::encode(&digest[..8]));
    }
    id
}

fn number(push: &mut Push, field: &'static str, range: f64) -> Result<f64, ParseError> {
    let text = push.take_text(field).ok_or(ParseError::Missing(field))?;
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && n.abs() <= range)
        .ok_or(ParseError::BadField(field))
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// Normalizes a push received at `received_at` (RFC 3339).
pub fn normalize(mut push: Push, received_at: String) -> Result<Event, ParseError> {
    check_id(&push.to_user, "ToUserName")?;
    check_id(&push.from_user, "FromUserName")?;
    let (kind, type_, original_event) = if push.msg_type.trim().eq_ignore_ascii_case("event") {
        let event = push
            .take_text("Event")
            .filter(|e| !e.trim().is_empty())
            .ok_or(ParseError::Missing("Event"))?;
        (Kind::Event, event.trim().to_ascii_lowercase(), Some(event))
    } else {
        (Kind::Message, push.msg_type.trim().to_ascii_lowercase(), None)
    };
    // WeChat spells it `MsgId` in messages and `MsgID` in some events.
    let msg_id = push.text("MsgId").or_else(|| push.text("MsgID")).map(str::to_owned);
    let id = identity(
        &push.to_user,
        &push.from_user,
        push.create_time,
        kind,
        &type_,
        msg_id.as_deref(),
        push.text("EventKey"),
    );

    let detail = match Detail::shape(kind, &type_) {
        DetailShape::Qr => {
            let key = non_empty(push.take_text("EventKey"));
            Detail::Qr {
                scene: key.map(|k| match k.strip_prefix("qrscene_") {
                    Some(scene) => scene.to_owned(),
                    None => k,
                }),
                ticket: non_empty(push.take_text("Ticket")),
            }
        }
        DetailShape::Location => Detail::Location {
            latitude: number(&mut push, "Latitude", 90.0)?,
            longitude: number(&mut push, "Longitude", 180.0)?,
            precision: number(&mut push, "Precision", f64::MAX)?,
        },
        DetailShape::Click => Detail::Click {
            key: push.take_text("EventKey").unwrap_or_default(),
        },
        DetailShape::View => Detail::View {
            url: push.take_text("EventKey").unwrap_or_default(),
        },
        DetailShape::None => Detail::None {},
    };

    let topic = Topic::of(kind, &type_);
    let mut extra: Map<String, Value> = push.fields.into_iter().collect();
    if topic.type_name() == "other" {
        // `type` is lower-cased; keep the name exactly as WeChat sent it.
        let original = original_event.unwrap_or(push.msg_type);
        let field = if kind == Kind::Event { "Event" } else { "MsgType" };
        extra.insert(field.into(), Value::String(original));
    }

    Ok(Event {
        id,
        account: push.to_user,
        openid: push.from_user,
        created_at: push.create_time,
        received_at,
        kind,
        type_,
        detail,
        extra,
    })
}
