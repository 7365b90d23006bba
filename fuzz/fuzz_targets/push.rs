//! The XML path: any body through parsing and normalization must be a push or an error.
#![no_main]

use wechat::normalize::normalize;
use wechat::parse::Push;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(push) = Push::try_from(body) {
        if let Ok(event) = normalize(push, "2026-11-26T00:00:00.000Z".into()) {
            // Whatever normalizes must serialize and read back the same.
            let json = serde_json::to_vec(&event).expect("an event serializes");
            assert_eq!(schemas::Event::from_json(&json).expect("reads back"), event);
        }
    }
});
