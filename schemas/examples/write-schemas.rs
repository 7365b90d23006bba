//! Writes `schemas/topics/*.json` from the spec: `cargo run -p schemas --example write-schemas`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let topics = dir.join("topics");
    if topics.exists() {
        std::fs::remove_dir_all(&topics)?;
    }
    std::fs::create_dir_all(&topics)?;
    for topic in schemas::Topic::all() {
        std::fs::write(
            dir.join(schemas::json_schema::file_name(topic)),
            schemas::json_schema::pretty(topic),
        )?;
    }
    println!(
        "wrote {} schemas to {}",
        schemas::Topic::all().count(),
        topics.display()
    );
    Ok(())
}
