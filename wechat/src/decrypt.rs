//! Compatible and safe mode (`encrypt_type=aes`): WeChat's AES-256-CBC envelope.
//!
//! ```text
//! Encrypt = base64( AES-256-CBC( random[16] ‖ len:u32 BE ‖ xml[len] ‖ appid ‖ pkcs7 to 32 ) )
//! key = base64(EncodingAESKey + "="), 32 bytes; IV = key[..16]
//! ```
//!
//! Every malformed input is a [`CryptoError`] (a 403), never a panic.

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::Engine;

/// EncodingAESKeys are 43 characters whose last one often carries stray low bits, which a
/// strict decoder rejects; WeChat's own SDKs ignore them.
const KEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

type Decryptor = cbc::Decryptor<aes::Aes256>;
type Encryptor = cbc::Encryptor<aes::Aes256>;

/// WeChat pads to 32-byte blocks, not AES's 16: pad bytes run 1..=32.
const PAD_BLOCK: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("EncodingAESKey must be 43 base64 characters")]
    BadKey,
    #[error("Encrypt is not base64")]
    Base64,
    #[error("ciphertext is not a whole number of blocks")]
    Blocks,
    #[error("bad padding")]
    Padding,
    #[error("length field does not match the plaintext")]
    Length,
    #[error("the AppID inside the message is not this account's")]
    AppId,
}

/// The 32-byte key derived from a 43-character EncodingAESKey.
#[derive(Clone)]
pub struct AesKey([u8; 32]);

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey(***)")
    }
}

impl AesKey {
    pub fn parse(encoding_aes_key: &str) -> Result<Self, CryptoError> {
        if encoding_aes_key.len() != 43 {
            return Err(CryptoError::BadKey);
        }
        let bytes = KEY_BASE64
            .decode(format!("{encoding_aes_key}="))
            .map_err(|_| CryptoError::BadKey)?;
        bytes
            .try_into()
            .map(AesKey)
            .map_err(|_| CryptoError::BadKey)
    }

    fn iv(&self) -> [u8; 16] {
        self.0[..16].try_into().expect("32-byte key")
    }

    /// Decrypts an `Encrypt` value and checks the AppID inside it; returns the XML.
    pub fn decrypt(&self, encrypt: &str, appid: &str) -> Result<Vec<u8>, CryptoError> {
        let mut buf = STANDARD
            .decode(encrypt.trim())
            .map_err(|_| CryptoError::Base64)?;
        if buf.is_empty() || buf.len() % PAD_BLOCK != 0 {
            // AES needs 16-byte blocks; WeChat's padding makes every message a multiple of 32.
            return Err(CryptoError::Blocks);
        }
        let plain = Decryptor::new(&self.0.into(), &self.iv().into())
            .decrypt_padded::<NoPadding>(&mut buf)
            .map_err(|_| CryptoError::Blocks)?;
        let pad = usize::from(*plain.last().ok_or(CryptoError::Padding)?);
        if !(1..=PAD_BLOCK).contains(&pad)
            || pad > plain.len()
            || plain[plain.len() - pad..]
                .iter()
                .any(|b| usize::from(*b) != pad)
        {
            return Err(CryptoError::Padding);
        }
        let plain = &plain[..plain.len() - pad];
        let body = plain.get(16..).ok_or(CryptoError::Length)?;
        let (len, rest) = body.split_first_chunk::<4>().ok_or(CryptoError::Length)?;
        let len = u32::from_be_bytes(*len) as usize;
        if len > rest.len() {
            return Err(CryptoError::Length);
        }
        let (xml, tail) = rest.split_at(len);
        if tail != appid.as_bytes() {
            return Err(CryptoError::AppId);
        }
        Ok(xml.to_vec())
    }

    /// Encrypts `xml` as WeChat does, with the given 16 random bytes (for tests and `wxload`).
    pub fn encrypt(&self, xml: &[u8], appid: &str, random: [u8; 16]) -> String {
        let mut buf = Vec::with_capacity(xml.len() + appid.len() + 20 + PAD_BLOCK);
        buf.extend_from_slice(&random);
        buf.extend_from_slice(&(xml.len() as u32).to_be_bytes());
        buf.extend_from_slice(xml);
        buf.extend_from_slice(appid.as_bytes());
        let pad = PAD_BLOCK - buf.len() % PAD_BLOCK;
        buf.resize(buf.len() + pad, pad as u8);
        let len = buf.len();
        let cipher = Encryptor::new(&self.0.into(), &self.iv().into())
            .encrypt_padded::<NoPadding>(&mut buf, len)
            .expect("whole blocks");
        STANDARD.encode(cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn vectors() -> Vec<Value> {
        crate::test_vectors("crypto/crypto_vectors.json")
    }

    fn s<'a>(v: &'a Value, key: &str) -> &'a str {
        v[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} in {}", v["id"]))
    }

    #[test]
    fn every_public_vector() {
        let vectors = vectors();
        assert_eq!(vectors.len(), 6);
        let mut checked = 0;
        for v in &vectors {
            let id = s(v, "id");
            let key = AesKey::parse(s(v, "encoding_aes_key")).unwrap();
            let token = s(v, "token");
            let cases: Vec<&Value> = match v.get("message_case") {
                Some(case) => vec![case],
                None => vec![v],
            };
            for case in cases {
                let (ts, nonce, encrypt) =
                    (s(case, "timestamp"), s(case, "nonce"), s(case, "encrypt"));
                crate::verify::check(s(case, "msg_signature"), &mut [token, ts, nonce, encrypt])
                    .unwrap_or_else(|e| panic!("{id}: {e}"));
                if id.starts_with("C5") {
                    // The embedded id is the corp's; an appid-checking decryptor configured
                    // with anything else must refuse it.
                    assert_eq!(
                        key.decrypt(encrypt, "1000005"),
                        Err(CryptoError::AppId),
                        "{id}"
                    );
                    let xml = key.decrypt(encrypt, s(v, "embedded_receive_id")).unwrap();
                    assert_eq!(std::str::from_utf8(&xml).unwrap(), s(v, "plaintext"));
                } else {
                    let xml = key
                        .decrypt(encrypt, s(v, "appid"))
                        .unwrap_or_else(|e| panic!("{id}: {e}"));
                    if let Some(plain) = case
                        .get("plaintext")
                        .or(v.get("plaintext"))
                        .and_then(Value::as_str)
                    {
                        assert_eq!(std::str::from_utf8(&xml).unwrap(), plain, "{id}");
                    }
                    assert_eq!(
                        key.decrypt(encrypt, "wx0000000000000000"),
                        Err(CryptoError::AppId),
                        "{id}"
                    );
                }
                checked += 1;
            }
            if let Some(random) = v.get("random16").and_then(Value::as_str) {
                // Encryption with the vector's random bytes reproduces its ciphertext.
                let random: [u8; 16] = random.as_bytes().try_into().unwrap();
                let plain = s(v, "plaintext");
                assert_eq!(
                    key.encrypt(plain.as_bytes(), s(v, "appid"), random),
                    s(v, "encrypt"),
                    "{id}"
                );
            }
        }
        assert_eq!(checked, 6);
    }

    #[test]
    fn padding_runs_to_32_bytes() {
        // C2's pad is 21 bytes: a 16-byte unpadder would reject it.
        let v = &vectors()[2];
        assert_eq!(v["pkcs7_pad_len"], 21);
        let key = AesKey::parse(s(v, "encoding_aes_key")).unwrap();
        assert!(key.decrypt(s(v, "encrypt"), s(v, "appid")).is_ok());
        // Every message length round-trips, pad lengths 1..=32 included.
        for len in 0..80 {
            let xml = vec![b'x'; len];
            let encrypted = key.encrypt(&xml, "wxapp", [7; 16]);
            assert_eq!(key.decrypt(&encrypted, "wxapp").unwrap(), xml, "{len}");
        }
    }

    /// Encrypts raw bytes with no envelope, to build malformed messages.
    fn raw(key: &AesKey, plain: &[u8]) -> String {
        let mut buf = plain.to_vec();
        let len = buf.len();
        STANDARD.encode(
            Encryptor::new(&key.0.into(), &key.iv().into())
                .encrypt_padded::<NoPadding>(&mut buf, len)
                .unwrap(),
        )
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let key = AesKey::parse("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
        let good_len = |n: u32| {
            let mut p = vec![0u8; 16];
            p.extend_from_slice(&n.to_be_bytes());
            p
        };
        let padded = |mut p: Vec<u8>| {
            let fill = 32 - p.len() % 32;
            p.resize(p.len() + fill, fill as u8);
            p
        };
        let cases: Vec<(String, CryptoError)> = vec![
            ("!!!not base64!!!".into(), CryptoError::Base64),
            (String::new(), CryptoError::Blocks),
            (STANDARD.encode([0u8; 17]), CryptoError::Blocks),
            (STANDARD.encode([0u8; 16]), CryptoError::Blocks),
            // A last byte of 0 or over 32 is no PKCS#7 pad.
            (raw(&key, &[0u8; 32]), CryptoError::Padding),
            (raw(&key, &[33u8; 32]), CryptoError::Padding),
            // Pad bytes that disagree.
            (
                raw(&key, &{
                    let mut b = [3u8; 32];
                    b[30] = 4;
                    b
                }),
                CryptoError::Padding,
            ),
            // A length field past the end.
            (
                raw(
                    &key,
                    &padded({
                        let mut p = good_len(1000);
                        p.extend_from_slice(b"<xml/>wx");
                        p
                    }),
                ),
                CryptoError::Length,
            ),
            (
                raw(
                    &key,
                    &padded({
                        let mut p = good_len(u32::MAX);
                        p.extend_from_slice(b"<xml/>wx");
                        p
                    }),
                ),
                CryptoError::Length,
            ),
            // Shorter than random + length.
            (raw(&key, &[12u8; 32]), CryptoError::Length),
        ];
        for (encrypt, expected) in cases {
            assert_eq!(
                key.decrypt(&encrypt, "wx"),
                Err(expected.clone()),
                "{encrypt}"
            );
        }
    }

    #[test]
    fn bad_keys() {
        assert_eq!(AesKey::parse("short").unwrap_err(), CryptoError::BadKey);
        assert_eq!(
            AesKey::parse(&"!".repeat(43)).unwrap_err(),
            CryptoError::BadKey
        );
        assert!(AesKey::parse("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").is_ok());
        assert!(!format!(
            "{:?}",
            AesKey::parse("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap()
        )
        .contains('a'));
    }
}
