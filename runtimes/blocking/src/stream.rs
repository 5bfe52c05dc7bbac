//! What the blocking adapter needs from a transport: a byte stream that can be split into
//! a reading and a writing handle, and whose reads can time out (for keepalive timers).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// A byte stream the blocking session can drive from its reader thread and its callers.
pub trait Stream: Read + Write + Send + 'static {
    /// A second handle on the same stream (one reads, one writes).
    fn try_clone_stream(&self) -> io::Result<Self>
    where
        Self: Sized;
    /// Bounds how long a read waits; `None` = forever. A timed-out read returns
    /// `WouldBlock` or `TimedOut`, both of which the session treats as "no data yet".
    fn set_read_timeout_for(&mut self, timeout: Option<Duration>) -> io::Result<()>;
}

impl Stream for UnixStream {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn set_read_timeout_for(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout.map(|t| t.max(Duration::from_millis(1))))
    }
}

impl Stream for TcpStream {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn set_read_timeout_for(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout.map(|t| t.max(Duration::from_millis(1))))
    }
}

/// serial2 ports wait up to their read timeout and then return `TimedOut`; a very long
/// timeout stands for "forever".
impl Stream for serial2::SerialPort {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn set_read_timeout_for(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout.unwrap_or(Duration::from_secs(3600)))
    }
}
