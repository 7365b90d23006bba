//! Names and ports no other test uses, so that tests run side by side.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}{}x{}x{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A loopback port that was free a moment ago, below the kernel's ephemeral range where
/// there is room: a port the kernel hands out meanwhile (a mock broker's, a client
/// connection's) is never it. CI once saw an ingress refuse its admin port because the mock
/// broker it had just started was given that very port.
pub fn free_port() -> u16 {
    const FIRST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = ephemeral_low();
    if low > FIRST + 1_000 {
        // A stride coprime to the span visits every port once before any again, from a start
        // of this process's own.
        let span = u64::from(low - FIRST);
        let stride = 7_919;
        let start = u64::from(std::process::id()) * 2_654_435_761 % span;
        for _ in 0..256 {
            let step = u64::from(NEXT.fetch_add(1, Ordering::Relaxed));
            let port = u64::from(FIRST) + (start + step * stride) % span;
            if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
                return port as u16;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The first port of the kernel's ephemeral range (Linux's default 32768 elsewhere).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_never_ones_the_kernel_hands_out() {
        let low = ephemeral_low();
        let ports: std::collections::BTreeSet<u16> = (0..500).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 500, "a port given twice");
        assert!(
            ports.iter().all(|&port| u32::from(port) < low),
            "a port in the ephemeral range from {low}: {:?}",
            ports.last()
        );
    }
}
