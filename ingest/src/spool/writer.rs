//! The writer thread: it appends, commits every append that arrived meanwhile with one fsync,
//! and seals segments. After a failed write or fsync the segment is never written again: it
//! is cut back to what was committed (as far as the disk lets it) and sealed, and the next
//! append starts a new segment; a failed fsync may have dropped dirty pages, so fsyncing the
//! same file again would prove nothing. An append is answered only once it is fsync'd.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};

use tokio::sync::oneshot;

use super::segment::{segment_path, segments, sync_dir, SpoolError};

/// A segment is sealed for replay past this size.
const SEGMENT_BYTES: u64 = 8 << 20;

/// What the writer shares with the spool: the committed length of each segment on disk, so
/// the byte count drops by exactly what each replayed segment held, and the spooled events
/// whose first produce is still pending, so a segment that holds one is not sealed.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// Bytes held: committed segments, and appends under way (reserved before the write, so
    /// the limit holds; the writer gives back what a failed write reserved, whether or not
    /// its push still waits).
    pub(super) bytes: AtomicU64,
    pub(super) committed: Mutex<BTreeMap<u64, u64>>,
    pub(super) unknown: AtomicU64,
    /// The last commit failed (the disk is full or failing); the next good one clears it.
    pub(super) failing: AtomicBool,
}

pub(super) enum Command {
    Append(Vec<u8>, oneshot::Sender<Result<(), SpoolError>>),
    /// Start a new segment if the current one holds anything; reply with the sealed ones.
    Seal(oneshot::Sender<io::Result<Vec<(u64, PathBuf)>>>),
}

/// The segment being written: its file, and how much of it is committed (fsync'd and answered).
#[derive(Debug, Default)]
pub(super) struct Current {
    pub(super) seq: u64,
    pub(super) file: Option<File>,
    /// Bytes written since the segment began, committed or not.
    pub(super) written: u64,
    pub(super) committed: u64,
}

impl Current {
    /// Ends the segment; the next append starts a new one.
    fn seal(&mut self) {
        if self.file.is_some() || self.written > 0 {
            self.file = None;
            self.written = 0;
            self.committed = 0;
            self.seq += 1;
        }
    }
}

/// The writer thread: appends, one fsync per batch of appends, and sealing.
pub(super) fn write_loop(
    dir: &Path,
    seq: u64,
    commands: &mpsc::Receiver<Command>,
    shared: &Shared,
) {
    let mut current = Current {
        seq,
        ..Current::default()
    };
    while let Ok(first) = commands.recv() {
        let mut batch = vec![first];
        batch.extend(commands.try_iter().take(1023));
        let mut waiting = Vec::new();
        let mut result: io::Result<()> = Ok(());
        for command in batch {
            match command {
                Command::Append(framed, reply) => {
                    if result.is_ok() {
                        result = (|| {
                            if current.file.is_none() {
                                current.file = Some(
                                    OpenOptions::new()
                                        .create(true)
                                        .append(true)
                                        .open(segment_path(dir, current.seq))?,
                                );
                                sync_dir(dir)?;
                            }
                            current.written += framed.len() as u64;
                            current.file.as_mut().expect("open").write_all(&framed)
                        })();
                    }
                    waiting.push((reply, framed.len() as u64));
                }
                Command::Seal(reply) => {
                    // Commit what this batch wrote before sealing it. A segment that may hold
                    // an event whose first produce is pending is not sealed: its replay must
                    // know whether to skip it.
                    let sealed = commit(dir, &mut current, &mut waiting, &mut result, shared)
                        .and_then(|()| {
                            if shared.unknown.load(Ordering::SeqCst) > 0 {
                                return Ok(Vec::new());
                            }
                            current.seal();
                            Ok(segments(dir)?
                                .into_iter()
                                .filter(|(s, _)| *s < current.seq)
                                .collect())
                        });
                    let _ = reply.send(sealed);
                }
            }
        }
        let _ = commit(dir, &mut current, &mut waiting, &mut result, shared);
        if current.written >= SEGMENT_BYTES {
            current.seal();
        }
    }
}

/// fsyncs what was written and answers every append waiting on it. On a failed write or
/// fsync, the segment is cut back to its committed length and sealed for good.
pub(super) fn commit(
    dir: &Path,
    current: &mut Current,
    waiting: &mut Vec<(oneshot::Sender<Result<(), SpoolError>>, u64)>,
    result: &mut io::Result<()>,
    shared: &Shared,
) -> io::Result<()> {
    if waiting.is_empty() {
        return Ok(());
    }
    if result.is_ok() {
        if let Some(f) = current.file.as_mut() {
            *result = f.sync_data();
        }
    }
    let outcome = std::mem::replace(result, Ok(()));
    match &outcome {
        Ok(()) => {
            shared.failing.store(false, Ordering::SeqCst);
            current.committed = current.written;
            shared
                .committed
                .lock()
                .expect("committed lock")
                .insert(current.seq, current.committed);
        }
        Err(error) => {
            shared.failing.store(true, Ordering::SeqCst);
            tracing::error!(%error, segment = current.seq, "spool write failed: sealing the segment at its committed length");
            metrics::counter!("wxpipe_spool_write_errors_total").increment(1);
            // Best effort: if the disk refuses even this, the records past the committed
            // length are replayed too (their pushes were answered 503: a copy at worst).
            let path = segment_path(dir, current.seq);
            let cut = OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(current.committed));
            if current.committed == 0 && cut.is_ok() {
                let _ = fs::remove_file(&path);
            }
            current.seal();
        }
    }
    for (reply, len) in waiting.drain(..) {
        if outcome.is_err() {
            shared.bytes.fetch_sub(len, Ordering::SeqCst);
        }
        let _ = reply.send(match &outcome {
            Ok(()) => Ok(()),
            Err(e) => Err(SpoolError::Io(io::Error::new(e.kind(), e.to_string()))),
        });
    }
    outcome
}
