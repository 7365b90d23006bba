//! The JSON contract of every wxpipe topic.
//!
//! ```text
//! spec::TYPES ──▶ wechat: XML push ──normalize──▶ Event ──serde_json──▶ Kafka record value
//!      │          worker: Kafka record value ──Event::from_json──▶ Event ──▶ effect
//!      └────────▶ json_schema: the JSON Schema of every topic (topics/*.json, for consumers)
//! ```
//!
//! [`Event`] is the one record type on every topic, with its [`EventId`] and [`OpenId`]; [`Topic`] names the topic an event goes
//! to; [`spec`] lists the typed fields of every known type; [`json_schema`](mod@json_schema) derives each
//! topic's JSON Schema from it.
//!
//! It is the contract only: it must never depend on the protocol (`wechat`), the ingress, the
//! workers or any store.

mod event;
mod id;
pub mod json_schema;
mod kind;
pub mod spec;
mod topic;

pub use event::Event;
pub use id::{EventId, OpenId};
pub use json_schema::json_schema;
pub use kind::Kind;
pub use topic::{all_topic_names, dead_letter_topic, Topic, DEAD_LETTER_ROLES};
