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

use crate::push::{build, Mix, Signer};

#[derive(Debug, Clone)]
pub struct Load {
    pub addr: String,
    pub path: String,
    pub connections: usize,
    /// Pushes per second in all; 0 sends as fast as the server answers.
    pub rate: u64,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub users: u64,
    pub mix: Mix,
    pub account: String,
    pub signer: Signer,
    pub timeout: Duration,
    pub retries: u32,
    pub retry_delay: Duration,
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
    pub acked_ids: HashSet<String>,
}

struct Shared {
    next: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    acked_ids: Mutex<HashSet<String>>,
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

/// One attempt: the status, or None on a timeout or transport error.
async fn attempt(
    sender: &mut Option<Sender>,
    load: &Load,
    path_and_query: &str,
    body: &str,
) -> Option<u16> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = connect(&load.addr).await.ok();
    }
    let conn = sender.as_mut()?;
    if conn.ready().await.is_err() {
        *sender = None;
        return None;
    }
    let request = Request::post(path_and_query)
        .header("host", load.addr.as_str())
        .header("content-type", "text/xml")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("a valid request");
    let response = tokio::time::timeout(load.timeout, async {
        let response = conn.send_request(request).await.ok()?;
        let status = response.status().as_u16();
        response.into_body().collect().await.ok()?;
        Some(status)
    })
    .await;
    match response {
        Ok(Some(status)) => Some(status),
        _ => {
            // A timed-out connection may still deliver the old answer: start afresh.
            *sender = None;
            None
        }
    }
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
        let request = build(
            seq,
            load.users,
            base_time,
            &load.mix,
            &load.account,
            &load.path,
            &load.signer,
        );
        let mut ok = false;
        for n in 0..=load.retries {
            if n > 0 {
                shared.retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(load.retry_delay).await;
            }
            if attempt(&mut sender, &load, &request.path_and_query, &request.body).await
                == Some(200)
            {
                ok = true;
                break;
            }
        }
        if ok {
            shared.acked.fetch_add(1, Ordering::Relaxed);
            let micros = due.elapsed().as_micros().max(1) as u64;
            let _ = shared
                .latency
                .lock()
                .expect("histogram lock")
                .record(micros.min(60_000_000));
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
        latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")),
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
    let acked_ids = std::mem::take(&mut *shared.acked_ids.lock().expect("ids lock"));
    Outcome {
        sent: acked + failed,
        acked,
        failed,
        retried: shared.retried.load(Ordering::Relaxed),
        elapsed,
        latency,
        acked_ids,
    }
}
