//! The client's wait for the hello reply is bounded.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use tuppence::Machine;
use tuppence::link::{Client, ClientConfig, ClientEvent, Command, LinkError, Outcome};

#[test]
fn no_hello_reply_fails_after_the_handshake_timeout() {
    let now = Instant::now();
    let config = ClientConfig {
        handshake_timeout: Some(Duration::from_secs(5)),
        ..ClientConfig::default()
    };
    let mut client = Client::new(config, now);
    let xid = client.run(Command::new("true")).unwrap();
    client.poll_transmit(now, &mut BytesMut::new());
    assert_eq!(client.poll_timeout(), Some(now + Duration::from_secs(5)));
    client.handle_timeout(now + Duration::from_secs(4));
    assert!(client.error().is_none());
    client.handle_timeout(now + Duration::from_secs(5));
    let err = LinkError::HandshakeTimeout(Duration::from_secs(5));
    assert_eq!(client.error(), Some(&err));
    assert_eq!(
        client.poll_event(),
        Some(ClientEvent::Finished {
            xid,
            outcome: Outcome::LinkLost(err)
        })
    );
}

#[test]
fn no_handshake_timeout_waits_forever() {
    let now = Instant::now();
    let config = ClientConfig {
        handshake_timeout: None,
        ..ClientConfig::default()
    };
    let client = Client::new(config, now);
    assert_eq!(client.poll_timeout(), None);
}
