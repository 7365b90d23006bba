//! The segment format, and the segment files of a spool directory.
//!
//! ```text
//! {dir}/{seq:016x}.seg  = record*
//! record                = len:u32 LE ‖ crc32(body):u32 LE ‖ body
//! body                  = topic_len:u16 LE ‖ topic ‖ key_len:u16 LE ‖ key ‖ id_len:u16 LE ‖ id ‖ value
//! ```
//!
//! Reading a segment stops at its first bad record (cut short, or a bad checksum): what
//! follows was never answered 200.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// A record's header: its body's length and checksum.
pub(super) const HEADER: usize = 8;

/// Why the spool could not open, or take a record.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool full ({0} bytes)")]
    Full(u64),
    #[error("spool I/O: {0}")]
    Io(#[from] io::Error),
    #[error("spool writer stopped")]
    Closed,
    #[error("record field over 64 KiB")]
    TooLarge,
    #[error("spool directory {0} is in use by another process (spool.lock)")]
    Locked(PathBuf),
}

/// One spooled Kafka record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecord {
    pub topic: String,
    pub key: String,
    /// The event id, so a copy that Kafka took after all is not replayed again.
    pub id: String,
    pub value: Vec<u8>,
}

impl SpoolRecord {
    pub(super) fn encode(&self) -> Result<Vec<u8>, SpoolError> {
        let mut body = Vec::with_capacity(
            6 + self.topic.len() + self.key.len() + self.id.len() + self.value.len(),
        );
        for field in [&self.topic, &self.key, &self.id] {
            let len = u16::try_from(field.len()).map_err(|_| SpoolError::TooLarge)?;
            body.extend_from_slice(&len.to_le_bytes());
            body.extend_from_slice(field.as_bytes());
        }
        body.extend_from_slice(&self.value);
        let mut framed = Vec::with_capacity(HEADER + body.len());
        framed.extend_from_slice(&(body.len() as u32).to_le_bytes());
        framed.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        framed.extend_from_slice(&body);
        Ok(framed)
    }

    pub(super) fn decode(body: &[u8]) -> Option<SpoolRecord> {
        let mut rest = body;
        let mut field = || {
            let (len, tail) = rest.split_first_chunk::<2>()?;
            let (value, tail) = tail.split_at_checked(u16::from_le_bytes(*len) as usize)?;
            rest = tail;
            String::from_utf8(value.to_vec()).ok()
        };
        let (topic, key, id) = (field()?, field()?, field()?);
        Some(SpoolRecord {
            topic,
            key,
            id,
            value: rest.to_vec(),
        })
    }
}

/// Reads a segment's valid records and the length they span; what follows is torn.
pub fn read_segment(path: &Path) -> io::Result<(Vec<SpoolRecord>, u64)> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let mut records = Vec::new();
    let mut at = 0usize;
    while let Some(header) = data.get(at..at + HEADER) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let Some(body) = data.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        let Some(record) = SpoolRecord::decode(body) else {
            break;
        };
        records.push(record);
        at += HEADER + len;
    }
    Ok((records, at as u64))
}

pub(super) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.seg"))
}

pub(super) fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| u64::from_str_radix(n, 16).ok());
        if let Some(seq) = seq {
            found.push((seq, path));
        }
    }
    found.sort();
    Ok(found)
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips() {
        let r = SpoolRecord {
            topic: "t".into(),
            key: "中文".into(),
            id: "i".into(),
            value: vec![0, 1, 2, 255],
        };
        let framed = r.encode().unwrap();
        assert_eq!(SpoolRecord::decode(&framed[HEADER..]), Some(r));
        assert_eq!(SpoolRecord::decode(&[5, 0, b'a']), None);
        assert_eq!(
            SpoolRecord::decode(&[1, 0, b'a', 1, 0, b'b']),
            None,
            "no id"
        );
    }
}
