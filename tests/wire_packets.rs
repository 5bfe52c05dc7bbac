//! Every packet type, written out byte by byte from the spec (ARCHITECTURE.md, "Link
//! protocol") in both dialects: decoding gives the fields, encoding gives the bytes.
//!
//! Header layouts, all big-endian, `len` counting the 8 header bytes:
//!   4.0: type | reserved | len | cid | xid
//!   3.0: type | pad      | cid | xid | len
//! Most cases use cid 0x0102 and xid 0x0304 so a swapped or misplaced word shows.

mod common;

use bytes::{Bytes, BytesMut};
use common::{b, decode_one, encode, hex, to_hex};
use tuppence::wire::{
    CommandRequest, Dialect, Frame, Hello, MAX_PACKET_LEN, Packet, PacketType, ProcInfoField,
    Sender, decode_frame, field,
};

use Dialect::{Legacy3, V4};

struct Case {
    name: &'static str,
    dialect: Dialect,
    sender: Sender,
    cid: u16,
    xid: u16,
    packet: Packet,
    hex: &'static str,
}

fn command_with_env() -> Packet {
    Packet::Command(CommandRequest {
        user: b("root"),
        command: b("ls"),
        timeout: 30,
        request_tty: 1,
        reserved: [0, 0],
        env: vec![b("A=1"), b("B=x y")],
    })
}

fn command_plain() -> Packet {
    Packet::Command(CommandRequest {
        user: Bytes::new(),
        command: b("true"),
        timeout: 0,
        request_tty: 0,
        reserved: [7, 0x8000_0000],
        env: vec![],
    })
}

fn procinfo_response() -> Packet {
    Packet::ProcInfoResponse {
        fields: vec![
            ProcInfoField::u32(field::PID, 0x1092),
            ProcInfoField {
                kind: field::STATE,
                value: b("R"),
            },
            ProcInfoField {
                kind: field::COMM,
                value: b("sh"),
            },
        ],
    }
}

fn cases() -> Vec<Case> {
    use Sender::{Client, Server};
    let c = |name, dialect, sender, cid, xid, packet, hex| Case {
        name,
        dialect,
        sender,
        cid,
        xid,
        packet,
        hex,
    };
    vec![
        // --- hello ---
        c(
            "hello from client",
            V4,
            Client,
            0,
            0,
            Packet::Hello(Hello {
                major: 4,
                minor: 0,
                keepalive: 0xffff,
            }),
            "68 00 000c 0000 0000  04 00 ffff",
        ),
        c(
            "hello from client",
            Legacy3,
            Client,
            0,
            0,
            Packet::Hello(Hello {
                major: 3,
                minor: 0,
                keepalive: 0xffff,
            }),
            "68 00 0000 0000 000c  03 00 ffff",
        ),
        c(
            "hello reply",
            V4,
            Server,
            0x0102,
            0,
            Packet::Hello(Hello {
                major: 4,
                minor: 1,
                keepalive: 60,
            }),
            "68 00 000c 0102 0000  04 01 003c",
        ),
        c(
            "hello reply, keepalive off",
            Legacy3,
            Server,
            0x0102,
            0,
            Packet::Hello(Hello {
                major: 3,
                minor: 0,
                keepalive: 0,
            }),
            "68 00 0102 0000 000c  03 00 0000",
        ),
        // --- command ---
        c(
            "command with tty and env",
            V4,
            Client,
            0x0102,
            0x0304,
            command_with_env(),
            "63 00 002a 0102 0304  726f6f7400 6c7300 0000001e 00000001 00000000 00000000
             413d3100 423d78207900",
        ),
        c(
            "command with tty and env",
            Legacy3,
            Client,
            0x0102,
            0x0304,
            command_with_env(),
            "63 00 0102 0304 002a  726f6f7400 6c7300 0000001e 00000001 00000000 00000000
             413d3100 423d78207900",
        ),
        c(
            "command, empty user, reserved words kept",
            V4,
            Client,
            0x0102,
            0x0304,
            command_plain(),
            "63 00 001e 0102 0304  00 7472756500 00000000 00000000 00000007 80000000",
        ),
        c(
            "command, empty user, reserved words kept",
            Legacy3,
            Client,
            0x0102,
            0x0304,
            command_plain(),
            "63 00 0102 0304 001e  00 7472756500 00000000 00000000 00000007 80000000",
        ),
        // --- inject / extract ---
        c(
            "inject 0644",
            V4,
            Client,
            0x0102,
            0x0304,
            Packet::Inject {
                user: b("u"),
                path: b("/f"),
                mode: 0o644,
            },
            "69 00 0011 0102 0304  7500 2f6600 000001a4",
        ),
        c(
            "inject 0644",
            Legacy3,
            Client,
            0x0102,
            0x0304,
            Packet::Inject {
                user: b("u"),
                path: b("/f"),
                mode: 0o644,
            },
            "69 00 0102 0304 0011  7500 2f6600 000001a4",
        ),
        c(
            "extract",
            V4,
            Client,
            0x0102,
            0x0304,
            Packet::Extract {
                user: b("u"),
                path: b("/f"),
            },
            "65 00 000d 0102 0304  7500 2f6600",
        ),
        c(
            "extract",
            Legacy3,
            Client,
            0x0102,
            0x0304,
            Packet::Extract {
                user: b("u"),
                path: b("/f"),
            },
            "65 00 0102 0304 000d  7500 2f6600",
        ),
        // --- quit ---
        c(
            "quit",
            V4,
            Client,
            0x0102,
            0x0304,
            Packet::Quit,
            "71 00 0008 0102 0304",
        ),
        c(
            "quit",
            Legacy3,
            Client,
            0x0102,
            0x0304,
            Packet::Quit,
            "71 00 0102 0304 0008",
        ),
        // --- interrupt ---
        c(
            "interrupt TERM",
            V4,
            Client,
            0x0102,
            0x0304,
            Packet::Interrupt { signal: b("TERM") },
            "49 00 000d 0102 0304  5445524d00",
        ),
        c(
            "interrupt, empty signal name",
            V4,
            Client,
            0x0102,
            0x0304,
            Packet::Interrupt {
                signal: Bytes::new(),
            },
            "49 00 0009 0102 0304  00",
        ),
        c(
            "interrupt (3.0: no payload)",
            Legacy3,
            Client,
            0x0102,
            0x0304,
            Packet::Interrupt {
                signal: Bytes::new(),
            },
            "49 00 0102 0304 0008",
        ),
        // --- monitor (4.0 only) ---
        c(
            "monitor kmsg",
            V4,
            Client,
            0x0102,
            0x0304,
            Packet::Monitor { source: b("kmsg") },
            "4f 00 000d 0102 0304  6b6d736700",
        ),
        // --- status words ---
        c(
            "major 14",
            V4,
            Server,
            0x0102,
            0x0304,
            Packet::Major(14),
            "4d 00 000c 0102 0304  0000000e",
        ),
        c(
            "major 14",
            Legacy3,
            Server,
            0x0102,
            0x0304,
            Packet::Major(14),
            "4d 00 0102 0304 000c  0000000e",
        ),
        c(
            "minor 0xfffffffe",
            V4,
            Server,
            0x0102,
            0x0304,
            Packet::Minor(0xffff_fffe),
            "6d 00 000c 0102 0304  fffffffe",
        ),
        c(
            "minor 0xfffffffe",
            Legacy3,
            Server,
            0x0102,
            0x0304,
            Packet::Minor(0xffff_fffe),
            "6d 00 0102 0304 000c  fffffffe",
        ),
        c(
            "timeout",
            V4,
            Server,
            0x0102,
            0x0304,
            Packet::Timeout,
            "54 00 0008 0102 0304",
        ),
        c(
            "timeout",
            Legacy3,
            Server,
            0x0102,
            0x0304,
            Packet::Timeout,
            "54 00 0102 0304 0008",
        ),
        // --- channel data / eof ---
        c(
            "data ch 2, binary payload with NULs",
            V4,
            Server,
            0x0102,
            0x0304,
            Packet::Data {
                channel: 2,
                data: Bytes::from_static(&[0x00, 0xff, 0x00, 0x0a, 0x80]),
            },
            "44 00 000f 0102 0304  0002 00ff000a80",
        ),
        c(
            "data ch 2, binary payload with NULs",
            Legacy3,
            Server,
            0x0102,
            0x0304,
            Packet::Data {
                channel: 2,
                data: Bytes::from_static(&[0x00, 0xff, 0x00, 0x0a, 0x80]),
            },
            "44 00 0102 0304 000f  0002 00ff000a80",
        ),
        c(
            "data ch 0, empty",
            V4,
            Client,
            0x0102,
            0x0304,
            Packet::Data {
                channel: 0,
                data: Bytes::new(),
            },
            "44 00 000a 0102 0304  0000",
        ),
        c(
            "data ch 0xfffe",
            Legacy3,
            Client,
            0x0102,
            0x0304,
            Packet::Data {
                channel: 0xfffe,
                data: b("x"),
            },
            "44 00 0102 0304 000b  fffe 78",
        ),
        c(
            "eof ch 1 is 'X' in 4.0",
            V4,
            Server,
            0x0102,
            0x0304,
            Packet::Eof { channel: 1 },
            "58 00 000a 0102 0304  0001",
        ),
        c(
            "eof ch 1 is 'E' in 3.0",
            Legacy3,
            Server,
            0x0102,
            0x0304,
            Packet::Eof { channel: 1 },
            "45 00 0102 0304 000a  0001",
        ),
        // --- keepalive ---
        c(
            "keepalive",
            V4,
            Server,
            0x0102,
            0,
            Packet::Keepalive,
            "4b 00 0008 0102 0000",
        ),
        c(
            "keepalive",
            Legacy3,
            Client,
            0x0102,
            0,
            Packet::Keepalive,
            "4b 00 0102 0000 0008",
        ),
        // --- settle (4.0 only) ---
        c(
            "settle 0xdeadbeef",
            V4,
            Client,
            0x0102,
            0x0304,
            Packet::Settle { seq: 0xdead_beef },
            "53 00 000c 0102 0304  deadbeef",
        ),
        c(
            "settle answer",
            V4,
            Server,
            0x0102,
            0x0304,
            Packet::Settle { seq: 1 },
            "53 00 000c 0102 0304  00000001",
        ),
        // --- procinfo (4.0 only) ---
        c(
            "procinfo query pid+state+comm",
            V4,
            Client,
            0x0102,
            0x0304,
            Packet::ProcInfoQuery {
                mask: (1 << field::PID) | (1 << field::STATE) | (1 << field::COMM),
            },
            "50 00 000c 0102 0304  0000080a",
        ),
        c(
            "procinfo response pid, state, comm",
            V4,
            Server,
            0x0102,
            0x0304,
            procinfo_response(),
            "50 00 0017 0102 0304  01 04 00001092  03 01 52  0b 02 7368  00 00",
        ),
        c(
            "procinfo response, no fields",
            V4,
            Server,
            0x0102,
            0x0304,
            Packet::ProcInfoResponse { fields: vec![] },
            "50 00 000a 0102 0304  0000",
        ),
        c(
            "procinfo response, empty value",
            V4,
            Server,
            0x0102,
            0x0304,
            Packet::ProcInfoResponse {
                fields: vec![ProcInfoField {
                    kind: 200,
                    value: Bytes::new(),
                }],
            },
            "50 00 000c 0102 0304  c8 00  00 00",
        ),
    ]
}

#[test]
fn every_packet_type_is_covered_in_every_dialect_it_exists_in() {
    let cases = cases();
    for t in PacketType::ALL {
        for d in common::DIALECTS {
            let covered = cases
                .iter()
                .any(|c| c.dialect == d && c.packet.packet_type() == t);
            assert_eq!(
                covered,
                t.exists_in(d),
                "{t:?} in {d}: covered {covered}, exists {}",
                t.exists_in(d)
            );
        }
    }
}

#[test]
fn hand_written_bytes_decode_to_the_fields() {
    for c in cases() {
        let bytes = hex(c.hex);
        let frame = decode_one(c.dialect, c.sender, &bytes)
            .unwrap_or_else(|e| panic!("{} ({}): {e}", c.name, c.dialect));
        assert_eq!(
            frame,
            Frame {
                cid: c.cid,
                xid: c.xid,
                packet: c.packet.clone()
            },
            "{} ({})",
            c.name,
            c.dialect
        );
    }
}

#[test]
fn fields_encode_to_the_hand_written_bytes() {
    for c in cases() {
        let want = hex(c.hex);
        let got = encode(&c.packet, c.dialect, c.cid, c.xid);
        assert_eq!(to_hex(&got), to_hex(&want), "{} ({})", c.name, c.dialect);
        assert_eq!(c.packet.encoded_len(c.dialect), want.len(), "{}", c.name);
        assert_eq!(
            c.packet.to_bytes(c.dialect, c.cid, c.xid).unwrap(),
            want,
            "{}",
            c.name
        );
    }
}

#[test]
fn encode_appends_after_existing_bytes() {
    let mut out = BytesMut::from(&b"prefix"[..]);
    Packet::Keepalive.encode(V4, 1, 2, &mut out).unwrap();
    Packet::Eof { channel: 0 }
        .encode(Legacy3, 1, 2, &mut out)
        .unwrap();
    assert_eq!(
        to_hex(&out),
        to_hex(
            &[
                &b"prefix"[..],
                &hex("4b 00 0008 0001 0002  45 00 0001 0002 000a 0000")
            ]
            .concat()
        )
    );
}

#[test]
fn only_procinfo_depends_on_the_sender() {
    for c in cases() {
        let other = match c.sender {
            Sender::Client => Sender::Server,
            Sender::Server => Sender::Client,
        };
        let r = decode_one(c.dialect, other, &hex(c.hex));
        if c.packet.packet_type() == PacketType::ProcInfo {
            // A 4-byte mask read as TLVs, or TLVs read as a mask, cannot give the same packet.
            assert_ne!(r.as_ref().map(|f| &f.packet), Ok(&c.packet), "{}", c.name);
        } else {
            assert_eq!(r.unwrap().packet, c.packet, "{}", c.name);
        }
    }
}

#[test]
fn procinfo_query_from_server_side_is_read_as_tlvs() {
    // The same bytes as the query above, read as a response: TLV type 0 length 0 ends the
    // list after two bytes, so the rest is trailing.
    let r = decode_one(V4, Sender::Server, &hex("50 00 000c 0102 0304  0000080a"));
    let e = r.unwrap_err();
    assert!(e.to_string().contains("2 unexpected bytes"), "{e}");
}

#[test]
fn procinfo_field_helpers() {
    let f = ProcInfoField::u32(field::PID, 0x0102_0304);
    assert_eq!(f.value.as_ref(), &[1, 2, 3, 4]);
    assert_eq!(f.as_u32(), Some(0x0102_0304));
    let state = ProcInfoField {
        kind: field::STATE,
        value: b("S"),
    };
    assert_eq!(state.as_u32(), None);
    assert_eq!(field::mask_bit(field::PID), 0b10);
    assert_eq!(field::mask_bit(field::COMM), 1 << 11);
    assert_eq!(field::mask_bit(31), 1 << 31);
    assert_eq!(field::mask_bit(32), 0);
    assert_eq!(field::mask_bit(255), 0);
}

#[test]
fn request_tty_is_the_least_significant_bit() {
    let cmd = |request_tty| CommandRequest {
        user: b("u"),
        command: b("c"),
        timeout: 0,
        request_tty,
        reserved: [0, 0],
        env: vec![],
    };
    assert!(!cmd(0).wants_tty());
    assert!(cmd(1).wants_tty());
    assert!(!cmd(2).wants_tty());
    assert!(cmd(0xffff_ffff).wants_tty());
}

#[test]
fn largest_data_packet_in_both_dialects() {
    // 65535 bytes in all: 8 header + 2 channel + 65525 data.
    let data: Vec<u8> = (0..65525u32).map(|i| (i % 251) as u8).collect();
    for (d, head) in [
        (V4, "44 00 ffff 0102 0304  0003"),
        (Legacy3, "44 00 0102 0304 ffff  0003"),
    ] {
        let mut bytes = hex(head);
        bytes.extend_from_slice(&data);
        assert_eq!(bytes.len(), MAX_PACKET_LEN);
        let packet = Packet::Data {
            channel: 3,
            data: Bytes::from(data.clone()),
        };
        assert_eq!(
            decode_one(d, Sender::Server, &bytes).unwrap().packet,
            packet
        );
        assert_eq!(encode(&packet, d, 0x0102, 0x0304), bytes);
    }
}

#[test]
fn decoded_payloads_are_slices_of_the_input_buffer() {
    // A data packet, then a command with user "u", command "c" and four zero words.
    let mut buf = BytesMut::from(
        &hex("44 00 000f 0102 0304  0002 00ff000a80
             63 00 001c 0102 0304  7500 6300 00000000 00000000 00000000 00000000")[..],
    );
    let base = buf.as_ptr() as usize;
    let end = base + buf.len();

    let data = decode_frame(V4, Sender::Client, &mut buf, MAX_PACKET_LEN)
        .unwrap()
        .unwrap();
    let Packet::Data { data, .. } = data.packet else {
        panic!("not data: {data:?}")
    };
    assert_eq!(data.as_ptr() as usize, base + 10, "data payload was copied");

    let cmd = decode_frame(V4, Sender::Client, &mut buf, MAX_PACKET_LEN)
        .unwrap()
        .unwrap();
    let Packet::Command(cmd) = cmd.packet else {
        panic!("not a command: {cmd:?}")
    };
    for s in [&cmd.user, &cmd.command] {
        let p = s.as_ptr() as usize;
        assert!((base..end).contains(&p), "string was copied");
    }
    assert_eq!(cmd.user, b("u"));
    assert_eq!(cmd.command, b("c"));
    assert!(buf.is_empty());
}

#[test]
fn type_codes_map_both_ways_for_every_byte() {
    for d in common::DIALECTS {
        let mut known = 0;
        for code in 0..=255u8 {
            let want = PacketType::ALL
                .into_iter()
                .find(|t| t.exists_in(d) && t.code(d) == code);
            assert_eq!(PacketType::from_code(code, d), want, "{code:#04x} in {d}");
            known += usize::from(want.is_some());
        }
        assert_eq!(known, if d == V4 { 15 } else { 12 }, "{d}");
    }
    assert_eq!(PacketType::from_code(b'X', Legacy3), None);
    assert_eq!(PacketType::from_code(b'E', V4), None);
    assert_eq!(PacketType::from_code(b'E', Legacy3), Some(PacketType::Eof));
}
