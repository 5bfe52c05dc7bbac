//! 4.0 only: monitors and procinfo.

use bytes::Bytes;
use tuppence::Machine;
use tuppence::link::{
    ClientEvent, Command, Outcome, Server, ServerConfig, ServerEvent, UsageError,
};
use tuppence::wire::{Dialect, Hello, Packet, ProcInfoField, Sender, field};

use super::common;
use super::common::pair::{Pair, packet};
use super::support::*;

#[test]
fn monitor_data_settle_end() {
    let mut p = Pair::new(Dialect::V4);
    p.connect();
    let xid = p.client.monitor("agent").unwrap();
    p.drive();
    assert_eq!(
        p.take_server_events(),
        vec![ServerEvent::Monitor {
            xid,
            source: "agent".into()
        }]
    );
    p.server.output(xid, 0, Bytes::from_static(b"e1")).unwrap();
    p.drive();
    p.client.settle(xid, 7).unwrap();
    p.drive();
    assert_eq!(
        p.take_server_events(),
        vec![ServerEvent::Settle { xid, seq: 7 }]
    );
    p.client.end_monitor(xid).unwrap();
    assert!(matches!(
        p.client.end_monitor(xid),
        Err(UsageError::WrongState { .. })
    ));
    p.drive();
    assert_eq!(
        p.take_server_events(),
        vec![ServerEvent::MonitorEnd { xid }]
    );
    assert_eq!(
        p.transaction_events(),
        vec![
            ClientEvent::MonitorData {
                xid,
                data: "e1".into()
            },
            ClientEvent::MonitorData {
                xid,
                data: "event-7".into()
            },
            ClientEvent::Settled { xid, seq: 7 },
            finished(xid, Outcome::Completed),
        ]
    );
    assert_eq!(
        p.server_packets(xid),
        vec![
            d(0, b"e1"),
            d(0, b"event-7"),
            Packet::Settle { seq: 7 },
            x(0),
            Packet::Major(0),
            Packet::Minor(0)
        ]
    );
    assert!(p.agent.monitors.is_empty());
    // The client's end is `X` ch 0.
    let last = p.client_frames().pop().unwrap();
    assert_eq!((last.xid, last.packet), (xid, x(0)));
}

/// Settle and end in one read: the agent answers the settle before the machine ends
/// the monitor, so the client sees `Settled` and then `Finished`.
#[test]
fn monitor_end_follows_pending_settle() {
    let mut p = Pair::new(Dialect::V4);
    p.connect();
    let xid = p.client.monitor("agent").unwrap();
    p.client.settle(xid, 3).unwrap();
    p.client.end_monitor(xid).unwrap();
    p.drive();
    assert!(p.agent.errors.is_empty(), "{:?}", p.agent.errors);
    assert_eq!(
        p.transaction_events(),
        vec![
            ClientEvent::MonitorData {
                xid,
                data: "event-3".into()
            },
            ClientEvent::Settled { xid, seq: 3 },
            finished(xid, Outcome::Completed),
        ]
    );
    assert_eq!(
        p.server_packets(xid),
        vec![
            d(0, b"event-3"),
            Packet::Settle { seq: 3 },
            x(0),
            Packet::Major(0),
            Packet::Minor(0)
        ]
    );
}

/// Packets after the client's end of a monitor are late, even while the end's answer
/// waits for the agent to poll it.
#[test]
fn monitor_packets_after_end_are_late() {
    let now = std::time::Instant::now();
    let mut server = Server::new(ServerConfig::default(), now);
    let v = Dialect::V4;
    let bytes = [
        packet(
            v,
            0,
            0,
            Packet::Hello(Hello {
                major: 4,
                minor: 0,
                keepalive: 60,
            }),
        ),
        packet(
            v,
            1,
            9,
            Packet::Monitor {
                source: "agent".into(),
            },
        ),
        packet(v, 1, 9, x(0)),
        packet(v, 1, 9, Packet::Settle { seq: 1 }),
        packet(v, 1, 9, x(0)),
    ]
    .concat();
    assert_eq!(server.handle_bytes(now, &bytes), Ok(bytes.len()));
    assert_eq!(server.stats().unknown_xid_dropped, 2);
    let mut out = bytes::BytesMut::new();
    server.poll_transmit(now, &mut out);
    assert_eq!(
        out.len(),
        12,
        "only the hello reply before the events are polled"
    );
    let events: Vec<ServerEvent> = std::iter::from_fn(|| server.poll_event()).collect();
    assert_eq!(
        events[1..],
        [
            ServerEvent::Monitor {
                xid: 9,
                source: "agent".into()
            },
            ServerEvent::MonitorEnd { xid: 9 },
        ]
    );
    out.clear();
    server.poll_transmit(now, &mut out);
    let got: Vec<Packet> = common::pair::decode_all(v, Sender::Server, &out)
        .into_iter()
        .map(|f| f.packet)
        .collect();
    assert_eq!(got, vec![x(0), Packet::Major(0), Packet::Minor(0)]);
    assert!(!server.is_live(9));
}

#[test]
fn monitor_unknown_source_fails_with_2() {
    let mut p = Pair::new(Dialect::V4);
    p.connect();
    let xid = p.client.monitor("nosuch").unwrap();
    p.drive();
    assert_eq!(
        p.transaction_events(),
        vec![finished(xid, Outcome::Failed { errno: 2 })]
    );
    assert_eq!(p.server_packets(xid), vec![Packet::Major(2)]);
}

#[test]
fn monitor_and_procinfo_not_in_legacy3() {
    let mut p = Pair::new(Dialect::Legacy3);
    p.connect();
    assert_eq!(
        p.client.monitor("agent"),
        Err(UsageError::NotSupported {
            what: "monitor",
            dialect: Dialect::Legacy3
        })
    );
    assert_eq!(p.client.transactions(), 0);
    assert_eq!(p.client.transmit_buffered(), 0);
}

#[test]
fn procinfo_query_response() {
    let mut p = Pair::new(Dialect::V4);
    p.connect();
    let xid = p.client.run(Command::new("hold")).unwrap();
    p.drive();
    let mask = field::mask_bit(field::PID) | field::mask_bit(field::RSS_KIB);
    p.client.procinfo(xid, mask).unwrap();
    p.drive();
    assert_eq!(p.server_events[1], ServerEvent::ProcInfo { xid, mask });
    assert_eq!(
        p.transaction_events(),
        vec![ClientEvent::ProcInfo {
            xid,
            fields: vec![ProcInfoField::u32(field::PID, 4000 + u32::from(xid))]
        }]
    );
    assert_eq!(
        p.server_packets(xid),
        vec![Packet::ProcInfoResponse {
            fields: vec![ProcInfoField::u32(field::PID, 4000 + u32::from(xid))]
        }]
    );
    // Not on a transfer.
    let ex = p.client.extract("root", "/gen/1").unwrap();
    assert!(matches!(
        p.client.procinfo(ex, mask),
        Err(UsageError::WrongState { .. })
    ));
}
