//! The load: N connections sending signed pushes at a fixed rate or as fast as they can,
//! retrying like WeChat (a timeout or a non-200 is retried with the same request, 3 times).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use indicatif::{ProgressBar, ProgressStyle};

use crate::push::{build, Mix, Signer, Target};

#[derive(Debug, Clone)]
pub struct Load {
    pub addr: String,
    pub connections: usize,
    /// Pushes per second in all; 0 sends as fast as the server answers.
    pub rate: u64,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub users: u64,
    pub mix: Mix,
    /// Where pushes go, push `seq` to target `seq % len`: one account's URL, or the routes of
    /// a component's authorizers. Never empty.
    pub targets: Vec<Target>,
    pub signer: Signer,
    pub retry: Retry,
    pub progress: bool,
}

/// What a load did.
#[derive(Debug)]
pub struct Outcome {
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub retried: u64,
    pub elapsed: Duration,
    /// Microseconds from a push's (intended) send time to its 200.
    pub latency: Histogram<u64>,
    /// The same, by the second of the run in which each push was answered: where a stall
    /// shows that a whole-run percentile averages away.
    pub by_second: Vec<Histogram<u64>>,
    pub acked_ids: HashSet<String>,
}

impl Outcome {
    /// The second of the run whose p99 was the worst: (second, its histogram).
    pub fn worst_second(&self) -> Option<(usize, &Histogram<u64>)> {
        self.by_second
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.is_empty())
            .max_by_key(|(_, h)| h.value_at_quantile(0.99))
    }
}

struct Shared {
    next: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    by_second: Mutex<Vec<Histogram<u64>>>,
    acked_ids: Mutex<HashSet<String>>,
}

/// A latency histogram: 1 µs to 60 s, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(addr: &str) -> std::io::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One attempt: the status and body, or None on a timeout or transport error.
async fn attempt(
    sender: &mut Option<Sender>,
    addr: &str,
    timeout: Duration,
    path_and_query: &str,
    body: &str,
) -> Option<(u16, Bytes)> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = connect(addr).await.ok();
    }
    let conn = sender.as_mut()?;
    if conn.ready().await.is_err() {
        *sender = None;
        return None;
    }
    let request = Request::post(path_and_query)
        .header("host", addr)
        .header("content-type", "text/xml")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("a valid request");
    let response = tokio::time::timeout(timeout, async {
        let response = conn.send_request(request).await.ok()?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    })
    .await;
    match response {
        Ok(Some(answer)) => Some(answer),
        _ => {
            // A timed-out connection may still deliver the old answer: start afresh.
            *sender = None;
            None
        }
    }
}

/// How WeChat retries: after `retry_delay`, `retries` times, with the same request.
#[derive(Debug, Clone)]
pub struct Retry {
    pub timeout: Duration,
    pub retries: u32,
    pub retry_delay: Duration,
}

/// What an answer must be for WeChat to take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accept {
    /// A push: any 200.
    Ok,
    /// An authorization event: a 200 with the body `success`.
    Success,
}

impl Accept {
    fn accepts(self, status: u16, body: &[u8]) -> bool {
        status == 200 && (self == Accept::Ok || body.trim_ascii() == b"success")
    }
}

/// Sends `request` until it is accepted or the retries run out, counting each retry.
pub(crate) async fn send(
    sender: &mut Option<Sender>,
    addr: &str,
    retry: &Retry,
    request: &crate::push::Request,
    accept: Accept,
    retried: &AtomicU64,
) -> bool {
    for n in 0..=retry.retries {
        if n > 0 {
            retried.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(retry.retry_delay).await;
        }
        let answer = attempt(
            sender,
            addr,
            retry.timeout,
            &request.path_and_query,
            &request.body,
        )
        .await;
        if answer.is_some_and(|(status, body)| accept.accepts(status, &body)) {
            return true;
        }
    }
    false
}

async fn connection_loop(
    load: Arc<Load>,
    shared: Arc<Shared>,
    start: Instant,
    base_time: i64,
    stop_at: Option<Instant>,
    bar: ProgressBar,
) {
    let mut sender: Option<Sender> = None;
    loop {
        let seq = shared.next.fetch_add(1, Ordering::Relaxed);
        if load.count.is_some_and(|c| seq >= c) || stop_at.is_some_and(|t| Instant::now() >= t) {
            return;
        }
        // Open loop at a fixed rate: push `seq` is due at start + seq / rate, and its latency
        // counts from then, so a slow server cannot hide its queueing.
        let due = if load.rate > 0 {
            let due = start + Duration::from_secs_f64(seq as f64 / load.rate as f64);
            tokio::time::sleep_until(due.into()).await;
            due
        } else {
            Instant::now()
        };
        // Spread over the targets; an account's own URL is the one target.
        let target = &load.targets[(seq % load.targets.len() as u64) as usize];
        let request = build(seq, load.users, base_time, &load.mix, target, &load.signer);
        let ok = send(
            &mut sender,
            &load.addr,
            &load.retry,
            &request,
            Accept::Ok,
            &shared.retried,
        )
        .await;
        if ok {
            shared.acked.fetch_add(1, Ordering::Relaxed);
            let micros = (due.elapsed().as_micros().max(1) as u64).min(60_000_000);
            let _ = shared
                .latency
                .lock()
                .expect("histogram lock")
                .record(micros);
            let second = start.elapsed().as_secs() as usize;
            let mut by_second = shared.by_second.lock().expect("histogram lock");
            if by_second.len() <= second {
                by_second.resize_with(second + 1, histogram);
            }
            let _ = by_second[second].record(micros);
            drop(by_second);
            shared
                .acked_ids
                .lock()
                .expect("ids lock")
                .insert(request.id.into());
        } else {
            shared.failed.fetch_add(1, Ordering::Relaxed);
        }
        bar.inc(1);
    }
}

/// Runs a load to its end.
pub async fn run(load: Load) -> Outcome {
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        retried: AtomicU64::new(0),
        latency: Mutex::new(histogram()),
        by_second: Mutex::new(Vec::new()),
        acked_ids: Mutex::new(HashSet::new()),
    });
    let bar = match (load.progress, load.count) {
        (false, _) => ProgressBar::hidden(),
        (true, Some(count)) => ProgressBar::new(count),
        (true, None) => ProgressBar::new_spinner(),
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} pushes, {per_sec}",
        )
        .expect("valid template"),
    );
    let start = Instant::now();
    let base_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let stop_at = load.duration.map(|d| start + d);
    let load = Arc::new(load);
    let tasks: Vec<_> = (0..load.connections.max(1))
        .map(|_| {
            tokio::spawn(connection_loop(
                Arc::clone(&load),
                Arc::clone(&shared),
                start,
                base_time,
                stop_at,
                bar.clone(),
            ))
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    bar.finish_and_clear();
    let elapsed = start.elapsed();
    let acked = shared.acked.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    let latency = shared.latency.lock().expect("histogram lock").clone();
    let by_second = std::mem::take(&mut *shared.by_second.lock().expect("histogram lock"));
    let acked_ids = std::mem::take(&mut *shared.acked_ids.lock().expect("ids lock"));
    Outcome {
        sent: acked + failed,
        acked,
        failed,
        retried: shared.retried.load(Ordering::Relaxed),
        elapsed,
        latency,
        by_second,
        acked_ids,
    }
}

/// A small load for tests: 4 connections, 7 users, every kind of push, quick retries.
#[cfg(test)]
pub(crate) fn test_load(addr: &str, targets: Vec<Target>, signer: Signer, count: u64) -> Load {
    Load {
        addr: addr.to_owned(),
        connections: 4,
        rate: 0,
        count: Some(count),
        duration: None,
        users: 7,
        mix: Mix::parse("subscribe,text,location,click").expect("a mix"),
        targets,
        signer,
        retry: Retry {
            timeout: Duration::from_secs(30),
            retries: 3,
            retry_delay: Duration::from_millis(10),
        },
        progress: false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn the_worst_second_is_the_one_with_the_worst_p99() {
        let second = |micros: &[u64]| {
            let mut h = histogram();
            for m in micros {
                h.record(*m).unwrap();
            }
            h
        };
        let outcome = Outcome {
            sent: 0,
            acked: 0,
            failed: 0,
            retried: 0,
            elapsed: Duration::ZERO,
            latency: histogram(),
            // A stall in second 2 of 4: two pushes of 120 ms among fast ones.
            by_second: vec![
                second(&[900; 100]),
                second(&[1_000; 100]),
                second(&[[1_000; 98].as_slice(), &[120_000; 2]].concat()),
                histogram(),
            ],
            acked_ids: HashSet::new(),
        };
        let (at, worst) = outcome.worst_second().unwrap();
        assert_eq!(at, 2);
        assert!(worst.value_at_quantile(0.999) >= 119_000);
        assert!(Outcome {
            by_second: Vec::new(),
            ..outcome
        }
        .worst_second()
        .is_none());
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_accounts_load_retries_a_refusal_with_the_same_request() {
        // A plain fake: refuses the first attempt at each push, then takes any 200 body.
        let seen = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
        let addr = crate::servers::fake(Arc::clone(&seen), |seen, key, body| {
            let tries = seen
                .entry(format!("{key}\n{}", String::from_utf8_lossy(&body)))
                .or_default();
            *tries += 1;
            (if *tries == 1 { 503 } else { 200 }, "whatever")
        })
        .await;
        let load = test_load(
            &addr,
            vec![Target::account("gh_load", "/wechat")],
            Signer::plaintext("t"),
            30,
        );
        let outcome = run(load).await;
        assert_eq!(
            (outcome.acked, outcome.failed, outcome.retried),
            (30, 0, 30)
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 30);
        assert!(seen.iter().all(|(request, tries)| *tries == 2
            && request.starts_with("/wechat?signature=")
            && request.contains("<ToUserName><![CDATA[gh_load]]>")));
    }
}
