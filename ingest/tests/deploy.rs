//! What can be checked of the deployment files without a Docker engine: the compose stack runs
//! the binaries this workspace builds, with settings they know, all documented.

use std::collections::BTreeSet;
use std::path::Path;

fn read(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)).unwrap()
}

/// `KEY` of every `KEY: value` under an `environment:` block, and of every `${KEY…}`.
fn compose_variables(compose: &str) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    let mut in_env = false;
    for line in compose.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with("environment:") {
            in_env = true;
            continue;
        }
        if in_env && indent <= 4 {
            in_env = false;
        }
        if in_env && !trimmed.starts_with('#') {
            if let Some((key, _)) = trimmed.split_once(':') {
                vars.insert(key.trim().to_owned());
            }
        }
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            let name: String = rest[start + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            vars.insert(name);
            rest = &rest[start + 2..];
        }
    }
    vars
}

#[test]
fn compose_runs_our_binaries_with_settings_they_know() {
    let compose = read("docker-compose.yml");
    let dockerfile = read("Dockerfile");
    for service in ["kafka:", "redis:", "ingest:", "worker:", "topics:"] {
        assert!(
            compose.contains(&format!("\n  {service}")),
            "service {service}"
        );
    }
    for (line, what) in [
        (
            "KAFKA_PROCESS_ROLES: broker,controller",
            "Kafka in KRaft mode",
        ),
        ("--appendonly", "Redis with append-only persistence"),
        ("healthcheck:", "health checks"),
        (r#"command: ["ingest", "topics""#, "topics are created"),
    ] {
        assert!(compose.contains(line), "{what}");
    }
    for bin in ["ingest", "worker"] {
        assert!(
            dockerfile.contains(&format!("--bin {bin}")),
            "the Dockerfile builds {bin}"
        );
        assert!(
            dockerfile.contains(&format!("target/release/{bin}")),
            "the Dockerfile ships {bin}"
        );
    }
    assert!(
        dockerfile.contains("FROM rust:") && dockerfile.matches("FROM ").count() == 2,
        "multi-stage"
    );

    // Every wxpipe setting the stack sets is one the binaries accept and the settings
    // reference documents.
    let readme = read("docs/configuration.md");
    let help = |bin: &str, args: &[&str]| {
        let exe = match bin {
            "ingest" => env!("CARGO_BIN_EXE_ingest"),
            _ => panic!("{bin}"),
        };
        String::from_utf8(
            std::process::Command::new(exe)
                .args(args)
                .arg("--help")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
    };
    let ingest_help = help("ingest", &[]);
    let kafka_image_settings =
        |v: &str| v.starts_with("KAFKA_") && !["KAFKA_BROKERS", "KAFKA_TOPIC_PREFIX"].contains(&v);
    let mut checked = 0;
    let env_example = read(".env.example");
    let example_vars = env_example
        .lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_owned()))
        .filter(|k| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
    for var in compose_variables(&compose).into_iter().chain(example_vars) {
        if kafka_image_settings(&var)
            || ["INGEST_PORT", "INGEST_ADMIN_PORT"].contains(&var.as_str())
        {
            continue;
        }
        assert!(
            readme.contains(&format!("`{var}`")),
            "{var} is documented in docs/configuration.md"
        );
        let known = ingest_help.contains(&format!("[env: {var}")) || var.starts_with("WORKER_");
        assert!(known, "{var} is a setting of ingest or worker");
        checked += 1;
    }
    assert!(checked >= 8, "{checked}");
}

/// The lines of one service of the compose file: its own line and every line indented deeper.
fn service(compose: &str, name: &str) -> String {
    let header = format!("  {name}:");
    compose
        .lines()
        .skip_while(|l| *l != header)
        .enumerate()
        .take_while(|(i, l)| *i == 0 || l.is_empty() || l.starts_with("   "))
        .map(|(_, l)| format!("{l}\n"))
        .collect()
}

#[test]
fn compose_keeps_kafka_data_builds_every_image_and_checks_health_on_the_admin_port() {
    let compose = read("docker-compose.yml");
    let kafka = service(&compose, "kafka");
    assert!(!kafka.is_empty(), "a kafka service");
    // apache/kafka writes to /tmp/kraft-combined-logs unless KAFKA_LOG_DIRS says otherwise.
    let log_dirs = kafka
        .lines()
        .find_map(|l| l.trim().strip_prefix("KAFKA_LOG_DIRS:"))
        .expect("KAFKA_LOG_DIRS is set")
        .trim();
    assert!(
        kafka.contains(&format!("kafka-data:{log_dirs}")),
        "the kafka-data volume is mounted at {log_dirs}"
    );
    assert!(
        kafka.contains("EXTERNAL://") && kafka.contains(":9094"),
        "consumers on the host have a listener"
    );
    for name in ["ingest", "worker", "topics"] {
        assert!(
            service(&compose, name).contains("build: ."),
            "{name} builds the image itself"
        );
    }
    let ingest = service(&compose, "ingest");
    assert!(ingest.contains("INGEST_ADMIN_LISTEN: 0.0.0.0:9090"));
    assert!(ingest.contains("http://localhost:9090/readyz"), "{ingest}");
    // Where Docker Compose exists, it must accept the file.
    let compose_cli = std::process::Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !compose_cli {
        eprintln!("docker compose is not installed here: `docker compose config` not run");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new("docker")
        .args(["compose", "--env-file", ".env.example", "config", "--quiet"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
