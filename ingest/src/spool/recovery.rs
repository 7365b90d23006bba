//! Recovery at start: what a crash left in the spool directory. A rewrite cut short is
//! dropped (its segment is still whole), a torn tail is cut off (it was never answered 200),
//! an empty segment is removed, and an unreadable one is counted and left for the replay to
//! set aside; it never fails the start for a segment it cannot read.

use std::fs::{self, OpenOptions};
use std::path::Path;
use std::sync::atomic::Ordering;

use super::segment::{read_segment, segments, sync_dir, SpoolError};
use super::writer::Shared;

/// Recovers `dir` into `shared` (each kept segment's committed length, and the bytes held).
/// Returns the bytes kept and the sequence number the writer starts at.
pub(super) fn recover(dir: &Path, shared: &Shared) -> Result<(u64, u64), SpoolError> {
    let mut bytes = 0;
    let mut next_seq = 0;
    let held = &shared.bytes;
    let mut keep = |seq: u64, len: u64| {
        bytes += len;
        held.fetch_add(len, Ordering::SeqCst);
        shared
            .committed
            .lock()
            .expect("committed lock")
            .insert(seq, len);
    };
    // A rewrite a crash cut short: the segment it was for is still whole.
    for entry in fs::read_dir(dir)?.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .ends_with(".seg.rewrite")
        {
            let _ = fs::remove_file(entry.path());
        }
    }
    for (seq, path) in segments(dir)? {
        next_seq = seq + 1;
        let (records, valid) = match read_segment(&path) {
            Ok(read) => read,
            Err(error) => {
                tracing::error!(%error, segment = %path.display(), "spool: a segment cannot be read at start; the replay will set it aside");
                keep(seq, fs::metadata(&path).map_or(0, |m| m.len()));
                continue;
            }
        };
        let len = fs::metadata(&path).map_or(valid, |m| m.len());
        if valid < len {
            tracing::warn!(segment = %path.display(), cut = len - valid, "spool: cutting off a torn tail");
            let cut = OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(valid));
            if let Err(error) = cut {
                tracing::warn!(%error, segment = %path.display(), "spool: the torn tail stays (reading stops before it)");
            }
        }
        if records.is_empty() {
            if let Err(error) = fs::remove_file(&path) {
                tracing::warn!(%error, segment = %path.display(), "spool: an empty segment stays");
            }
        } else {
            keep(seq, valid);
        }
    }
    if let Err(error) = sync_dir(dir) {
        tracing::warn!(%error, "spool: the directory could not be synced at start");
    }
    Ok((bytes, next_seq))
}
