//! The two identities every record carries, typed so that each is built in one place and
//! read back in one place.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::kind::Kind;

/// A user's OpenID (`FromUserName`): the record key, and a personal identifier that logs show
/// only hashed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpenId(String);

/// The dedup identity of an event:
/// `{account}:{openid}:{created_at}:{kind}.{type}[:m{MsgId}]:h{fields digest}`, the same for
/// every retry of one push. Built by [`EventId::new`]; its user read back by
/// [`EventId::user_of`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(String);

impl EventId {
    /// FromUserName + CreateTime, as WeChat recommends, qualified by the account and the type,
    /// by `MsgId` where the push has one (kept readable), and by a digest of every other field
    /// of the push: a retry repeats every field, so it keeps its identity; two events that
    /// differ in any field are two. The account and OpenID must be free of `:` (the parser
    /// refuses others), so the id reads back unambiguously.
    pub fn new(
        account: &str,
        openid: &str,
        created_at: i64,
        kind: Kind,
        type_: &str,
        msg_id: Option<&str>,
        fields_digest: &str,
    ) -> EventId {
        let mut id = format!("{account}:{openid}:{created_at}:{}.{type_}", kind.as_str());
        if let Some(msg_id) = msg_id.map(str::trim).filter(|m| !m.is_empty()) {
            id.push_str(":m");
            id.push_str(msg_id);
        }
        id.push_str(":h");
        id.push_str(fields_digest);
        EventId(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `{account}:{openid}` an id of this shape starts with (the Redis hash tag of the
    /// user's keys); an id of another shape (written by another producer) is its own user.
    pub fn user_of(id: &str) -> &str {
        let mut colons = id.match_indices(':').map(|(at, _)| at);
        match (colons.next(), colons.next()) {
            (Some(_), Some(end)) => &id[..end],
            _ => id,
        }
    }

    /// The account and the OpenID an id of this shape names.
    pub fn split_user(id: &str) -> Option<(&str, &str, &str)> {
        let mut parts = id.splitn(3, ':');
        Some((parts.next()?, parts.next()?, parts.next()?))
    }
}

impl OpenId {
    pub fn new(openid: impl Into<String>) -> OpenId {
        OpenId(openid.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_like {
    ($name:ident) => {
        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                $name(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                $name(value.to_owned())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

string_like!(OpenId);
string_like!(EventId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_reads_back_its_user() {
        let id = EventId::new("gh_a", "o1", 7, Kind::Event, "click", None, "abc");
        assert_eq!(id, "gh_a:o1:7:event.click:habc");
        assert_eq!(EventId::user_of(&id), "gh_a:o1");
        assert_eq!(
            EventId::split_user(&id),
            Some(("gh_a", "o1", "7:event.click:habc"))
        );
        assert_eq!(EventId::user_of("opaque"), "opaque");
        assert_eq!(EventId::split_user("opaque"), None);
    }
}
