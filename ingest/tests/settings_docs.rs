//! `docs/configuration.md`'s settings reference matches the binaries' own definitions.

use std::path::Path;

#[path = "../examples/settings-docs/settings.rs"]
mod settings;

#[test]
fn the_settings_reference_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let page = std::fs::read_to_string(path).unwrap();
    let current = settings::with_settings_section(&page).expect("markers present");
    assert!(
        current == page,
        "docs/configuration.md is stale: run `cargo run -p ingest --example settings-docs`"
    );
}

#[test]
fn every_setting_has_a_meaning_and_a_config_file_key() {
    let section = settings::settings_section();
    let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| `")).collect();
    assert!(rows.len() > 40, "{section}");
    for row in rows {
        let cells: Vec<&str> = row.split(" | ").collect();
        // The config file's own path is the one setting the file cannot hold.
        if !row.starts_with("| `WXPIPE_CONFIG`") {
            assert!(cells[1].starts_with("`["), "no config-file key: {row}");
        }
        assert!(cells[3].len() > 3, "no meaning: {row}");
    }
}
