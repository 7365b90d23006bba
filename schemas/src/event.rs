//! The one record type of every topic.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::id::{EventId, OpenId};
use crate::kind::Kind;
use crate::topic::Topic;

/// One normalized push: the value of every record wxpipe writes to Kafka.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The dedup identity; the same for every retry of one push.
    pub id: EventId,
    /// `ToUserName`: the Official Account's original id (`gh_…`); the component AppID in an
    /// authorization event.
    pub account: String,
    /// `FromUserName`: the user's OpenID; the authorizer AppID in an authorization event (the
    /// component AppID in a ticket).
    pub openid: OpenId,
    /// Open Platform mode only: the authorizer AppID of the route a push came in on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appid: Option<String>,
    /// `CreateTime`, Unix seconds.
    pub created_at: i64,
    /// When the ingress received the push (RFC 3339, UTC, milliseconds).
    pub received_at: String,
    pub kind: Kind,
    /// Lower-case event or message type.
    #[serde(rename = "type")]
    pub type_: String,
    /// The typed fields of the type ([`crate::spec::TYPES`]), by JSON name; written flat into the
    /// record.
    #[serde(flatten)]
    pub fields: Map<String, Value>,
    /// Every element not mapped to a field, so nothing is lost. A leaf element is a string; a
    /// nested element an object of its children, with repeated children as an array.
    pub extra: Map<String, Value>,
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

    /// A typed string field (`scene`, `key`, `content`…); `None` when absent or null.
    pub fn text(&self, field: &str) -> Option<&str> {
        self.fields.get(field).and_then(Value::as_str)
    }

    /// A typed number field (`latitude`…); `None` when absent or null.
    pub fn number(&self, field: &str) -> Option<f64> {
        self.fields.get(field).and_then(Value::as_f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_with_flat_typed_fields() {
        let value = json!({
            "id": "gh_1:o1:1:event.location", "account": "gh_1", "openid": "o1", "created_at": 1,
            "received_at": "2026-11-26T00:00:00.000Z", "kind": "event", "type": "location",
            "latitude": 23.1, "longitude": 113.3, "precision": 119.4, "extra": {"X": "y"}
        });
        let event: Event = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(event.number("latitude"), Some(23.1));
        assert_eq!(event.extra["X"], "y");
        assert_eq!(event.topic().suffix(), "event.location");
        assert_eq!(serde_json::to_value(&event).unwrap(), value);
    }

    #[test]
    fn text_accessor_treats_null_as_absent() {
        let event: Event = serde_json::from_value(json!({
            "id": "i", "account": "a", "openid": "o", "created_at": 1, "received_at": "t",
            "kind": "event", "type": "subscribe", "scene": null, "ticket": "T", "extra": {}
        }))
        .unwrap();
        assert_eq!(event.text("scene"), None);
        assert_eq!(event.text("ticket"), Some("T"));
    }
}
