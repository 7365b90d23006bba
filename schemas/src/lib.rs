//! The JSON contract of every wxpipe topic.
//!
//! ```text
//! ingest: XML push ──normalize──▶ Event ──serde_json──▶ Kafka record value
//! worker: Kafka record value ──Event::from_json──▶ Event ──▶ effect
//! ```
//!
//! [`Event`] is the one record type on every topic; [`Topic`] names the topic an event goes
//! to; [`schema`] returns the JSON Schema of a topic (the files in `schemas/topics/`, which
//! downstream consumers can use without Rust).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod topic;

pub use topic::{Topic, KNOWN_EVENTS, KNOWN_MESSAGES};

/// Whether a push is an event (`MsgType` = `event`) or a user message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Event,
    Message,
}

/// One normalized push: the value of every record wxpipe writes to Kafka.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "WireEvent")]
pub struct Event {
    /// The dedup identity; the same for every retry of one push.
    pub id: String,
    /// `ToUserName`: the Official Account's original id (`gh_…`).
    pub account: String,
    /// `FromUserName`: the user's OpenID.
    pub openid: String,
    /// `CreateTime`, Unix seconds.
    pub created_at: i64,
    /// When the ingress received the push (RFC 3339, UTC, milliseconds).
    pub received_at: String,
    pub kind: Kind,
    /// Lower-case event or message type.
    #[serde(rename = "type")]
    pub type_: String,
    /// The typed fields of the types that carry data.
    #[serde(flatten)]
    pub detail: Detail,
    /// Every element not mapped above, so nothing is lost. Leaf elements are strings;
    /// nested elements are objects, and repeated children arrays.
    pub extra: Map<String, Value>,
}

/// Typed fields, by type. Serialized flat into the event object.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Detail {
    /// `subscribe` and `scan`: the QR code's scene value and ticket, when there is one.
    Qr {
        scene: Option<String>,
        ticket: Option<String>,
    },
    /// The `LOCATION` event.
    Location {
        latitude: f64,
        longitude: f64,
        precision: f64,
    },
    /// The `CLICK` event: the menu key.
    Click { key: String },
    /// The `VIEW` event: the URL opened.
    View { url: String },
    /// Types without typed fields.
    None {},
}

impl Detail {
    /// Which detail a (kind, type) carries; `None` for the rest.
    pub fn shape(kind: Kind, type_: &str) -> DetailShape {
        match (kind, type_) {
            (Kind::Event, "subscribe" | "scan") => DetailShape::Qr,
            (Kind::Event, "location") => DetailShape::Location,
            (Kind::Event, "click") => DetailShape::Click,
            (Kind::Event, "view") => DetailShape::View,
            _ => DetailShape::None,
        }
    }
}

/// The variant of [`Detail`] a type carries, without its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetailShape {
    Qr,
    Location,
    Click,
    View,
    None,
}

impl Event {
    /// The topic this event belongs on.
    pub fn topic(&self) -> Topic {
        Topic::of(self.kind, &self.type_)
    }

    /// Parses a record value.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Every field any topic may carry; [`Event`] is built from it by its type.
#[derive(Deserialize)]
struct WireEvent {
    id: String,
    account: String,
    openid: String,
    created_at: i64,
    received_at: String,
    kind: Kind,
    #[serde(rename = "type")]
    type_: String,
    #[serde(default)]
    scene: Option<String>,
    #[serde(default)]
    ticket: Option<String>,
    latitude: Option<f64>,
    longitude: Option<f64>,
    precision: Option<f64>,
    key: Option<String>,
    url: Option<String>,
    extra: Map<String, Value>,
}

impl TryFrom<WireEvent> for Event {
    type Error = String;

    fn try_from(w: WireEvent) -> Result<Self, Self::Error> {
        let missing = |field: &str| format!("`{field}` is required for type `{}`", w.type_);
        let detail = match Detail::shape(w.kind, &w.type_) {
            DetailShape::Qr => Detail::Qr {
                scene: w.scene,
                ticket: w.ticket,
            },
            DetailShape::Location => Detail::Location {
                latitude: w.latitude.ok_or_else(|| missing("latitude"))?,
                longitude: w.longitude.ok_or_else(|| missing("longitude"))?,
                precision: w.precision.ok_or_else(|| missing("precision"))?,
            },
            DetailShape::Click => Detail::Click {
                key: w.key.ok_or_else(|| missing("key"))?,
            },
            DetailShape::View => Detail::View {
                url: w.url.ok_or_else(|| missing("url"))?,
            },
            DetailShape::None => Detail::None {},
        };
        Ok(Event {
            id: w.id,
            account: w.account,
            openid: w.openid,
            created_at: w.created_at,
            received_at: w.received_at,
            kind: w.kind,
            type_: w.type_,
            detail,
            extra: w.extra,
        })
    }
}

/// The JSON Schema (draft 2020-12) of a topic's record values.
pub fn schema(topic: Topic) -> &'static str {
    topic::schema(topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(type_: &str, detail: Detail) -> Event {
        Event {
            id: "gh_1:o1:1:subscribe".into(),
            account: "gh_1".into(),
            openid: "o1".into(),
            created_at: 1,
            received_at: "2026-11-26T00:00:00.000Z".into(),
            kind: Kind::Event,
            type_: type_.into(),
            detail,
            extra: Map::new(),
        }
    }

    #[test]
    fn round_trips_every_detail() {
        let cases = [
            sample(
                "subscribe",
                Detail::Qr {
                    scene: Some("123".into()),
                    ticket: None,
                },
            ),
            sample(
                "location",
                Detail::Location {
                    latitude: 23.1,
                    longitude: 113.3,
                    precision: 119.4,
                },
            ),
            sample("click", Detail::Click { key: "K".into() }),
            sample("view", Detail::View { url: "u".into() }),
            sample("unsubscribe", Detail::None {}),
        ];
        for event in cases {
            let json = serde_json::to_vec(&event).unwrap();
            assert_eq!(Event::from_json(&json).unwrap(), event);
        }
    }

    #[test]
    fn qr_fields_serialize_as_null_when_absent() {
        let event = sample(
            "subscribe",
            Detail::Qr {
                scene: None,
                ticket: None,
            },
        );
        let value = serde_json::to_value(&event).unwrap();
        assert_eq!(value["scene"], Value::Null);
        assert_eq!(value["ticket"], Value::Null);
        assert!(value.get("key").is_none());
    }

    #[test]
    fn location_without_coordinates_is_rejected() {
        let json = br#"{"id":"i","account":"a","openid":"o","created_at":1,
            "received_at":"t","kind":"event","type":"location","extra":{}}"#;
        assert!(Event::from_json(json).is_err());
    }
}
