//! Driving a single client connection to completion on the calling thread.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;

use tuppence::link::{Client, ClientEvent};

use crate::{EventLoop, LinkIo, LinkIoError};

/// What the event callback wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Flush what is queued and return.
    Stop,
}

#[derive(Debug, thiserror::Error)]
pub enum RunClientError {
    #[error(transparent)]
    Link(#[from] LinkIoError),
    #[error("event loop: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs `client` over a non-blocking `io`, handing every event to `on_event` (which may
/// call intents on the client) until it returns [`Flow::Stop`] or the connection fails.
/// Returns the client so its final state can be inspected.
pub fn run_client<T, F>(io: T, client: Client, mut on_event: F) -> Result<Client, RunClientError>
where
    T: Read + Write + AsRawFd,
    F: FnMut(&mut Client, ClientEvent) -> Flow,
{
    let mut driver: EventLoop<T, Client> = EventLoop::new()?;
    let id = driver.add(LinkIo::new(io, client), ())?;
    driver.flush();
    loop {
        driver.wait(None)?;
        let mut stop = false;
        if let Some(conn) = driver.get_mut(id) {
            let client = conn.link.machine_mut();
            while let Some(ev) = client.poll_event() {
                if on_event(client, ev) == Flow::Stop {
                    stop = true;
                    break;
                }
            }
        }
        driver.flush();
        if stop {
            let mut conn = driver
                .remove(id)
                .ok_or(std::io::Error::other("connection vanished"))?;
            let _ = conn
                .link
                .flush_blocking(std::time::Instant::now(), std::time::Duration::from_secs(5));
            return Ok(conn.link.into_parts().1);
        }
        if let Some(ended) = driver.take_ended().into_iter().next() {
            return Err(ended.error.into());
        }
    }
}
