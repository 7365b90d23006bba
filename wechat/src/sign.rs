//! The signing side of the protocol: what WeChat does to send a push, for everything that
//! plays WeChat (the load generator, the benches, the tests).

use crate::decrypt::AesKey;
use crate::verify::signature;

/// Signs pushes for one account as WeChat does: with its Token, and in safe mode encrypted
/// with its EncodingAESKey for its AppID.
#[derive(Debug, Clone)]
pub struct Signer {
    token: String,
    aes: Option<(AesKey, String)>,
}

/// A push as WeChat sends it: the query to append to the account's URL, and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPush {
    pub query: String,
    pub body: String,
}

impl Signer {
    /// Plaintext mode: pushes signed with the Token only.
    pub fn plaintext(token: &str) -> Signer {
        Signer {
            token: token.to_owned(),
            aes: None,
        }
    }

    /// Safe mode: pushes encrypted with `key` for `appid`, and signed (`msg_signature`) too.
    pub fn encrypted(token: &str, key: AesKey, appid: &str) -> Signer {
        Signer {
            token: token.to_owned(),
            aes: Some((key, appid.to_owned())),
        }
    }

    /// `signature` of a request: hex SHA-1 over (token, timestamp, nonce) sorted as strings.
    pub fn signature(&self, timestamp: &str, nonce: &str) -> String {
        hex::encode(signature(&mut [&self.token, timestamp, nonce]))
    }

    /// `msg_signature` of an encrypted body: the same over its `Encrypt` as well.
    pub fn msg_signature(&self, timestamp: &str, nonce: &str, encrypt: &str) -> String {
        hex::encode(signature(&mut [&self.token, timestamp, nonce, encrypt]))
    }

    /// The signed query of a request: `signature=…&timestamp=…&nonce=…`.
    pub fn query(&self, timestamp: &str, nonce: &str) -> String {
        format!(
            "signature={}&timestamp={timestamp}&nonce={nonce}",
            self.signature(timestamp, nonce)
        )
    }

    /// A push of `xml`, addressed to `to_user` (the account's `gh_…` id), signed at
    /// `timestamp` with `nonce`; encrypted in safe mode with the 16 `random` bytes WeChat puts
    /// before the message.
    pub fn push(
        &self,
        xml: &str,
        to_user: &str,
        timestamp: &str,
        nonce: &str,
        random: [u8; 16],
    ) -> SignedPush {
        let query = self.query(timestamp, nonce);
        match &self.aes {
            None => SignedPush {
                query,
                body: xml.to_owned(),
            },
            Some((key, appid)) => {
                let encrypt = key.encrypt(xml.as_bytes(), appid, random);
                SignedPush {
                    query: format!(
                        "{query}&encrypt_type=aes&msg_signature={}",
                        self.msg_signature(timestamp, nonce, &encrypt)
                    ),
                    body: format!(
                        "<xml><ToUserName><![CDATA[{to_user}]]></ToUserName>\
                         <Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::check;

    #[test]
    fn what_the_signer_signs_verifies() {
        let plain = Signer::plaintext("tok");
        let push = plain.push("<xml/>", "gh_a", "1700000000", "n1", [0; 16]);
        let query = crate::Query::parse(Some(&push.query));
        check(
            query.signature.as_deref().unwrap(),
            &mut ["tok", "1700000000", "n1"],
        )
        .unwrap();
        assert_eq!(push.body, "<xml/>");

        let key = AesKey::parse("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
        let safe = Signer::encrypted("tok", key.clone(), "wxapp");
        let push = safe.push("<xml><A>1</A></xml>", "gh_a", "1700000000", "n2", [7; 16]);
        let query = crate::Query::parse(Some(&push.query));
        assert_eq!(query.encrypt_type.as_deref(), Some("aes"));
        let envelope = crate::parse::parse_document(push.body.as_bytes()).unwrap();
        let encrypt = envelope
            .iter()
            .find(|(name, _)| name == "Encrypt")
            .and_then(|(_, value)| value.as_str())
            .unwrap();
        check(
            query.msg_signature.as_deref().unwrap(),
            &mut ["tok", "1700000000", "n2", encrypt],
        )
        .unwrap();
        assert_eq!(
            key.decrypt(encrypt, "wxapp").unwrap(),
            b"<xml><A>1</A></xml>"
        );
        assert!(check(
            query.signature.as_deref().unwrap(),
            &mut ["other", "1700000000", "n2"]
        )
        .is_err());
    }
}
