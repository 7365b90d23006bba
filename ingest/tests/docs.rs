//! The user documents say what the code does, where a test can tell: the sample record, the
//! metrics table, the schema version, the benchmark commands, `--help`, and every link.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(root().join(name)).unwrap()
}

/// The sample record of `docs/records.md` is exactly what the ingress writes for the push it
/// shows.
#[test]
fn the_sample_record_is_what_the_ingress_writes() {
    let records = read("docs/records.md");
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
    assert_eq!(written, sample, "the sample record of docs/records.md");
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
    for doc in ["docs/operating.md", "BENCHMARKS.md", "CONTRIBUTING.md"] {
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

/// The metrics the binaries describe are the ones the table of `docs/operating.md` lists,
/// and the `op` values of `wxpipe_spool_records_total` in the code are all in its row.
#[test]
fn the_operating_guide_lists_every_metric_and_only_those() {
    let readme = read("docs/operating.md");
    let described: std::collections::BTreeSet<String> = ops::METRICS
        .iter()
        .map(|metric| metric.name.to_owned())
        .filter(|name| name.starts_with("wxpipe_"))
        .collect();
    assert!(described.len() > 20, "{described:?}");
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
        "described (left) and in docs/operating.md (right)"
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

/// The front page stays a front page, and every relative link of the user documents leads to
/// a file that exists (and, within a page, to a heading it has).
#[test]
fn the_readme_is_short_and_every_link_resolves() {
    let readme = read("README.md");
    assert!(readme.lines().count() < 200, "README.md is a front page");
    let mut pages = vec![
        PathBuf::from("README.md"),
        PathBuf::from("CONTRIBUTING.md"),
        PathBuf::from("CHANGELOG.md"),
    ];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path.strip_prefix(root()).unwrap().to_owned());
        }
    }
    let mut links = 0;
    for page in &pages {
        let text = read(page.to_str().unwrap());
        for target in text
            .split("](")
            .skip(1)
            .filter_map(|rest| rest.split(')').next())
        {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let linked = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            let linked_path = root().join(&linked);
            assert!(
                linked_path.exists(),
                "{}: a link to {target}, which does not exist",
                page.display()
            );
            if !anchor.is_empty() && linked_path.extension().is_some_and(|e| e == "md") {
                let headings: Vec<String> = std::fs::read_to_string(&linked_path)
                    .unwrap()
                    .lines()
                    .filter(|l| l.starts_with('#'))
                    .map(|l| {
                        l.trim_start_matches('#')
                            .trim()
                            .to_lowercase()
                            .chars()
                            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                            .collect::<String>()
                            .replace(' ', "-")
                    })
                    .collect();
                assert!(
                    headings.iter().any(|h| h == anchor),
                    "{}: no heading for #{anchor} in {}",
                    page.display(),
                    linked.display()
                );
            }
            links += 1;
        }
    }
    assert!(links > 10, "the pages link to each other");
}

/// `docs/open-platform.md` names both URLs to enter in WeChat's console, every component
/// topic, every Redis key of a component, and the release-check pairs.
#[test]
fn the_open_platform_page_names_its_routes_topics_keys_and_test_accounts() {
    let page = read("docs/open-platform.md");
    let mut named = vec![
        "`https://HOST{INGEST_PATH}/component/auth`".to_owned(),
        "`https://HOST{INGEST_PATH}/component/$APPID$`".to_owned(),
    ];
    let topics: Vec<_> = schemas::Topic::all()
        .filter(|t| t.kind() == schemas::Kind::Component)
        .collect();
    assert!(topics.len() >= 5, "{topics:?}");
    named.extend(
        topics
            .iter()
            .map(|t| format!("`{{prefix}}.{}`", t.suffix())),
    );
    // As `tests/component.rs` finds them in Redis.
    named.extend(
        [
            "{p}:component:{C}:ticket",
            "{p}:component:{C}:authorizer:{A}",
            "{p}:component:{C}:token",
            "{p}:component:{C}:token_lock",
            "{p}:component:{C}:authorizer_token:{A}",
            "{p}:component:{C}:authorizer_token_lock:{A}",
        ]
        .map(|key| format!("`{key}`")),
    );
    for (appid, gh) in wechat::reply::RELEASE_CHECK_ACCOUNTS {
        named.push(format!("| `{appid}` | `{gh}` |"));
    }
    for name in named {
        assert!(page.contains(&name), "docs/open-platform.md: {name}");
    }
}
