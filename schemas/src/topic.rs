//! Topic names: one topic per event or message type, by the contract.

use crate::Kind;

/// Events with a topic of their own (lower-case `Event` values).
pub const KNOWN_EVENTS: &[&str] = &[
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
];

/// Message types with a topic of their own (lower-case `MsgType` values).
pub const KNOWN_MESSAGES: &[&str] = &[
    "text",
    "image",
    "voice",
    "video",
    "shortvideo",
    "location",
    "link",
];

/// A topic, as the suffix after `{KAFKA_TOPIC_PREFIX}.`: `event.subscribe`, `message.other`…
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Topic {
    kind: Kind,
    /// Index into the kind's known list; `None` for `other`.
    known: Option<usize>,
}

impl Topic {
    /// The topic of a (kind, lower-case type).
    pub fn of(kind: Kind, type_: &str) -> Topic {
        let list = Self::list(kind);
        Topic {
            kind,
            known: list.iter().position(|known| *known == type_),
        }
    }

    /// Every topic wxpipe may write, `other` topics included.
    pub fn all() -> impl Iterator<Item = Topic> {
        [Kind::Event, Kind::Message].into_iter().flat_map(|kind| {
            (0..Self::list(kind).len())
                .map(Some)
                .chain([None])
                .map(move |known| Topic { kind, known })
        })
    }

    fn list(kind: Kind) -> &'static [&'static str] {
        match kind {
            Kind::Event => KNOWN_EVENTS,
            Kind::Message => KNOWN_MESSAGES,
        }
    }

    /// `event` or `message`.
    pub fn kind(self) -> Kind {
        self.kind
    }

    /// The type part of the name: a known type, or `other`.
    pub fn type_name(self) -> &'static str {
        self.known.map_or("other", |i| Self::list(self.kind)[i])
    }

    /// The name without prefix: `event.subscribe`.
    pub fn suffix(self) -> String {
        let kind = match self.kind {
            Kind::Event => "event",
            Kind::Message => "message",
        };
        format!("{kind}.{}", self.type_name())
    }

    /// The full topic name under a prefix: `wechat.event.subscribe`.
    pub fn name(self, prefix: &str) -> String {
        format!("{prefix}.{}", self.suffix())
    }
}

macro_rules! schemas {
    ($($suffix:literal),* $(,)?) => {
        pub(crate) fn schema(topic: Topic) -> &'static str {
            match topic.suffix().as_str() {
                $($suffix => include_str!(concat!("../topics/", $suffix, ".json")),)*
                other => unreachable!("no schema file for topic {other}"),
            }
        }
    };
}

schemas!(
    "event.subscribe",
    "event.unsubscribe",
    "event.scan",
    "event.location",
    "event.click",
    "event.view",
    "event.view_miniprogram",
    "event.scancode_push",
    "event.scancode_waitmsg",
    "event.pic_sysphoto",
    "event.pic_photo_or_album",
    "event.pic_weixin",
    "event.location_select",
    "event.templatesendjobfinish",
    "event.masssendjobfinish",
    "event.subscribe_msg_popup_event",
    "event.subscribe_msg_change_event",
    "event.subscribe_msg_sent_event",
    "event.user_info_modified",
    "event.kf_create_session",
    "event.kf_close_session",
    "event.kf_switch_session",
    "event.other",
    "message.text",
    "message.image",
    "message.voice",
    "message.video",
    "message.shortvideo",
    "message.location",
    "message.link",
    "message.other",
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        assert_eq!(
            Topic::of(Kind::Event, "subscribe").name("wechat"),
            "wechat.event.subscribe"
        );
        assert_eq!(
            Topic::of(Kind::Event, "no_such_event").suffix(),
            "event.other"
        );
        assert_eq!(Topic::of(Kind::Message, "text").suffix(), "message.text");
        assert_eq!(
            Topic::of(Kind::Message, "hologram").suffix(),
            "message.other"
        );
    }

    #[test]
    fn every_topic_has_a_valid_schema() {
        let mut count = 0;
        for topic in Topic::all() {
            let schema: serde_json::Value = serde_json::from_str(schema(topic)).unwrap();
            assert!(
                jsonschema::validator_for(&schema).is_ok(),
                "{}",
                topic.suffix()
            );
            count += 1;
        }
        assert_eq!(count, KNOWN_EVENTS.len() + KNOWN_MESSAGES.len() + 2);
    }
}
