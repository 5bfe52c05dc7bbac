//! Queues bounded in bytes also count what each item costs in memory, so that many tiny
//! items cannot hold far more than the bound says.

use std::time::Instant;

use bytes::Bytes;
use tuppence::link::{Client, ClientConfig, Command, Limits, UsageError};
use tuppence::wire::Packet;

#[test]
fn tiny_requests_held_until_the_hello_reply_are_bounded_by_memory() {
    let now = Instant::now();
    let limits = Limits::default();
    let mut client = Client::new(ClientConfig::default(), now);
    let xid = client.run(Command::new("cat")).unwrap();
    let mut held = 0usize;
    loop {
        match client.send_stdin(xid, Bytes::from_static(b"x")) {
            Ok(()) => held += 1,
            Err(UsageError::QueueFull { .. }) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(held < 1_000_000, "the queue never filled");
    }
    let each = std::mem::size_of::<(u16, Packet)>();
    assert!(
        held * each <= limits.max_transmit_buffer + 2 * each,
        "{held} one-byte writes held, {} bytes of queue slots (limit {})",
        held * each,
        limits.max_transmit_buffer
    );
}
