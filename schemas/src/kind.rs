//! A push's kind: an event, a user message, or an Open Platform authorization event.

use serde::{Deserialize, Serialize};

/// Whether a push is an event (`MsgType` = `event`), a user message, or an Open Platform
/// authorization event (`InfoType`, sent to a third-party platform's component).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Event,
    Message,
    Component,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Event => "event",
            Kind::Message => "message",
            Kind::Component => "component",
        }
    }

    /// The XML element that names a push's type in this kind.
    pub fn type_element(self) -> &'static str {
        match self {
            Kind::Event => "Event",
            Kind::Message => "MsgType",
            Kind::Component => "InfoType",
        }
    }
}
