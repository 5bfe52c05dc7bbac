//! Writing many buffers with as few system calls as the writer allows.
//!
//! `std::io::Write::write_all_vectored` is not stable; this is its loop. An extract's data
//! arrives as one `Bytes` per packet (32 KiB); writing each with its own `write` cost a
//! system call per packet, where one `writev` takes every piece that is ready.

use std::io::{self, IoSlice, Write};

/// Writes every byte of `bufs`, in order: a partial write resumes where it stopped (in the
/// middle of a buffer if need be), `EINTR` is retried, a write of nothing is `WriteZero`.
/// The writer's `write_vectored` decides how much one call takes (std's files and sockets
/// take up to `IOV_MAX` buffers in one `writev`).
pub fn write_all_vectored<W: Write + ?Sized>(
    w: &mut W,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    // Leading empty buffers would make a writer that looks at the first one only write 0.
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                let left: usize = bufs.iter().map(|b| b.len()).sum();
                if n > left {
                    return Err(io::Error::other(
                        "the writer claims more bytes than it was given",
                    ));
                }
                IoSlice::advance_slices(&mut bufs, n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    /// Takes at most `most` bytes per call, from several buffers at once, and fails every
    /// third call with `EINTR`.
    struct Stingy {
        got: Vec<u8>,
        most: usize,
        calls: usize,
    }

    impl Write for Stingy {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(3) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.most - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.most {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_and_eintr_resume_in_order() {
        let pieces: Vec<Vec<u8>> = (0..20u8)
            .map(|i| vec![i; usize::from(i) * 7 % 23])
            .collect();
        let want: Vec<u8> = pieces.concat();
        for most in [1, 5, 16, 1000] {
            let mut w = Stingy {
                got: Vec::new(),
                most,
                calls: 0,
            };
            let mut iov: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
            write_all_vectored(&mut w, &mut iov).unwrap();
            assert_eq!(w.got, want, "at most {most} per call");
        }
    }

    #[test]
    fn one_call_takes_every_ready_piece() {
        let pieces = [vec![1u8; 10], vec![2u8; 10], vec![3u8; 10]];
        let mut w = Stingy {
            got: Vec::new(),
            most: usize::MAX,
            calls: 0,
        };
        let mut iov: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
        write_all_vectored(&mut w, &mut iov).unwrap();
        assert_eq!(w.calls, 1);
        assert_eq!(w.got.len(), 30);
    }

    #[test]
    fn a_writer_that_takes_nothing_is_an_error() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Ok(0)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut iov = [IoSlice::new(b""), IoSlice::new(b"x")];
        let e = write_all_vectored(&mut Full, &mut iov).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
        // Nothing to write is done at once.
        write_all_vectored(&mut Full, &mut []).unwrap();
    }
}
