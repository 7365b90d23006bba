//! What can be checked of the deployment files without a Docker engine or a cluster: the
//! compose stack and the Kubernetes manifests run the binaries this workspace builds, with
//! settings they know; the image caches its dependencies and checks health without curl; the
//! alerting rules pass promtool, read exported metrics and have a runbook; the dashboard reads
//! exported metrics; and what those watch is there from start (every metric, a dependency
//! gauge kept current with nobody polling `/readyz`).

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
fn compose_runs_every_wxpipe_service_on_the_config_file() {
    let compose = read("docker-compose.yml");
    let known = settings_the_binaries_read();
    let file = "deploy/compose/wxpipe.toml";
    let config = python(
        "import json, sys, tomllib; print(json.dumps(tomllib.loads(sys.stdin.read())))",
        read(file).as_bytes(),
    );
    for setting in config_file_settings(&config) {
        assert!(
            known.contains(&setting),
            "{setting} (in {file}) is not a setting the binaries read"
        );
    }
    assert_eq!(config["kafka"]["brokers"], "kafka:9092");
    assert_eq!(
        config["redis"]["url"], "redis://redis:6379/",
        "Redis is named with Kafka"
    );
    assert_eq!(config["ingest"]["spool_dir"], "/var/lib/wxpipe/spool");
    for name in ["ingest", "worker", "topics"] {
        let service = service(&compose, name);
        assert!(
            service.contains("WXPIPE_CONFIG: /etc/wxpipe/wxpipe.toml")
                && service.contains(&format!("./{file}:/etc/wxpipe/wxpipe.toml:ro")),
            "{name} reads {file}: {service}"
        );
        assert!(!service.contains("curl"), "{name}: the image has no curl");
    }
    let ingest = service(&compose, "ingest");
    assert!(
        ingest.contains("spool:/var/lib/wxpipe/spool"),
        "the spool on its volume"
    );
    let worker = service(&compose, "worker");
    assert!(
        worker.contains(r#"test: ["CMD", "wxpipe-healthcheck", "9091", "/readyz"]"#),
        "{worker}"
    );
}

/// The default of the clap setting read from `env`, in `file`.
fn default_of(file: &str, env: &str) -> String {
    let source = read(file);
    let at = source
        .find(&format!("env = \"{env}\""))
        .unwrap_or_else(|| panic!("{env}"));
    source[at..]
        .split("default_value = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("{env} has a default"))
        .to_owned()
}

#[test]
fn the_image_builds_dependencies_apart_exposes_every_port_and_checks_health_without_curl() {
    let dockerfile = read("Dockerfile");
    let (deps, code) = dockerfile
        .split_once("COPY . .")
        .expect("the code is copied in one step");
    // The dependency layer: the workspace's manifests, every member's, and the empty crates,
    // built before any of our code is copied.
    let root = read("Cargo.toml");
    let members: Vec<&str> = root
        .lines()
        .find_map(|l| l.strip_prefix("members = ["))
        .expect("members")
        .trim_end_matches(']')
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .collect();
    assert!(members.contains(&"ingest") && members.contains(&"worker"));
    assert!(deps.contains("COPY Cargo.toml Cargo.lock ./"));
    for member in &members {
        assert!(
            deps.contains(&format!("COPY {member}/Cargo.toml {member}/")),
            "the dependency layer copies {member}/Cargo.toml"
        );
    }
    assert!(deps.contains("stub-crates.sh") && deps.contains("cargo build --release --locked"));
    assert!(
        !deps.contains("COPY . "),
        "no code before the dependencies are built"
    );
    assert!(code.contains("touch") && code.contains("cargo build --release --locked"));
    // The empty crates make a workspace cargo accepts with the same Cargo.lock, every target
    // its manifests declare in place.
    let stub = std::env::temp_dir().join(format!("wxpipe-stub-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stub);
    std::fs::create_dir_all(&stub).unwrap();
    for file in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(repo(file), stub.join(file)).unwrap();
    }
    for member in &members {
        std::fs::create_dir_all(stub.join(member)).unwrap();
        std::fs::copy(
            repo(&format!("{member}/Cargo.toml")),
            stub.join(member).join("Cargo.toml"),
        )
        .unwrap();
    }
    let ran = std::process::Command::new("sh")
        .arg(repo("deploy/docker/stub-crates.sh"))
        .current_dir(&stub)
        .status()
        .unwrap();
    assert!(ran.success());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = succeeded(
        std::process::Command::new(cargo)
            .args([
                "metadata",
                "--no-deps",
                "--locked",
                "--offline",
                "--format-version",
                "1",
            ])
            .current_dir(&stub),
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut targets = 0;
    for package in metadata["packages"].as_array().unwrap() {
        for target in package["targets"].as_array().unwrap() {
            let path = target["src_path"].as_str().unwrap();
            assert!(Path::new(path).exists(), "the empty crates lack {path}");
            targets += 1;
        }
    }
    assert!(targets > members.len(), "{targets}");
    let _ = std::fs::remove_dir_all(&stub);

    // The ports the binaries listen on by default, all exposed.
    let exposed: BTreeSet<String> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().map(str::to_owned))
        .collect();
    for (file, env) in [
        ("ingest/src/config.rs", "INGEST_LISTEN"),
        ("ingest/src/config.rs", "INGEST_ADMIN_LISTEN"),
        ("worker/src/config.rs", "WORKER_ADMIN_LISTEN"),
    ] {
        let port = default_of(file, env).rsplit_once(':').unwrap().1.to_owned();
        assert!(
            exposed.contains(&port),
            "{env}'s port {port} is exposed: {exposed:?}"
        );
    }
    // A health check, with no network tool added to the image.
    let runtime = dockerfile.rsplit("FROM ").next().unwrap();
    assert!(runtime.contains("HEALTHCHECK") && runtime.contains("wxpipe-healthcheck"));
    assert!(
        !runtime.contains("curl") && !runtime.contains("wget"),
        "{runtime}"
    );
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
    // The image has no curl: its own script checks /readyz on the admin port.
    assert!(
        ingest.contains(r#"test: ["CMD", "wxpipe-healthcheck", "9090", "/readyz"]"#),
        "{ingest}"
    );
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
    succeeded(
        std::process::Command::new("docker")
            .args(["compose", "--env-file", ".env.example", "config", "--quiet"])
            .current_dir(&root),
    );
}

/// Runs `command` and asserts that it succeeded (showing its stderr when not).
fn succeeded(command: &mut std::process::Command) -> std::process::Output {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A child process, killed when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Asks `check` every 100 ms until it answers `Some` or `within` passes.
async fn poll<T, F: std::future::Future<Output = Option<T>>>(
    within: std::time::Duration,
    mut check: impl FnMut() -> F,
) -> Option<T> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(answer) = check().await {
            return Some(answer);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_is_there_from_start_and_the_dependency_gauge_follows_redis_unasked() {
    // An ingress with Kafka and Redis, no spool, and nobody asking /readyz: every metric of
    // both binaries is in /metrics from start, the fixed series at zero, and the background
    // probe notices Redis going away (the dashboards' and alerts' view of a dependency).
    let kafka = testkit::Kafka::start(&[]);
    let mut redis = testkit::RedisServer::start();
    let (port, admin) = (testkit::free_port(), testkit::free_port());
    let mut child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_ingest"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "error")
            .env("INGEST_LISTEN", format!("127.0.0.1:{port}"))
            .env("INGEST_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
            .env("WECHAT_TOKEN", "t")
            .env("KAFKA_BROKERS", kafka.brokers())
            .env("KAFKA_TOPIC_PREFIX", testkit::unique("t"))
            .env("REDIS_URL", redis.url())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let metrics = || async move {
        reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()
    };
    let redis_up =
        |text: &str| testkit::metric(text, "wxpipe_dependency_up", &[("dependency", "redis")]);
    let text = poll(std::time::Duration::from_secs(30), || async {
        let text = metrics().await?;
        (redis_up(&text) == Some(1.0)).then_some(text)
    })
    .await
    .expect("the ingress never showed Redis up");
    testkit::assert_described(&text, ops::METRICS.iter().map(|metric| metric.name));
    for metric in ops::METRICS {
        // Each fixed series is there; a counter with nothing counted yet (no push came) at 0.
        // (The probe's own Redis calls may already show in wxpipe_redis_batch_ops.)
        for labels in metric.series {
            let value = match metric.kind {
                ops::Kind::Histogram => {
                    testkit::metric(&text, &format!("{}_count", metric.name), labels)
                }
                _ => testkit::metric(&text, metric.name, labels),
            };
            assert!(value.is_some(), "no {} {labels:?}:\n{text}", metric.name);
            if metric.kind == ops::Kind::Counter {
                assert_eq!(value, Some(0.0), "{} {labels:?}", metric.name);
            }
        }
    }
    assert_eq!(
        testkit::metric(&text, "wxpipe_dependency_up", &[("dependency", "kafka")]),
        Some(1.0),
        "{text}"
    );
    // The image's HEALTHCHECK script, against this process: the port given, or the one
    // INGEST_ADMIN_LISTEN names; a port nobody listens on is unhealthy.
    let healthcheck = |args: &[String], env: &[(&str, String)]| {
        std::process::Command::new("bash")
            .arg(repo("deploy/docker/wxpipe-healthcheck"))
            .args(args)
            .env_remove("INGEST_ADMIN_LISTEN")
            .env_remove("WORKER_ADMIN_LISTEN")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(
        healthcheck(&[admin.to_string(), "/readyz".into()], &[]),
        Some(0)
    );
    assert_eq!(
        healthcheck(
            &[],
            &[("INGEST_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))]
        ),
        Some(0)
    );
    assert_eq!(
        healthcheck(&[testkit::free_port().to_string()], &[]),
        Some(1)
    );
    assert_eq!(
        healthcheck(&[admin.to_string(), "/nowhere".into()], &[]),
        Some(1),
        "a 404 is not healthy"
    );
    redis.stop();
    let down = poll(std::time::Duration::from_secs(12), || async {
        (redis_up(&metrics().await?) == Some(0.0)).then_some(())
    })
    .await;
    child.0.kill().unwrap();
    assert!(down.is_some(), "Redis down was not shown within 12 s");
}

/// The path of `name` in the repository.
fn repo(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
}

/// Every setting the binaries read: each `env = "…"` of their clap definitions, and each
/// variable they read themselves (`std::env::var("…")`), in the ingress's, the workers' and
/// ops' sources.
fn settings_the_binaries_read() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut dirs: Vec<std::path::PathBuf> = ["ingest/src", "worker/src", "ops/src"]
        .iter()
        .map(|d| repo(d))
        .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let source = std::fs::read_to_string(&path).unwrap();
            for marker in ["env = \"", "env::var(\"", "env::var_os(\""] {
                for piece in source.split(marker).skip(1) {
                    let name: String = piece
                        .chars()
                        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    if !name.is_empty() && piece[name.len()..].starts_with('"') {
                        names.insert(name);
                    }
                }
            }
        }
    }
    names
}

/// Which setting a config-file key is: a variable's first word is its section, the rest,
/// lower-cased, its key (`[ingest] max_in_flight` is `INGEST_MAX_IN_FLIGHT`); the librdkafka
/// property tables (`[kafka.config]`) are `KAFKA_CONFIG` and its siblings.
fn config_file_settings(config: &serde_json::Value) -> Vec<String> {
    let mut names = Vec::new();
    for (section, table) in config.as_object().expect("a TOML table") {
        if section == "accounts" {
            // [accounts.NAME] tables, as in an INGEST_ACCOUNTS file.
            names.push("INGEST_ACCOUNTS".to_owned());
            continue;
        }
        // `[component] x` is `WECHAT_COMPONENT_X`.
        let prefix = match section.as_str() {
            "component" => "wechat_component",
            other => other,
        };
        for (key, value) in table.as_object().unwrap_or_else(|| panic!("[{section}]")) {
            names.push(format!("{prefix}_{key}").to_uppercase());
            if value.is_object() {
                assert_eq!(
                    section, "kafka",
                    "[{section}.{key}]: only Kafka's properties are tables"
                );
            }
        }
    }
    names
}

/// Runs the Python side of the checks on `input`: `script` prints one JSON value.
fn python(script: &str, input: &[u8]) -> serde_json::Value {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is required for the deployment checks");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Each object of a rendered YAML stream, with what `kubernetes-validate` (strict, against
/// Kubernetes 1.29's schemas, the oldest release these manifests support) said of it.
const VALIDATE: &str = r#"
import json, sys
try:
    import kubernetes_validate as kv
except ImportError:
    sys.exit("kubernetes-validate is required (tests/run installs it: pip install kubernetes-validate)")
import yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
errors, unknown = [], []
for d in docs:
    try:
        kv.validate(d, "1.29.0", True)
    except kv.SchemaNotFoundError:
        unknown.append(d["kind"])
    except kv.ValidationError as e:
        errors.append("%s/%s: %s" % (d["kind"], d["metadata"]["name"], str(e).splitlines()[0]))
print(json.dumps({"docs": docs, "errors": errors, "unknown": unknown}))
"#;

/// `kubectl kustomize DIR`'s objects, validated; `None` when kubectl is not installed.
fn kustomize(dir: &str) -> Option<Vec<serde_json::Value>> {
    let out = match std::process::Command::new("kubectl")
        .args(["kustomize", &repo(dir).display().to_string()])
        .output()
    {
        Ok(out) => out,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => panic!("kubectl: {error}"),
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checked = python(VALIDATE, &out.stdout);
    assert_eq!(
        checked["errors"],
        serde_json::json!([]),
        "{dir}: invalid objects"
    );
    assert_eq!(
        checked["unknown"],
        serde_json::json!(["ServiceMonitor"]),
        "{dir}: only the ServiceMonitor is outside Kubernetes' own schemas"
    );
    Some(checked["docs"].as_array().unwrap().clone())
}

/// The objects of `kind`.
fn of_kind<'a>(docs: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// Whether `selector` (matchLabels, or a Service's map) selects `labels`.
fn selects(selector: &serde_json::Value, labels: &serde_json::Value) -> bool {
    let selector = selector.as_object().expect("a selector");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The port of a `host:port` listen address.
fn port_of(listen: &serde_json::Value) -> u64 {
    listen
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap()
}

/// Checks one rendering of the manifests; see the test below.
fn check_manifests(dir: &str, docs: &[serde_json::Value], known: &BTreeSet<String>) {
    let name = |d: &serde_json::Value| d["metadata"]["name"].as_str().unwrap().to_owned();
    // The config file, from its ConfigMap: every key a setting, Redis named with Kafka.
    let maps = of_kind(docs, "ConfigMap");
    assert_eq!(maps.len(), 1, "{dir}: one ConfigMap");
    let toml_text = maps[0]["data"]["wxpipe.toml"]
        .as_str()
        .expect("wxpipe.toml");
    let config = python(
        "import json, sys, tomllib; print(json.dumps(tomllib.loads(sys.stdin.read())))",
        toml_text.as_bytes(),
    );
    for setting in config_file_settings(&config) {
        assert!(
            known.contains(&setting),
            "{dir}: {setting} (in wxpipe.toml) is not a setting the binaries read"
        );
    }
    assert!(
        config["kafka"]["brokers"].is_string(),
        "{dir}: Kafka is named"
    );
    let redis = config["redis"]["url"]
        .as_str()
        .expect("[redis] url is required with Kafka");
    assert!(
        !redis.starts_with("memory://"),
        "{dir}: Redis is shared, not memory://"
    );
    let ingest_listen = port_of(
        config["ingest"]
            .get("listen")
            .unwrap_or(&"0.0.0.0:8080".into()),
    );
    let ingest_admin = port_of(
        config["ingest"]
            .get("admin_listen")
            .unwrap_or(&"0.0.0.0:9090".into()),
    );
    let worker_admin = port_of(
        config["worker"]
            .get("admin_listen")
            .unwrap_or(&"0.0.0.0:9091".into()),
    );
    let ack_deadline_ms = config["ingest"]["ack_deadline_ms"].as_u64().unwrap_or(4500);
    let secrets = of_kind(docs, "Secret");
    assert_eq!(secrets.len(), 1, "{dir}: one Secret");
    let secret = secrets[0];

    // Every container: settings the binaries read; the config file and each secret a file
    // of a mounted volume; resource requests.
    let workloads: Vec<&serde_json::Value> = docs
        .iter()
        .filter(|d| d["kind"] == "StatefulSet" || d["kind"] == "Deployment")
        .collect();
    for workload in &workloads {
        let pod = &workload["spec"]["template"]["spec"];
        let volumes = pod["volumes"].as_array().unwrap();
        for container in pod["containers"].as_array().unwrap() {
            let what = format!("{dir}: {} {}", name(workload), container["name"]);
            let mounted = |path: &str| -> Option<(&serde_json::Value, String)> {
                container["volumeMounts"].as_array()?.iter().find_map(|m| {
                    let file = path
                        .strip_prefix(m["mountPath"].as_str()?)?
                        .strip_prefix('/')?;
                    let volume = volumes.iter().find(|v| v["name"] == m["name"])?;
                    Some((volume, file.to_owned()))
                })
            };
            let env = container["env"].as_array().unwrap();
            let mut config_file = None;
            for var in env {
                let var_name = var["name"].as_str().unwrap();
                let setting = var_name.strip_suffix("_FILE").unwrap_or(var_name);
                assert!(
                    known.contains(setting),
                    "{what}: {var_name} is not a setting the binaries read"
                );
                if var_name.ends_with("_FILE") {
                    let (volume, key) = mounted(var["value"].as_str().unwrap())
                        .unwrap_or_else(|| panic!("{what}: {var_name} names no mounted file"));
                    assert_eq!(
                        volume["secret"]["secretName"], secret["metadata"]["name"],
                        "{what}: {var_name}"
                    );
                    assert!(
                        secret["data"].get(&key).is_some(),
                        "{what}: {var_name}: the Secret has no {key}"
                    );
                }
                if var_name == "WXPIPE_CONFIG" {
                    let (volume, key) = mounted(var["value"].as_str().unwrap())
                        .unwrap_or_else(|| panic!("{what}: WXPIPE_CONFIG names no mounted file"));
                    assert_eq!(
                        volume["configMap"]["name"], maps[0]["metadata"]["name"],
                        "{what}"
                    );
                    assert_eq!(key, "wxpipe.toml", "{what}");
                    config_file = Some(key);
                }
            }
            // The process (not root) can read its secret files: they are readable by all, or
            // belong to the pod's fsGroup.
            for volume in volumes.iter().filter(|v| v["secret"].is_object()) {
                let mode = volume["secret"]["defaultMode"].as_u64().unwrap_or(0o644);
                assert!(
                    mode & 0o004 != 0
                        || (mode & 0o040 != 0 && pod["securityContext"]["fsGroup"].is_u64()),
                    "{what}: the Secret's files (mode {mode:o}) are readable by the process"
                );
            }
            assert!(
                config_file.is_some(),
                "{what}: WXPIPE_CONFIG names the config file"
            );
            for resource in ["cpu", "memory"] {
                assert!(
                    container["resources"]["requests"][resource].is_string(),
                    "{what}: requests {resource}"
                );
            }
            assert!(
                container["resources"]["limits"]["memory"].is_string(),
                "{what}: a memory limit"
            );
        }
    }

    // The ingress: a StatefulSet with a spool volume per pod, probes on the admin port, and
    // time to drain.
    let sets = of_kind(docs, "StatefulSet");
    assert_eq!(sets.len(), 1, "{dir}: the ingress StatefulSet");
    let ingest = sets[0];
    let pod = &ingest["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["args"], serde_json::json!(["ingest"]));
    let spool_dir = config["ingest"]["spool_dir"]
        .as_str()
        .expect("[ingest] spool_dir");
    let claim = ingest["spec"]["volumeClaimTemplates"][0]["metadata"]["name"].clone();
    assert!(
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == claim && m["mountPath"] == spool_dir),
        "{dir}: the spool ({spool_dir}) is the pod's own claim"
    );
    let port_named = |container: &serde_json::Value, name: &serde_json::Value| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| &p["name"] == name || &p["containerPort"] == name)
            .map(|p| p["containerPort"].as_u64().unwrap())
    };
    let probe = |container: &serde_json::Value, probe: &str| {
        let get = &container[probe]["httpGet"];
        (
            get["path"].as_str().unwrap_or_default().to_owned(),
            port_named(container, &get["port"]),
        )
    };
    // Both probes ask the admin listener, each its own question.
    let assert_probes = |container: &serde_json::Value, admin: u64| {
        let ready = probe(container, "readinessProbe");
        assert_eq!(ready, ("/readyz".to_owned(), Some(admin)));
        let live = probe(container, "livenessProbe");
        assert_eq!(live, ("/healthz".to_owned(), Some(admin)));
    };
    assert_probes(container, ingest_admin);
    let pre_stop = &container["lifecycle"]["preStop"]["exec"]["command"];
    let pre_stop_secs: u64 = pre_stop[1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("preStop: sleep N");
    assert_eq!(pre_stop[0], "sleep");
    // The drain (ingest::serve): connections get the ack deadline + 1 s, the pushes in flight
    // as long again, then the producer's flush up to 5 s.
    let drain_ms = 2 * (ack_deadline_ms + 1000) + 5000;
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace * 1000 >= pre_stop_secs * 1000 + drain_ms,
        "{dir}: {grace} s covers the preStop wait and the drain ({drain_ms} ms)"
    );
    let labels = &ingest["spec"]["template"]["metadata"]["labels"];
    let budgets = of_kind(docs, "PodDisruptionBudget");
    assert!(
        budgets
            .iter()
            .any(|b| selects(&b["spec"]["selector"]["matchLabels"], labels)),
        "{dir}: a PodDisruptionBudget for the ingress"
    );

    // Services: WeChat's port alone on the ingress's ClusterIP Service; admin ports only on
    // headless Services.
    let services = of_kind(docs, "Service");
    let mut public = 0;
    for service in &services {
        let ports = service["spec"]["ports"].as_array().unwrap();
        let headless = service["spec"]["clusterIP"] == "None";
        if selects(&service["spec"]["selector"], labels) && !headless {
            public += 1;
            assert_eq!(
                ports.len(),
                1,
                "{dir}: {} serves WeChat's port only",
                name(service)
            );
            assert_eq!(
                port_named(container, &ports[0]["targetPort"]),
                Some(ingest_listen)
            );
        }
        let admin = ports.iter().any(|p| {
            let target = &p["targetPort"];
            [ingest_admin, worker_admin]
                .iter()
                .any(|a| target == "admin" || target == a)
        });
        if admin {
            assert!(
                headless,
                "{dir}: {} (an admin port) is headless",
                name(service)
            );
            assert!(
                service["spec"]["type"].is_null() || service["spec"]["type"] == "ClusterIP",
                "{dir}: {} is not exposed",
                name(service)
            );
        }
    }
    assert_eq!(public, 1, "{dir}: one Service for WeChat");

    // One worker Deployment per role, each probed on its admin port, with time to finish.
    let mut roles = BTreeSet::new();
    for deployment in of_kind(docs, "Deployment") {
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(container["args"], serde_json::json!(["worker"]));
        let role = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "WORKER_ROLES")
            .and_then(|v| v["value"].as_str())
            .expect("WORKER_ROLES");
        assert!(
            !role.contains(','),
            "{dir}: one role per Deployment: {role}"
        );
        assert!(roles.insert(role.to_owned()), "{dir}: {role} twice");
        assert_probes(container, worker_admin);
        // worker::Workers::run: 10 s for the records in flight, 5 s to commit and leave.
        assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 15);
    }
    // Every role a worker runs by default, and `component` with a component configured.
    let mut all_roles: BTreeSet<String> = worker::Role::DEFAULT
        .iter()
        .map(|r| r.name().to_owned())
        .collect();
    if config.get("component").is_some() {
        all_roles.insert(worker::Role::Component.name().to_owned());
    }
    assert_eq!(roles, all_roles, "{dir}: a Deployment per role");

    // The ServiceMonitor (no schema here): it selects the admin Services, on a port they
    // name, and so reaches every pod.
    let monitors = of_kind(docs, "ServiceMonitor");
    assert_eq!(monitors.len(), 1, "{dir}: one ServiceMonitor");
    let monitor = monitors[0];
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let selected: Vec<&&serde_json::Value> = services
        .iter()
        .filter(|s| {
            selects(
                &monitor["spec"]["selector"]["matchLabels"],
                &s["metadata"]["labels"],
            )
        })
        .collect();
    let endpoints = monitor["spec"]["endpoints"].as_array().expect("endpoints");
    assert!(!endpoints.is_empty());
    for endpoint in endpoints {
        assert_eq!(endpoint["path"], "/metrics");
        for service in &selected {
            assert!(
                service["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == endpoint["port"]),
                "{dir}: {} has no port {}",
                name(service),
                endpoint["port"]
            );
        }
    }
    let scraped: BTreeSet<u64> = selected
        .iter()
        .flat_map(|s| s["spec"]["ports"].as_array().unwrap().iter())
        .filter_map(|p| p["port"].as_u64())
        .collect();
    assert_eq!(
        scraped,
        BTreeSet::from([ingest_admin, worker_admin]),
        "{dir}: both admin ports, nothing else"
    );
    for workload in &workloads {
        let labels = &workload["spec"]["template"]["metadata"]["labels"];
        assert!(
            selected
                .iter()
                .any(|s| selects(&s["spec"]["selector"], labels)),
            "{dir}: {} is scraped",
            name(workload)
        );
    }
}

#[test]
fn the_kubernetes_manifests_are_valid_and_name_only_settings_the_binaries_read() {
    let known = settings_the_binaries_read();
    assert!(
        known.contains("INGEST_SPOOL_DIR")
            && known.contains("WORKER_ROLES")
            && known.contains("LOG_FORMAT")
    );
    for dir in [
        "deploy/kubernetes",
        "deploy/kubernetes/overlays/example",
        "deploy/kubernetes/overlays/open-platform",
    ] {
        let Some(docs) = kustomize(dir) else {
            eprintln!("kubectl is not installed here: the Kubernetes manifests were not rendered");
            return;
        };
        check_manifests(dir, &docs, &known);
    }
}

/// The metric names a PromQL expression reads: its identifiers that are not functions,
/// aggregations, keywords or label names (in `{…}`, `by (…)`, `on (…)` and the like).
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: [&str; 5] = ["and", "or", "unless", "bool", "offset"];
    let chars: Vec<char> = expr.chars().collect();
    let mut tokens: Vec<String> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let closing = match c {
            '{' => Some('}'),
            '[' => Some(']'),
            '"' | '\'' => Some(c),
            _ => None,
        };
        if let Some(closing) = closing {
            i += 1;
            while i < chars.len() && chars[i] != closing {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
            i += 1;
        }
    }
    let mut metrics = BTreeSet::new();
    let mut t = 0;
    while t < tokens.len() {
        let token = &tokens[t];
        let next = tokens.get(t + 1).map(String::as_str);
        if LABEL_LISTS.contains(&token.as_str()) {
            // Skip its parenthesised label list.
            if next == Some("(") {
                t += 2;
                while t < tokens.len() && tokens[t] != ")" {
                    t += 1;
                }
            }
        } else if token
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && !KEYWORDS.contains(&token.as_str())
            && next != Some("(")
            && !next.is_some_and(|n| LABEL_LISTS[..2].contains(&n))
        {
            metrics.insert(token.clone());
        }
        t += 1;
    }
    metrics
}

/// The metric a series name belongs to: a histogram's `_bucket`, `_sum` and `_count` are its
/// own.
fn exported(series: &str) -> Option<&'static ops::Metric> {
    ops::METRICS.iter().find(|m| {
        m.name == series
            || (m.kind == ops::Kind::Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| series.strip_suffix(suffix) == Some(m.name)))
    })
}

#[test]
fn promql_metric_names_are_found() {
    assert_eq!(
        promql_metrics(
            r#"histogram_quantile(0.99, sum by (instance, le) (rate(wxpipe_push_ack_seconds_bucket{job=~"$job"}[5m]))) > 2.4"#
        ),
        BTreeSet::from(["wxpipe_push_ack_seconds_bucket".to_owned()])
    );
    assert_eq!(
        promql_metrics(
            r#"wxpipe_spool_bytes > 0 and ignoring(op) increase(wxpipe_spool_records_total{op="replayed"}[15m]) == 0 or up"#
        ),
        BTreeSet::from([
            "wxpipe_spool_bytes".to_owned(),
            "wxpipe_spool_records_total".to_owned(),
            "up".to_owned()
        ])
    );
    assert!(exported("wxpipe_push_ack_seconds_bucket").is_some());
    assert!(exported("wxpipe_spool_bytes_bucket").is_none());
    assert!(exported("up").is_none());
}

/// `promtool ARGS…` in deploy/prometheus.
fn promtool(args: &[&str]) -> String {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(repo("deploy/prometheus"))
        .output()
        .expect("promtool is required (tests/run installs it: apt-get install prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

#[test]
fn the_alerts_pass_promtool_read_exported_metrics_and_each_has_a_runbook_section() {
    promtool(&["check", "rules", "alerts.yml"]);
    let tested = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    let alerts = read("deploy/prometheus/alerts.yml");
    let tests = read("deploy/prometheus/alerts.test.yml");
    let runbook = read("docs/runbook.md");
    let headings: BTreeSet<&str> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(str::trim)
        .collect();
    let field = |line: &str, name: &str| {
        line.trim()
            .strip_prefix(name)
            .map(|v| v.trim().trim_matches('"').to_owned())
    };
    let mut names = Vec::new();
    let mut exprs = Vec::new();
    let mut runbook_urls = Vec::new();
    for line in alerts.lines() {
        if let Some(name) = field(line, "- alert:") {
            names.push(name);
        } else if let Some(expr) = field(line, "expr:") {
            exprs.push(expr);
        } else if let Some(url) = field(line, "runbook_url:") {
            runbook_urls.push(url);
        }
    }
    assert!(names.len() >= 9, "{names:?}");
    assert_eq!(exprs.len(), names.len(), "one single-line expr per alert");
    assert_eq!(runbook_urls.len(), names.len(), "a runbook_url per alert");
    for ((name, expr), url) in names.iter().zip(&exprs).zip(&runbook_urls) {
        assert!(
            headings.contains(name.as_str()),
            "docs/runbook.md has no section `## {name}`"
        );
        assert_eq!(
            url,
            &format!("docs/runbook.md#{}", name.to_lowercase()),
            "{name}"
        );
        assert!(
            tests.contains(&format!(
                "alertname: {name}\n        exp_alerts:\n          - exp_labels:"
            )),
            "alerts.test.yml never sees {name} fire"
        );
        let metrics = promql_metrics(expr);
        assert!(!metrics.is_empty(), "{name}: {expr}");
        for metric in metrics {
            assert!(
                exported(&metric).is_some(),
                "{name} reads {metric}, which the binaries do not export"
            );
        }
    }
    // And what the issue asks to be watched is.
    let all: BTreeSet<String> = exprs.iter().flat_map(|e| promql_metrics(e)).collect();
    for metric in [
        "wxpipe_spool_bytes",
        "wxpipe_spool_records_total",
        "wxpipe_dependency_up",
        "wxpipe_worker_events_total",
        "wxpipe_worker_dead_letter_failures_total",
        "wxpipe_pushes_total",
        "wxpipe_push_ack_seconds_bucket",
        "wxpipe_worker_consumer_lag",
        "wxpipe_worker_held_records",
    ] {
        assert!(all.contains(metric), "no alert reads {metric}");
    }
}

#[test]
fn the_dashboard_queries_only_exported_metrics_and_shows_what_matters() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/wxpipe.json")).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    let mut stack = vec![&dashboard];
    while let Some(value) = stack.pop() {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(expr) = map.get("expr").and_then(|e| e.as_str()) {
                    exprs.push(expr.to_owned());
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut queried = BTreeSet::new();
    for expr in &exprs {
        let metrics = promql_metrics(expr);
        assert!(!metrics.is_empty(), "{expr}");
        for metric in metrics {
            let Some(exported) = exported(&metric) else {
                panic!("the dashboard queries {metric}, which the binaries do not export: {expr}");
            };
            queried.insert(exported.name);
        }
    }
    // Its variables' queries too.
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["definition"].as_str() {
            let metric = query
                .split(['(', ',', ')'])
                .nth(1)
                .map(str::trim)
                .unwrap_or_default();
            assert!(
                exported(metric).is_some(),
                "variable {}: {query}",
                variable["name"]
            );
        }
    }
    for metric in [
        "wxpipe_pushes_total",
        "wxpipe_push_ack_seconds",
        "wxpipe_spool_bytes",
        "wxpipe_dependency_up",
        "wxpipe_redis_errors_total",
        "wxpipe_kafka_produce_seconds",
        "wxpipe_worker_events_total",
        "wxpipe_worker_consumer_lag",
        "wxpipe_worker_dead_letter_failures_total",
        "wxpipe_worker_welcome_unknown_total",
    ] {
        assert!(queried.contains(metric), "the dashboard shows no {metric}");
    }
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("outcome=\"dead_lettered\"")),
        "dead letters"
    );
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("role=\"welcome\"") && e.contains("by (outcome)")),
        "welcome outcomes"
    );
}
