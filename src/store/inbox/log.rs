//! The inbox's write-ahead log on disk: numbered segment files of checksummed records.
//!
//! Why a log of our own: a redb commit rewrites the B-tree pages it touched and syncs them
//! (≈ 2–4 ms per group commit on this machine's disk under ingest), and the next transaction
//! cannot start until that sync returns. An acknowledgement only needs its event to be on
//! disk, so the inbox appends it to a file and syncs that: one sequential write and one
//! `fdatasync` per batch (≈ 0.35 ms here, docs/performance.md), while redb receives the
//! inbox's state later, in large checkpoints off the acknowledgement path.
//!
//! A segment is `inbox-{generation:016x}.wal` in the log directory. A record is framed as
//! `[payload length: u32 LE][CRC-32 of the payload: u32 LE][payload]`. Reading stops at the
//! first frame that is short or fails its checksum: that is a batch whose sync never returned,
//! so nobody was told it was recorded. A new segment's directory entry is synced before any
//! record in it is acknowledged.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const PREFIX: &str = "inbox-";
const SUFFIX: &str = ".wal";
const HEADER: usize = 8;

/// Appends one framed record (its payload written by `payload`) to `buf`.
pub(super) fn frame(buf: &mut Vec<u8>, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    payload(buf);
    let body = &buf[start + HEADER..];
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(body);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// The payloads of the whole records at the start of `bytes`, in order, up to the first torn
/// or corrupt one.
pub(super) fn records(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= HEADER {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let Some(body) = rest.get(HEADER..HEADER + len) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        out.push(body);
        rest = &rest[HEADER + len..];
    }
    out
}

fn segment_name(generation: u64) -> String {
    format!("{PREFIX}{generation:016x}{SUFFIX}")
}

/// The generations of the segments in `dir`, ascending.
pub(super) fn generations(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let name = item?.file_name();
        let Some(hex) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.strip_suffix(SUFFIX))
        else {
            continue;
        };
        if let Ok(generation) = u64::from_str_radix(hex, 16) {
            out.push(generation);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Reads a whole segment.
pub(super) fn read_segment(dir: &Path, generation: u64) -> io::Result<Vec<u8>> {
    std::fs::read(dir.join(segment_name(generation)))
}

/// Deletes the segments older than `generation` (already checkpointed). Best effort: a
/// segment left behind is skipped by the next start, which knows the checkpoint, and
/// deleted then.
pub(super) fn remove_before(dir: &Path, generation: u64) {
    let Ok(all) = generations(dir) else { return };
    for old in all.into_iter().filter(|g| *g < generation) {
        if let Err(err) = std::fs::remove_file(dir.join(segment_name(old))) {
            tracing::warn!(error = %err, generation = old, "cannot delete a checkpointed inbox log segment");
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A place in the log: a segment and a byte offset in it, always at a record boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Position {
    pub generation: u64,
    pub offset: u64,
}

/// The segment being written.
pub(super) struct Segment {
    dir: PathBuf,
    generation: u64,
    file: File,
    len: u64,
}

impl Segment {
    /// Creates segment `generation` in `dir` (which must exist) and makes its name durable.
    pub(super) fn create(dir: &Path, generation: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(dir.join(segment_name(generation)))?;
        sync_dir(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            generation,
            file,
            len: 0,
        })
    }

    /// Where the next record will be written.
    pub(super) fn position(&self) -> Position {
        Position {
            generation: self.generation,
            offset: self.len,
        }
    }

    /// Writes `bytes` and waits until they are on disk. On failure the segment is cut back
    /// to what it held before, so that a record nobody was told about cannot come back at
    /// the next start; if even that fails, the error says so and the caller must stop
    /// writing to this log.
    pub(super) fn append_durably(&mut self, bytes: &[u8]) -> Result<(), AppendError> {
        let written = self
            .file
            .write_all(bytes)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(err) => match self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data())
            {
                Ok(()) => Err(AppendError::Failed(err)),
                Err(cut) => Err(AppendError::Broken(format!("{err}; cutting back: {cut}"))),
            },
        }
    }

    /// Starts the next segment; the records written from now on go there.
    pub(super) fn rotate(&mut self) -> io::Result<u64> {
        *self = Self::create(&self.dir, self.generation + 1)?;
        Ok(self.generation)
    }
}

#[derive(Debug)]
pub(super) enum AppendError {
    /// Nothing of the batch is in the log.
    Failed(io::Error),
    /// The log is in an unknown state.
    Broken(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_stop_at_a_torn_or_corrupt_frame() {
        let mut buf = Vec::new();
        frame(&mut buf, |b| b.extend_from_slice(b"one"));
        frame(&mut buf, |b| b.extend_from_slice(b""));
        frame(&mut buf, |b| b.extend_from_slice(b"three"));
        assert_eq!(records(&buf), vec![&b"one"[..], b"", b"three"]);

        // A batch whose sync never returned may have left any prefix of itself.
        for cut in 0..buf.len() {
            let whole = records(&buf[..cut]).len();
            assert!(whole <= 3);
        }
        assert_eq!(records(&buf[..buf.len() - 1]).len(), 2);

        let mut corrupt = buf.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert_eq!(records(&corrupt), vec![&b"one"[..], b""]);
        assert_eq!(records(&[0xff; 7]).len(), 0);
    }

    #[test]
    fn segments_rotate_and_old_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 1).unwrap();
        let mut buf = Vec::new();
        frame(&mut buf, |b| b.push(7));
        seg.append_durably(&buf).unwrap();
        assert_eq!(seg.rotate().unwrap(), 2);
        seg.append_durably(&buf).unwrap();
        assert_eq!(generations(dir.path()).unwrap(), vec![1, 2]);
        assert_eq!(
            records(&read_segment(dir.path(), 1).unwrap()),
            vec![&[7u8][..]]
        );
        remove_before(dir.path(), 2);
        assert_eq!(generations(dir.path()).unwrap(), vec![2]);
        // Creating a generation that exists is refused: a segment is never written twice.
        assert!(Segment::create(dir.path(), 2).is_err());
    }
}
