//! The process's own resources in Prometheus' standard names, read from `/proc` at each
//! scrape (Linux; elsewhere nothing): CPU time, resident memory, open and allowed files.

use std::fmt::Write;

/// The `process_*` series, with their HELP and TYPE lines.
pub fn render() -> String {
    let mut out = String::new();
    let mut series = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(value) = value {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        }
    };
    series(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent, in seconds",
        cpu_seconds(),
    );
    series(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size, in bytes",
        resident_bytes(),
    );
    series(
        "process_open_fds",
        "gauge",
        "Open file descriptors",
        std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| dir.count() as f64),
    );
    series(
        "process_max_fds",
        "gauge",
        "The soft limit on open file descriptors",
        max_fds(),
    );
    out
}

/// utime + stime of `/proc/self/stat`, in clock ticks of 1/100 s (`USER_HZ`).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces: the fields that follow start after its `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

fn resident_bytes() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()?;
    Some(kib * 1024.0)
}

fn max_fds() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_series_are_read() {
        let text = super::render();
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}: {text}");
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse::<f64>().ok());
            assert!(value.is_some_and(|v| v >= 0.0), "{name}: {text}");
        }
        assert!(super::resident_bytes().unwrap() > 1e6);
    }
}
