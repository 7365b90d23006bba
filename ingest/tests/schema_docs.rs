//! `schemas/README.md`'s generated section matches what the generator writes today.

use std::path::Path;

#[path = "../examples/schema-docs/topics.rs"]
mod topics;

use topics::with_topics_section;

#[test]
fn schemas_readme_is_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("schemas/README.md")).unwrap();
    let current =
        with_topics_section(&readme, &root.join("tests/vectors")).expect("markers present");
    assert!(
        current == readme,
        "schemas/README.md is stale: run `cargo run -p ingest --example schema-docs`"
    );
}
