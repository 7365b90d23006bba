//! Passive replies in safe mode: the answer to a push that WeChat shows the user, encrypted
//! and signed like a push. wxpipe answers every push empty, except WeChat's Open Platform
//! release check (全网发布), whose test accounts expect fixed replies ([`release_check`]).
//!
//! ```text
//! <xml><Encrypt>…</Encrypt><MsgSignature>sha1(sort(token, timestamp, nonce, Encrypt))</MsgSignature>
//!      <TimeStamp>…</TimeStamp><Nonce>…</Nonce></xml>
//! Encrypt = the text reply <xml><ToUserName>…</ToUserName>…<Content>…</Content></xml>, encrypted
//!           with the key and AppID of whoever received the push (decrypt's envelope)
//! ```

use std::fmt::Write;

use crate::decrypt::AesKey;
use crate::verify::signature;

/// WeChat's release-check test accounts: (AppID, `gh_` id). One of them, picked at random,
/// sends the fixed pushes a platform must answer before it goes live.
pub const RELEASE_CHECK_ACCOUNTS: [(&str, &str); 5] = [
    ("wx570bc396a51b8ff8", "gh_3c884a361561"),
    ("wx9252c5e0bb1836fc", "gh_c0f28a78b318"),
    ("wx8e1097c5bc82cde9", "gh_3f222ed8d140"),
    ("wx14550af28c71a144", "gh_26128078e9ab"),
    ("wxa35b9c23cfe664eb", "gh_2b3713f184a6"),
];

/// The text a release-check test push must be answered with, when it is one: `appid` is the
/// authorizer AppID of the route, `to_user` the push's `ToUserName`, `msg_type`, `event` and
/// `content` its `MsgType`, `Event` and `Content`. `None`: the empty answer (any other push,
/// the `QUERY_AUTH_CODE:` text included, whose answer comes later as a customer-service
/// message).
pub fn release_check(
    appid: &str,
    to_user: &str,
    msg_type: &str,
    event: Option<&str>,
    content: Option<&str>,
) -> Option<String> {
    if !RELEASE_CHECK_ACCOUNTS.contains(&(appid, to_user)) {
        return None;
    }
    match msg_type.trim() {
        // The Event value exactly as WeChat sent it.
        t if t.eq_ignore_ascii_case("event") => event.map(|e| format!("{e}from_callback")),
        "text" if content == Some("TESTCOMPONENT_MSG_TYPE_TEXT") => {
            Some("TESTCOMPONENT_MSG_TYPE_TEXT_callback".to_owned())
        }
        _ => None,
    }
}

/// A text reply to one push: from the account that received it to the user who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextReply<'a> {
    /// The push's `FromUserName` (the user).
    pub to_user: &'a str,
    /// The push's `ToUserName` (the account).
    pub from_user: &'a str,
    pub create_time: i64,
    pub content: &'a str,
}

/// Appends `text` as CDATA; a `]]>` inside is split across two sections.
fn cdata(out: &mut String, text: &str) {
    out.push_str("<![CDATA[");
    out.push_str(&text.replace("]]>", "]]]]><![CDATA[>"));
    out.push_str("]]>");
}

impl TextReply<'_> {
    /// The plaintext reply XML.
    pub fn xml(&self) -> String {
        let mut xml = String::with_capacity(160 + self.content.len());
        xml.push_str("<xml><ToUserName>");
        cdata(&mut xml, self.to_user);
        xml.push_str("</ToUserName><FromUserName>");
        cdata(&mut xml, self.from_user);
        let _ = write!(
            xml,
            "</FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content>",
            self.create_time
        );
        cdata(&mut xml, self.content);
        xml.push_str("</Content></xml>");
        xml
    }

    /// The reply in safe mode: encrypted with `key` for `appid` (with WeChat's 16 `random`
    /// bytes before it) and signed with `token` at `timestamp` with `nonce`.
    pub fn encrypted(
        &self,
        key: &AesKey,
        appid: &str,
        token: &str,
        timestamp: &str,
        nonce: &str,
        random: [u8; 16],
    ) -> String {
        let encrypt = key.encrypt(self.xml().as_bytes(), appid, random);
        let msg_signature = hex::encode(signature(&mut [token, timestamp, nonce, &encrypt]));
        let mut out = String::with_capacity(encrypt.len() + 200);
        out.push_str("<xml><Encrypt>");
        cdata(&mut out, &encrypt);
        out.push_str("</Encrypt><MsgSignature>");
        cdata(&mut out, &msg_signature);
        let _ = write!(
            out,
            "</MsgSignature><TimeStamp>{timestamp}</TimeStamp><Nonce>"
        );
        cdata(&mut out, nonce);
        out.push_str("</Nonce></xml>");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{parse_document, Push};
    use crate::verify::check;

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    fn field(xml: &str, name: &str) -> String {
        parse_document(xml.as_bytes())
            .unwrap()
            .into_iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("no {name} in {xml}"))
    }

    #[test]
    fn an_encrypted_reply_decrypts_and_verifies() {
        let key = AesKey::parse(KEY).unwrap();
        let reply = TextReply {
            to_user: "oUser",
            from_user: "gh_3c884a361561",
            create_time: 1_700_000_123,
            content: "LOCATIONfrom_callback",
        };
        let sealed = reply.encrypted(&key, "wxcomponent", "tok", "1700000124", "n1", [3; 16]);
        let encrypt = field(&sealed, "Encrypt");
        assert_eq!(field(&sealed, "TimeStamp"), "1700000124");
        assert_eq!(field(&sealed, "Nonce"), "n1");
        check(
            &field(&sealed, "MsgSignature"),
            &mut ["tok", "1700000124", "n1", &encrypt],
        )
        .unwrap();
        let inner = key.decrypt(&encrypt, "wxcomponent").unwrap();
        assert!(
            key.decrypt(&encrypt, "wxother").is_err(),
            "for the AppID given"
        );
        // WeChat reads it as it reads a push: the account is the sender, the user the receiver.
        let xml = String::from_utf8(inner).unwrap();
        let push = Push::try_from(xml.as_bytes()).unwrap();
        assert_eq!(
            (
                push.to_user.as_str(),
                push.from_user.as_str(),
                push.create_time
            ),
            ("oUser", "gh_3c884a361561", 1_700_000_123)
        );
        assert_eq!(push.msg_type, "text");
        assert_eq!(push.text("Content"), Some("LOCATIONfrom_callback"));
    }

    #[test]
    fn cdata_carries_any_text() {
        let reply = TextReply {
            to_user: "o",
            from_user: "gh",
            create_time: 1,
            content: "a]]>b<c>&",
        };
        let push = Push::try_from(reply.xml().as_bytes()).unwrap();
        assert_eq!(push.text("Content"), Some("a]]>b<c>&"));
    }

    #[test]
    fn only_the_test_accounts_get_the_fixed_replies() {
        let (appid, gh) = RELEASE_CHECK_ACCOUNTS[2];
        assert_eq!(
            release_check(appid, gh, "event", Some("LOCATION"), None).as_deref(),
            Some("LOCATIONfrom_callback")
        );
        assert_eq!(
            release_check(appid, gh, "text", None, Some("TESTCOMPONENT_MSG_TYPE_TEXT")).as_deref(),
            Some("TESTCOMPONENT_MSG_TYPE_TEXT_callback")
        );
        assert_eq!(
            release_check(appid, gh, "text", None, Some("QUERY_AUTH_CODE:abc")),
            None
        );
        assert_eq!(release_check(appid, gh, "text", None, Some("hi")), None);
        // Another account, or a test AppID with another test account's gh_ id: empty.
        assert_eq!(
            release_check("wxother", gh, "event", Some("LOCATION"), None),
            None
        );
        let (_, other_gh) = RELEASE_CHECK_ACCOUNTS[0];
        assert_eq!(
            release_check(appid, other_gh, "event", Some("LOCATION"), None),
            None
        );
    }
}
