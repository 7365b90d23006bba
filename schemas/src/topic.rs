//! Topic names: one topic per known event or message type, by the contract.

use crate::kind::Kind;
use crate::spec::{TypeSpec, TYPES};

/// A topic: `{prefix}.event.subscribe`, `{prefix}.message.other`…
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Topic {
    kind: Kind,
    /// Index into [`TYPES`]; `None` for `other`.
    known: Option<usize>,
}

impl Topic {
    /// The topic of a (kind, lower-case type).
    pub fn of(kind: Kind, type_: &str) -> Topic {
        Topic {
            kind,
            known: TYPES.iter().position(|t| t.kind == kind && t.name == type_),
        }
    }

    /// Every topic wxpipe may write: the known types', then `event.other`, `message.other`
    /// and `component.other`.
    pub fn all() -> impl Iterator<Item = Topic> {
        (0..TYPES.len())
            .map(|i| Topic {
                kind: TYPES[i].kind,
                known: Some(i),
            })
            .chain(
                [Kind::Event, Kind::Message, Kind::Component]
                    .map(|kind| Topic { kind, known: None }),
            )
    }

    pub fn kind(self) -> Kind {
        self.kind
    }

    /// The known type's spec; `None` for `other`.
    pub fn spec(self) -> Option<&'static TypeSpec> {
        self.known.map(|i| &TYPES[i])
    }

    /// The type part of the name: a known type, or `other`.
    pub fn type_name(self) -> &'static str {
        self.spec().map_or("other", |t| t.name)
    }

    /// The name without prefix: `event.subscribe`.
    pub fn suffix(self) -> String {
        format!("{}.{}", self.kind.as_str(), self.type_name())
    }

    /// The full topic name under a prefix: `wechat.event.subscribe`.
    pub fn name(self, prefix: &str) -> String {
        format!("{prefix}.{}", self.suffix())
    }
}

/// The worker roles, each with a dead-letter topic of its own (by the contract).
pub const DEAD_LETTER_ROLES: [&str; 4] = ["unbind", "welcome", "location", "component"];

/// The dead-letter topic of a worker role under a prefix: `wechat.dlq.welcome`.
pub fn dead_letter_topic(prefix: &str, role: &str) -> String {
    format!("{prefix}.dlq.{role}")
}

/// Every topic of the contract under a prefix: the event topics and the dead-letter topics.
pub fn all_topic_names(prefix: &str) -> Vec<String> {
    Topic::all()
        .map(|t| t.name(prefix))
        .chain(
            DEAD_LETTER_ROLES
                .iter()
                .map(|r| dead_letter_topic(prefix, r)),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_topics_follow_the_contract() {
        assert_eq!(dead_letter_topic("wechat", "welcome"), "wechat.dlq.welcome");
        let all = all_topic_names("p");
        assert!(all.contains(&"p.event.subscribe".to_owned()));
        assert!(all.contains(&"p.dlq.unbind".to_owned()));
        assert_eq!(all.len(), Topic::all().count() + DEAD_LETTER_ROLES.len());
    }

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
        // A message type is not an event type, and the other way round.
        assert_eq!(Topic::of(Kind::Event, "text").suffix(), "event.other");
        assert_eq!(
            Topic::of(Kind::Message, "location").suffix(),
            "message.location"
        );
    }
}
