//! Rewrites the generated settings reference of `docs/configuration.md`.

use std::path::Path;

mod settings;

fn main() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let page = std::fs::read_to_string(&path).expect("docs/configuration.md");
    let updated = settings::with_settings_section(&page).expect("the page has the markers");
    std::fs::write(&path, updated).expect("write docs/configuration.md");
    println!("updated {}", path.display());
}
