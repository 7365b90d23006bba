//! The user documents say what the code does, where a test can tell: the README's sample
//! record, its metrics table, the schema version, the benchmark commands, `--help`.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(root().join(name)).unwrap()
}

/// The README's sample record is exactly what the ingress writes for the push it shows.
#[test]
fn the_readme_sample_record_is_what_the_ingress_writes() {
    let readme = read("README.md");
    let records = &readme[readme.find("## Records").expect("a Records section")..];
    let json = records
        .split("```json\n")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .expect("a JSON sample");
    let sample: serde_json::Value = serde_json::from_str(json).unwrap();
    let field = |name: &str| sample[name].as_str().unwrap().to_owned();
    let xml = format!(
        "<xml><ToUserName><![CDATA[{}]]></ToUserName><FromUserName><![CDATA[{}]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event>\
         <EventKey><![CDATA[qrscene_{}]]></EventKey></xml>",
        field("account"),
        field("openid"),
        sample["created_at"],
        field("scene"),
    );
    let push = wechat::parse::Push::try_from(xml.as_bytes()).unwrap();
    let event = wechat::normalize::normalize(push, field("received_at")).unwrap();
    let written = serde_json::to_value(&event).unwrap();
    assert_eq!(written, sample, "the README's sample record");
    let topic = schemas::Topic::all()
        .find(|t| t.suffix() == "event.subscribe")
        .unwrap();
    let schema = schemas::json_schema(topic);
    assert!(jsonschema::is_valid(&schema, &sample));
}

/// `schemas/README.md` names the schema version the schemas carry.
#[test]
fn the_schemas_readme_names_the_current_version() {
    let readme = read("schemas/README.md");
    let current = format!("urn:wxpipe:schema:v{}:", schemas::json_schema::VERSION);
    assert!(readme.contains(&current), "schemas/README.md: {current}");
    for version in 1..schemas::json_schema::VERSION {
        let old = format!("urn:wxpipe:schema:v{version}:");
        assert!(!readme.contains(&old), "schemas/README.md names {old}");
    }
}

/// Every `cargo bench -p CRATE` the documents name runs benchmarks that exist.
#[test]
fn every_bench_command_names_a_crate_with_benchmarks() {
    let mut named = 0;
    for doc in ["README.md", "BENCHMARKS.md"] {
        let text = read(doc).split_whitespace().collect::<Vec<_>>().join(" ");
        for rest in text.split("cargo bench -p ").skip(1) {
            let krate: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            assert!(
                root().join(&krate).join("benches").is_dir(),
                "{doc}: `cargo bench -p {krate}`, which has no benches/"
            );
            named += 1;
        }
    }
    assert!(named > 0, "the documents name the benchmarks");
}

/// The metrics the binaries describe are the ones the README's table lists, and the
/// `op` values of `wxpipe_spool_records_total` in the code are all in its row.
#[test]
fn the_readme_lists_every_metric_and_only_those() {
    let readme = read("README.md");
    let ops = read("ops/src/lib.rs");
    let described: std::collections::BTreeSet<String> = ops
        .split("describe_")
        .skip(1)
        .filter_map(|call| call.split('"').nth(1))
        .filter(|name| name.starts_with("wxpipe_"))
        .map(str::to_owned)
        .collect();
    let table: std::collections::BTreeSet<String> = readme
        .lines()
        .filter(|line| line.starts_with("| `wxpipe_"))
        .flat_map(|line| {
            let names = line.split(" | ").next().unwrap_or_default();
            names
                .split('`')
                .filter(|part| part.starts_with("wxpipe_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        described, table,
        "described (left) and in the README (right)"
    );

    let row = readme
        .lines()
        .find(|line| line.contains("`wxpipe_spool_records_total`"))
        .unwrap();
    let mut sources = String::new();
    for dir in ["ingest/src", "ingest/src/spool"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                sources.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    let mut values = 0;
    for call in sources
        .split("\"wxpipe_spool_records_total\", \"op\" => \"")
        .skip(1)
    {
        let value = call.split('"').next().unwrap();
        assert!(
            row.contains(&format!("`{value}`")),
            "op {value} is not in: {row}"
        );
        values += 1;
    }
    assert!(values >= 4, "the spool's op values were found in the code");
}

/// `ingest --help` names every kind of `REDIS_URL`.
#[test]
fn help_names_every_redis_url() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ingest"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for kind in [
        "redis://",
        "redis+cluster://",
        "redis+sentinel://",
        "memory://",
    ] {
        assert!(
            help.contains(kind),
            "--help says nothing of {kind}:\n{help}"
        );
    }
}
