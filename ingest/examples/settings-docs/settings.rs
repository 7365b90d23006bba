//! The settings reference of `docs/configuration.md`, generated from the binaries' own
//! definitions (their clap commands): every variable, its config-file key, which binary reads
//! it, what it means and its default. Written by `cargo run -p ingest --example
//! settings-docs`; `tests/settings_docs.rs` includes this file and fails when the page is
//! stale. Not in the library: the ingress never runs it.

use std::collections::BTreeMap;
use std::fmt::Write;

use clap::CommandFactory;

pub const START: &str =
    "<!-- settings:start (generated: cargo run -p ingest --example settings-docs) -->";
pub const END: &str = "<!-- settings:end -->";

/// One setting as the reference shows it.
struct Row {
    file_key: String,
    readers: Vec<&'static str>,
    meaning: String,
    default: String,
    secret: bool,
}

/// A table cell: one line, pipes escaped.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn collect(command: &clap::Command, reader: &'static str, rows: &mut BTreeMap<String, Row>) {
    for arg in command.get_arguments() {
        let Some(env) = arg.get_env() else { continue };
        let variable = env.to_string_lossy().into_owned();
        let row = rows.entry(variable.clone()).or_insert_with(|| {
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            let default = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(",");
            Row {
                file_key: ops::config_file::file_key(&variable).unwrap_or_else(|| "—".into()),
                readers: Vec::new(),
                meaning: cell(&help),
                default: if default.is_empty() {
                    "unset".into()
                } else {
                    format!("`{}`", default.replace('`', ""))
                },
                secret: arg.is_hide_env_values_set(),
            }
        });
        if !row.readers.contains(&reader) {
            row.readers.push(reader);
        }
    }
}

/// The generated section.
pub fn settings_section() -> String {
    let mut rows = BTreeMap::new();
    collect(&ingest::Config::command(), "ingest", &mut rows);
    collect(&worker::Config::command(), "worker", &mut rows);
    let mut sections: BTreeMap<String, Vec<(&String, &Row)>> = BTreeMap::new();
    for (variable, row) in &rows {
        let section = variable
            .split('_')
            .next()
            .unwrap_or_default()
            .to_lowercase();
        sections.entry(section).or_default().push((variable, row));
    }
    let mut out = String::from(START);
    out.push('\n');
    for (section, rows) in sections {
        let _ = writeln!(out, "\n### `{section}`\n");
        out.push_str("| variable | config file | read by | meaning | default |\n");
        out.push_str("|---|---|---|---|---|\n");
        for (variable, row) in rows {
            let secret = if row.secret { " (secret)" } else { "" };
            let _ = writeln!(
                out,
                "| `{variable}`{secret} | `{}` | {} | {} | {} |",
                row.file_key,
                row.readers.join(", "),
                row.meaning,
                row.default
            );
        }
    }
    out.push('\n');
    out.push_str(END);
    out
}

/// `page` with its generated section replaced by today's; `None` without the markers.
pub fn with_settings_section(page: &str) -> Option<String> {
    let start = page.find(START)?;
    let end = page[start..].find(END)? + start + END.len();
    Some(format!(
        "{}{}{}",
        &page[..start],
        settings_section(),
        &page[end..]
    ))
}
