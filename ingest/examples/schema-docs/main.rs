//! Rewrites the generated per-topic section of `schemas/README.md`.

use std::path::Path;

mod topics;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("schemas/README.md");
    let readme = std::fs::read_to_string(&path).expect("schemas/README.md");
    let updated = topics::with_topics_section(&readme, &root.join("tests/vectors"))
        .expect("the README has the markers");
    std::fs::write(&path, updated).expect("write schemas/README.md");
    println!("updated {}", path.display());
}
