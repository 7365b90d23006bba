//! WeChat's push protocol, both sides of it: what the ingress checks and reads, and what
//! WeChat does to send a push (for the load generator, the fuzz targets, the benches and the
//! tests).
//!
//! ```text
//! query ─▶ verify (signature, replay window) ─┐
//! body  ─▶ decrypt (safe/compatible mode) ────┴─▶ parse (XML) ─▶ normalize ─▶ schemas::Event
//! sign::Signer: XML ─▶ signed (and encrypted) push, as WeChat sends it
//! ```
//!
//! - [`verify`]: SHA-1 signatures and the `timestamp` window; [`query`]: the signed query.
//! - [`decrypt`]: the AES-256-CBC envelope; [`parse`]: the XML push; [`normalize`]: the event
//!   of the contract, with its identity.
//! - [`accounts`]: the `INGEST_ACCOUNTS` file; [`sign`]: the signing side; [`reply`]: passive
//!   replies in safe mode (the Open Platform release check).
//!
//! It owns no I/O and must never depend on the ingress, the workers, Redis or Kafka: it is the
//! protocol, and `schemas` (the contract it normalizes to) is its only wxpipe dependency.

pub mod accounts;
pub mod decrypt;
pub mod normalize;
pub mod parse;
pub mod query;
pub mod reply;
pub mod sign;
pub mod verify;

pub use accounts::Secret;
pub use query::Query;
pub use sign::Signer;
pub use verify::VerifyError;

/// The public test vectors in `tests/vectors/{file}` (a JSON array).
#[cfg(test)]
fn test_vectors(file: &str) -> Vec<serde_json::Value> {
    let path = format!("{}/../tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The Rust examples of `docs/open-platform.md`, run as doctests so the page never shows code
/// that does not compile or values that are not what the crate computes.
#[cfg(doctest)]
#[doc = include_str!("../../docs/open-platform.md")]
pub struct OpenPlatformDocs;
