//! The decryption path: any `Encrypt` value must decrypt or fail, never panic; and any
//! plaintext encrypted with our key must come back intact.
#![no_main]

use wechat::decrypt::AesKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = AesKey::parse("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").expect("valid key");
    // As text: arbitrary base64-ish input.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = key.decrypt(text, "wxb11529c136998cb6");
    }
    // As ciphertext bytes: well-formed base64 of arbitrary blocks exercises unpadding and
    // the length field.
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let _ = key.decrypt(&encoded, "wxb11529c136998cb6");
    // Round trip.
    let encrypted = key.encrypt(data, "wxapp", [9; 16]);
    assert_eq!(key.decrypt(&encrypted, "wxapp").expect("round trip"), data);
});
