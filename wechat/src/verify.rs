//! Request verification: WeChat's SHA-1 signatures and the replay window on `timestamp`.

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// Why a signed request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("bad signature")]
    BadSignature,
    #[error("timestamp outside the replay window")]
    StaleTimestamp,
}

/// `sha1` of the parts sorted as strings (never as numbers) and joined with nothing.
pub fn signature(parts: &mut [&str]) -> [u8; 20] {
    parts.sort_unstable();
    let mut hasher = Sha1::new();
    for part in parts.iter() {
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// Checks a hex `signature` (any case) against the parts, in constant time over the 20 bytes.
pub fn check(given_hex: &str, parts: &mut [&str]) -> Result<(), VerifyError> {
    let mut given = [0u8; 20];
    hex::decode_to_slice(given_hex, &mut given).map_err(|_| VerifyError::BadSignature)?;
    if bool::from(given.ct_eq(&signature(parts))) {
        Ok(())
    } else {
        Err(VerifyError::BadSignature)
    }
}

/// Checks that a signed `timestamp` lies within `tolerance` seconds of `now` (0 disables the
/// window, but the timestamp must still be a number).
pub fn check_timestamp(timestamp: &str, now: i64, tolerance: u64) -> Result<i64, VerifyError> {
    let ts: i64 = timestamp.parse().map_err(|_| VerifyError::StaleTimestamp)?;
    if tolerance != 0 && ts.abs_diff(now) > tolerance {
        return Err(VerifyError::StaleTimestamp);
    }
    Ok(ts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn vectors() -> Vec<Value> {
        crate::test_vectors("url_verify/url_verify_vectors.json")
    }

    fn s(v: &Value) -> &str {
        v.as_str().unwrap()
    }

    #[test]
    fn public_url_verify_vectors() {
        let vectors = vectors();
        assert_eq!(vectors.len(), 3);
        for v in &vectors {
            let mut parts: Vec<&str> = match v.get("parts") {
                Some(parts) => parts.as_array().unwrap().iter().map(s).collect(),
                None => vec![s(&v["token"]), s(&v["timestamp"]), s(&v["nonce"])],
            };
            check(s(&v["signature"]), &mut parts).unwrap_or_else(|_| panic!("{}", v["id"]));
            check(&s(&v["signature"]).to_uppercase(), &mut parts).unwrap();
            if let Some(bad) = v.get("bad_signature") {
                assert_eq!(check(s(bad), &mut parts), Err(VerifyError::BadSignature));
            }
        }
    }

    #[test]
    fn sorts_as_strings_not_numbers() {
        // As numbers 9 < 10; as strings "10" < "9": the signature must use the latter.
        let as_strings = signature(&mut ["10", "9"]);
        let mut hasher = Sha1::new();
        hasher.update(b"109");
        assert_eq!(as_strings, <[u8; 20]>::from(hasher.finalize()));
    }

    #[test]
    fn malformed_signatures_are_rejected() {
        let mut parts = ["a", "b", "c"];
        for bad in [
            "",
            "zz",
            "a9993e364706816aba3e25717850c26c9cd0d8",
            "a9993e364706816aba3e25717850c26c9cd0d89d00",
        ] {
            assert_eq!(
                check(bad, &mut parts),
                Err(VerifyError::BadSignature),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn replay_window() {
        assert_eq!(check_timestamp("1000", 1000, 300), Ok(1000));
        assert_eq!(check_timestamp("700", 1000, 300), Ok(700));
        assert_eq!(check_timestamp("1300", 1000, 300), Ok(1300));
        assert_eq!(
            check_timestamp("699", 1000, 300),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            check_timestamp("1301", 1000, 300),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(check_timestamp("1", 1000, 0), Ok(1));
        assert_eq!(
            check_timestamp("x", 1000, 0),
            Err(VerifyError::StaleTimestamp)
        );
    }
}
