//! `kmsg`: new kernel log records from `/dev/kmsg`.
//!
//! The device is opened `O_NONBLOCK` and positioned at the end (`SEEK_END`), so a monitor sees
//! only records logged after it started. Every `read` returns exactly one record,
//! `PRI,SEQ,USEC,FLAGS;MESSAGE\n` followed by optional ` KEY=VALUE` lines; it is shown like
//! `dmesg` does: `[    12.345678] MESSAGE` (the kernel already escapes unprintable bytes and
//! embedded newlines as `\xNN`, so a record is always one line).
//!
//! The backlog is the kernel's ring buffer: when the monitor reads too slowly the kernel
//! overwrites the oldest records and the next `read` fails with `EPIPE`. That is not an error:
//! the loss is counted from the gap in sequence numbers and announced with one
//! `[tuppence: N lines dropped]` line.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use rustix::fs::{Mode, OFlags, SeekFrom};

use super::{Batch, EventSource, SourceError, dropped_line, push_timestamp};

/// Big enough for any record: the kernel caps a `/dev/kmsg` record at 8 KiB
/// (`CONSOLE_EXT_LOG_MAX`) and fails smaller reads with `EINVAL`.
const RECORD_BUF: usize = 16 * 1024;

/// A reader of new kernel log records.
#[derive(Debug)]
pub struct Kmsg {
    fd: OwnedFd,
    buf: Vec<u8>,
    last_seq: Option<u64>,
    dropped: u64,
    unannounced: u64,
}

impl Kmsg {
    /// Opens `/dev/kmsg` at its end. Fails when the device is missing or not readable (e.g.
    /// `kernel.dmesg_restrict` for a non-root agent).
    pub fn open() -> Result<Kmsg, SourceError> {
        Kmsg::open_path(Path::new("/dev/kmsg"))
    }

    /// Opens another device with `/dev/kmsg` semantics (for tests).
    pub fn open_path(path: &Path) -> Result<Kmsg, SourceError> {
        let what = || format!("opening {}", path.display());
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| SourceError::io(what(), e))?;
        rustix::fs::seek(&fd, SeekFrom::End(0)).map_err(|e| SourceError::io(what(), e))?;
        Ok(Kmsg {
            fd,
            buf: vec![0; RECORD_BUF],
            last_seq: None,
            dropped: 0,
            unannounced: 0,
        })
    }

    fn note_seq(&mut self, seq: u64) {
        if let Some(last) = self.last_seq
            && seq > last + 1
        {
            let lost = seq - last - 1;
            self.dropped += lost;
            self.unannounced += lost;
        }
        self.last_seq = Some(seq);
    }
}

/// Turns one raw record into a display line; `None` if it does not look like a record.
fn format_record(record: &[u8]) -> Option<(u64, Vec<u8>)> {
    let semi = record.iter().position(|&b| b == b';')?;
    let mut header = record[..semi].split(|&b| b == b',');
    let _prio = header.next()?;
    let seq: u64 = std::str::from_utf8(header.next()?).ok()?.parse().ok()?;
    let micros: u64 = std::str::from_utf8(header.next()?).ok()?.parse().ok()?;
    let body = &record[semi + 1..];
    let message = match body.iter().position(|&b| b == b'\n') {
        Some(end) => &body[..end],
        None => body,
    };
    let mut line = Vec::with_capacity(message.len() + 16);
    push_timestamp(&mut line, micros);
    line.extend_from_slice(message);
    line.push(b'\n');
    Some((seq, line))
}

impl EventSource for Kmsg {
    fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.fd.as_fd())
    }

    fn poll_interval(&self) -> Option<Duration> {
        None
    }

    /// Reads up to `max_lines` records (one more line when a drop notice is due).
    fn read_new(&mut self, max_lines: usize) -> Result<Batch, SourceError> {
        let mut batch = Batch::default();
        while batch.lines.len() < max_lines {
            let n = match rustix::io::read(&self.fd, &mut self.buf) {
                Ok(0) | Err(rustix::io::Errno::AGAIN) => {
                    batch.drained = true;
                    break;
                }
                Ok(n) => n,
                // Records were overwritten before we read them; the sequence gap of the next
                // record tells how many.
                Err(rustix::io::Errno::PIPE | rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(SourceError::io("reading /dev/kmsg", e)),
            };
            let Some((seq, line)) = format_record(&self.buf[..n]) else {
                continue;
            };
            self.note_seq(seq);
            if self.unannounced > 0 {
                batch.lines.push(dropped_line(self.unannounced));
                self.unannounced = 0;
            }
            batch.lines.push(Bytes::from(line));
        }
        Ok(batch)
    }

    fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_gaps_count_as_dropped() {
        let mut k = Kmsg::open_path(Path::new("/dev/null")).expect("open /dev/null");
        k.note_seq(5);
        k.note_seq(6);
        k.note_seq(10);
        assert_eq!(k.dropped(), 3);
        assert_eq!(k.unannounced, 3);
        // /dev/null reads as end of file: nothing, drained.
        let batch = k.read_new(10).expect("read");
        assert!(batch.lines.is_empty() && batch.drained);
    }

    #[test]
    fn records_format_like_dmesg() {
        let (seq, line) =
            format_record(b"6,1234,5000123,-;hello world\n SUBSYSTEM=x\n").expect("record");
        assert_eq!(seq, 1234);
        assert_eq!(line, b"[    5.000123] hello world\n");
        let (_, line) = format_record(b"4,1,123456789012,c,more;x").expect("record");
        assert_eq!(line, b"[123456.789012] x\n");
        assert!(format_record(b"garbage").is_none());
        assert!(format_record(b"6,x,1;m\n").is_none());
    }
}
