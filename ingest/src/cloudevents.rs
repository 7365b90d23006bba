//! CloudEvents attributes of a record, as Kafka headers (the Kafka protocol binding of
//! CloudEvents 1.0, binary content mode): the value stays the JSON event, and consumers can
//! route and filter on the headers alone.
//!
//! | header | value |
//! |---|---|
//! | `ce_specversion` | `1.0` |
//! | `ce_id` | the event's `id` (the dedup identity) |
//! | `ce_source` | `/wechat/{account}` (`ToUserName`); `/wechat/component/{appid}` for an authorization event |
//! | `ce_type` | `wechat.{kind}.{type}`, whatever the topic prefix |
//! | `ce_time` | `CreateTime`, RFC 3339, UTC |
//! | `content-type` | `application/json` |
//!
//! The attributes of a push are formatted once, into one buffer, when its record is made; a
//! spooled record keeps only its value, and its attributes are read back from it on replay.

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use rdkafka::message::{Header, OwnedHeaders};
use schemas::Event;

/// The CloudEvents attributes of one record, but its id (the record has it already).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvent {
    /// `ce_source`, `ce_type` and `ce_time`, one after the other.
    buf: String,
    source_end: usize,
    type_end: usize,
}

impl CloudEvent {
    pub fn new(account: &str, kind: &str, type_: &str, created_at: i64) -> CloudEvent {
        // An authorization event's source is the component (its `account` is the AppID).
        let component = kind == schemas::Kind::Component.as_str();
        let scope = if component { "component/" } else { "" };
        // "/wechat/" + scope + account + "wechat." + kind + "." + type + "YYYY-MM-DDTHH:MM:SSZ"
        let mut buf = String::with_capacity(
            8 + scope.len() + account.len() + 8 + kind.len() + type_.len() + 20,
        );
        buf.push_str("/wechat/");
        buf.push_str(scope);
        buf.push_str(account);
        let source_end = buf.len();
        buf.push_str("wechat.");
        buf.push_str(kind);
        buf.push('.');
        buf.push_str(type_);
        let type_end = buf.len();
        // The ingress refuses a negative CreateTime; another producer's is the epoch.
        let time = UNIX_EPOCH + Duration::from_secs(u64::try_from(created_at).unwrap_or(0));
        let _ = write!(buf, "{}", humantime::format_rfc3339_seconds(time));
        CloudEvent {
            buf,
            source_end,
            type_end,
        }
    }

    /// The attributes of a normalized event.
    pub fn of(event: &Event) -> CloudEvent {
        CloudEvent::new(
            &event.account,
            event.kind.as_str(),
            &event.type_,
            event.created_at,
        )
    }

    /// The attributes of a record value (a spooled record, replayed; its id is the spool
    /// record's); `None` when the value is not a wxpipe event.
    pub fn of_value(value: &[u8]) -> Option<CloudEvent> {
        #[derive(serde::Deserialize)]
        struct Attributes<'a> {
            /// Required, as in every wxpipe event, but not read again.
            #[allow(dead_code)]
            id: serde::de::IgnoredAny,
            #[serde(borrow)]
            account: std::borrow::Cow<'a, str>,
            #[serde(borrow)]
            kind: std::borrow::Cow<'a, str>,
            #[serde(rename = "type", borrow)]
            type_: std::borrow::Cow<'a, str>,
            created_at: i64,
        }
        let a: Attributes<'_> = serde_json::from_slice(value).ok()?;
        Some(CloudEvent::new(&a.account, &a.kind, &a.type_, a.created_at))
    }

    pub fn source(&self) -> &str {
        &self.buf[..self.source_end]
    }

    pub fn type_(&self) -> &str {
        &self.buf[self.source_end..self.type_end]
    }

    pub fn time(&self) -> &str {
        &self.buf[self.type_end..]
    }

    /// The record's headers, for the record of event `id`.
    pub fn headers(&self, id: &str) -> OwnedHeaders {
        fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a [u8]> {
            Header {
                key,
                value: Some(value.as_bytes()),
            }
        }
        OwnedHeaders::new_with_capacity(6)
            .insert(header("ce_specversion", "1.0"))
            .insert(header("ce_id", id))
            .insert(header("ce_source", self.source()))
            .insert(header("ce_type", self.type_()))
            .insert(header("ce_time", self.time()))
            .insert(header("content-type", "application/json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_formatted_once() {
        let ce = CloudEvent::new("gh_demo", "event", "subscribe", 1_795_731_462);
        assert_eq!(ce.source(), "/wechat/gh_demo");
        assert_eq!(ce.type_(), "wechat.event.subscribe");
        assert_eq!(ce.time(), "2026-11-26T22:17:42Z");
        assert_eq!(
            ce.buf.capacity(),
            ce.buf.len(),
            "one allocation, of the right size"
        );
    }

    #[test]
    fn a_record_value_gives_the_same_attributes() {
        let value =
            br#"{"id":"gh_a:o:1:event.location","account":"gh_a","openid":"o","created_at":1,
            "received_at":"t","kind":"event","type":"location","latitude":1.0,"extra":{}}"#;
        let ce = CloudEvent::of_value(value).unwrap();
        assert_eq!(ce, CloudEvent::new("gh_a", "event", "location", 1));
        // A value without an id is no wxpipe event.
        let no_id = br#"{"account":"gh_a","kind":"event","type":"location","created_at":1}"#;
        assert!(CloudEvent::of_value(no_id).is_none());
        assert_eq!(ce.time(), "1970-01-01T00:00:01Z");
        assert!(CloudEvent::of_value(b"{not json").is_none());
        // A spooled authorization event keeps its component source.
        let ticket = br#"{"id":"x","account":"wxc","openid":"wxc","created_at":1,"received_at":"t",
            "kind":"component","type":"component_verify_ticket","ticket":"t","extra":{}}"#;
        let ce = CloudEvent::of_value(ticket).unwrap();
        assert_eq!(ce.source(), "/wechat/component/wxc");
        assert_eq!(ce.type_(), "wechat.component.component_verify_ticket");
        assert_eq!(ce.buf.capacity(), ce.buf.len(), "one allocation here too");
    }
}
