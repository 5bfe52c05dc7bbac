//! Malformed input, one test per error kind, and the encoder's refusals.

mod common;

use bytes::{Bytes, BytesMut};
use common::{DIALECTS, b, decode_first, header, hex, raw_packet, to_hex};
use tuppence::wire::{
    CommandRequest, DEFAULT_SEND_PACKET_LEN, DecodeError, Decoder, Dialect, EncodeError, Frame,
    Header, MAX_CHUNK, MAX_ENV_ENTRIES, MAX_PACKET_LEN, MAX_PROCINFO_FIELDS, Packet, PayloadError,
    ProcInfoField, Sender, chunks, detect_dialect, encode_data,
};

use Dialect::{Legacy3, V4};

const KEEPALIVE_V4: &str = "4b 00 0008 0001 0000";

fn keepalive_frame() -> Frame {
    Frame {
        cid: 1,
        xid: 0,
        packet: Packet::Keepalive,
    }
}

/// Decodes one packet that must be rejected as `Malformed` and returns the payload error,
/// after checking the error's header, its message, and that the stream goes on.
fn malformed(dialect: Dialect, sender: Sender, kind: u8, payload: &[u8]) -> PayloadError {
    let mut bytes = raw_packet(dialect, kind, 0x0102, 0x0304, payload);
    bytes.extend(raw_packet(dialect, b'K', 0x0102, 0, &[]));
    let mut dec = Decoder::new(dialect, sender);
    dec.push(&bytes);
    let err = dec.next_frame().unwrap_err();
    let DecodeError::Malformed { header, error } = &err else {
        panic!("expected Malformed, got {err:?}");
    };
    assert_eq!(
        *header,
        Header {
            kind,
            len: u16::try_from(payload.len() + 8).unwrap(),
            cid: 0x0102,
            xid: 0x0304,
        }
    );
    assert!(!err.is_fatal());
    assert_eq!(err.header(), Some(header));
    let msg = err.to_string();
    assert!(
        msg.contains("cid 258") && msg.contains("xid 772"),
        "message lacks the ids: {msg}"
    );
    assert!(msg.contains(&error.to_string()), "{msg}");
    // The bad packet was consumed whole; the next one decodes.
    assert_eq!(
        dec.next_frame(),
        Ok(Some(Frame {
            cid: 0x0102,
            xid: 0,
            packet: Packet::Keepalive
        }))
    );
    assert_eq!(dec.buffered(), 0);
    error.clone()
}

fn assert_names_field(e: &PayloadError, field: &str) {
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("`{field}`")),
        "{msg:?} does not name `{field}`"
    );
}

// --------------------------------------------------------------------------- framing

#[test]
fn length_below_header_is_fatal_and_sticky() {
    for d in DIALECTS {
        for len in [0u16, 1, 7] {
            let mut dec = Decoder::new(d, Sender::Client);
            dec.push(&header(d, b'K', len, 1, 0));
            let err = dec.next_frame().unwrap_err();
            assert_eq!(err, DecodeError::LengthTooShort { len });
            assert!(err.is_fatal());
            assert_eq!(err.header(), None);
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("length {len}")) && msg.contains("8-byte header"),
                "{msg}"
            );
            // Sticky: a valid packet afterwards does not bring the stream back.
            dec.push(&hex(KEEPALIVE_V4));
            assert_eq!(dec.next_frame(), Err(err.clone()));
            assert_eq!(dec.next_frame(), Err(err));
        }
    }
}

#[test]
fn framing_errors_consume_nothing_in_decode_frame() {
    let bytes = header(V4, b'K', 3, 1, 0);
    let (r, buf) = decode_first(V4, Sender::Client, &bytes);
    assert_eq!(r, Err(DecodeError::LengthTooShort { len: 3 }));
    assert_eq!(&buf[..], &bytes[..]);
}

#[test]
fn length_above_the_configured_maximum_is_fatal_before_the_payload_arrives() {
    for d in DIALECTS {
        let mut dec = Decoder::new(d, Sender::Server).with_max_packet_len(DEFAULT_SEND_PACKET_LEN);
        // A packet of exactly the limit is fine.
        let ok = raw_packet(d, b'D', 1, 1, &vec![7; DEFAULT_SEND_PACKET_LEN - 8]);
        dec.push(&ok);
        assert!(matches!(
            dec.next_frame(),
            Ok(Some(Frame {
                packet: Packet::Data { .. },
                ..
            }))
        ));
        // One byte more is refused as soon as the header is in: nothing is buffered waiting.
        dec.push(&header(d, b'D', 32769, 1, 1));
        let err = dec.next_frame().unwrap_err();
        assert_eq!(
            err,
            DecodeError::LengthTooLong {
                len: 32769,
                max: 32768
            }
        );
        assert!(err.is_fatal());
        let msg = err.to_string();
        assert!(msg.contains("32769") && msg.contains("32768"), "{msg}");
        dec.push(&hex(KEEPALIVE_V4));
        assert_eq!(dec.next_frame(), Err(err));
    }
}

#[test]
fn max_packet_len_is_clamped_to_the_valid_range() {
    let mut dec = Decoder::new(V4, Sender::Server).with_max_packet_len(0);
    dec.push(&hex(KEEPALIVE_V4));
    assert_eq!(dec.next_frame(), Ok(Some(keepalive_frame())));
    dec.push(&hex("4d 00 000c 0001 0001 00000000"));
    assert_eq!(
        dec.next_frame(),
        Err(DecodeError::LengthTooLong { len: 12, max: 8 })
    );

    let mut dec = Decoder::new(V4, Sender::Server).with_max_packet_len(1 << 20);
    let big = raw_packet(V4, b'D', 1, 1, &vec![0; MAX_PACKET_LEN - 8]);
    dec.push(&big);
    assert!(dec.next_frame().unwrap().is_some());
}

#[test]
fn incomplete_packets_wait_and_report_what_they_need() {
    let bytes = hex("4d 00 000c 0102 0304 0000000e");
    let mut dec = Decoder::new(V4, Sender::Server);
    assert_eq!(dec.bytes_needed(), 8);
    for (i, byte) in bytes.iter().enumerate() {
        assert_eq!(dec.next_frame(), Ok(None), "after {i} bytes");
        let need = if i < 8 { 8 - i } else { 12 - i };
        assert_eq!(dec.bytes_needed(), need, "after {i} bytes");
        dec.push(std::slice::from_ref(byte));
        assert_eq!(dec.buffered(), i + 1);
    }
    assert_eq!(dec.bytes_needed(), 0);
    assert_eq!(dec.next_frame().unwrap().unwrap().packet, Packet::Major(14));
    assert_eq!(dec.bytes_needed(), 8);
}

#[test]
fn unknown_type_carries_the_header_and_the_stream_continues() {
    for d in DIALECTS {
        let mut bytes = raw_packet(d, b'z', 0x0102, 0x0304, &[0xaa, 0xbb]);
        bytes.extend(raw_packet(d, b'K', 1, 0, &[]));
        let mut dec = Decoder::new(d, Sender::Client);
        dec.push(&bytes);
        let err = dec.next_frame().unwrap_err();
        let header = Header {
            kind: b'z',
            len: 10,
            cid: 0x0102,
            xid: 0x0304,
        };
        assert_eq!(err, DecodeError::UnknownType { header });
        assert!(!err.is_fatal());
        assert_eq!(err.header(), Some(&header));
        assert_eq!(
            err.to_string(),
            "unknown packet type 'z' (cid 258, xid 772)"
        );
        assert_eq!(dec.next_frame(), Ok(Some(keepalive_frame())));
        assert_eq!(dec.buffered(), 0);
    }
}

#[test]
fn unprintable_unknown_type_is_shown_in_hex() {
    let (r, buf) = decode_first(V4, Sender::Client, &hex("00 00 0008 0005 0006"));
    let err = r.unwrap_err();
    assert_eq!(err.to_string(), "unknown packet type 0x00 (cid 5, xid 6)");
    assert!(buf.is_empty(), "the unknown packet is consumed");
}

#[test]
fn packets_of_the_other_dialect_are_unknown() {
    // 4.0's EOF and new packets do not exist in 3.0 ...
    for kind in [b'X', b'O', b'P', b'S'] {
        let bytes = raw_packet(Legacy3, kind, 1, 2, &hex("0000 0000"));
        for sender in [Sender::Client, Sender::Server] {
            let (r, _) = decode_first(Legacy3, sender, &bytes);
            assert!(
                matches!(r, Err(DecodeError::UnknownType { header }) if header.kind == kind),
                "{:?}",
                char::from(kind)
            );
        }
    }
    // ... and 3.0's EOF is not a 4.0 packet.
    let (r, _) = decode_first(V4, Sender::Server, &raw_packet(V4, b'E', 1, 2, &[0, 0]));
    assert!(matches!(r, Err(DecodeError::UnknownType { header }) if header.kind == b'E'));
}

// --------------------------------------------------------------------------- payloads

#[test]
fn truncated_integers_name_their_field() {
    use Sender::{Client, Server};
    // (dialect, sender, type, payload, field, need, have)
    let cases: &[(Dialect, Sender, u8, &str, &str, usize, usize)] = &[
        (V4, Client, b'h', "", "major", 1, 0),
        (V4, Client, b'h', "04", "minor", 1, 0),
        (Legacy3, Client, b'h', "03 00", "keepalive", 2, 0),
        (V4, Client, b'h', "04 00 ff", "keepalive", 2, 1),
        (V4, Client, b'c', "7500 6300 000000", "timeout", 4, 3),
        (
            V4,
            Client,
            b'c',
            "7500 6300 0000003c 00",
            "request_tty",
            4,
            1,
        ),
        (
            Legacy3,
            Client,
            b'c',
            "7500 6300 0000003c 00000000",
            "reserved1",
            4,
            0,
        ),
        (
            V4,
            Client,
            b'c',
            "7500 6300 0000003c 00000000 00000000 0000",
            "reserved2",
            4,
            2,
        ),
        (V4, Client, b'i', "7500 2f6600 0001a4", "mode", 4, 3),
        (Legacy3, Client, b'i', "7500 2f6600", "mode", 4, 0),
        (V4, Server, b'M', "000000", "status", 4, 3),
        (Legacy3, Server, b'm', "", "status", 4, 0),
        (V4, Server, b'D', "00", "channel", 2, 1),
        (Legacy3, Server, b'D', "", "channel", 2, 0),
        (V4, Server, b'X', "01", "channel", 2, 1),
        (Legacy3, Server, b'E', "", "channel", 2, 0),
        (V4, Client, b'S', "000001", "seq", 4, 3),
        (V4, Client, b'P', "0000", "mask", 4, 2),
        (V4, Server, b'P', "01 04 00000001 00", "tlv length", 1, 0),
    ];
    for &(d, sender, kind, payload, field, need, have) in cases {
        let e = malformed(d, sender, kind, &hex(payload));
        assert_eq!(
            e,
            PayloadError::Truncated { field, need, have },
            "{} {payload}",
            char::from(kind)
        );
        assert_names_field(&e, field);
        assert!(
            e.to_string()
                .contains(&format!("needs {need} bytes but only {have}"))
        );
    }
}

#[test]
fn strings_without_nul_name_their_field() {
    let cases: &[(Dialect, u8, &str, &str)] = &[
        (V4, b'c', "726f6f74", "user"),
        (Legacy3, b'c', "", "user"),
        (V4, b'c', "7500 6c73", "command"),
        (
            V4,
            b'c',
            "7500 6300 00000000 00000000 00000000 00000000 413d3100 423d",
            "env",
        ),
        (Legacy3, b'i', "75", "user"),
        (V4, b'i', "7500 2f66", "filename"),
        (V4, b'e', "", "user"),
        (Legacy3, b'e', "7500 2f66", "filename"),
        (V4, b'I', "494e54", "signal"),
        (V4, b'I', "", "signal"),
        (V4, b'O', "6b6d7367", "source"),
    ];
    for &(d, kind, payload, field) in cases {
        let e = malformed(d, Sender::Client, kind, &hex(payload));
        assert_eq!(e, PayloadError::MissingNul { field }, "{payload}");
        assert_names_field(&e, field);
    }
}

#[test]
fn bytes_after_the_last_field_are_refused() {
    use Sender::{Client, Server};
    let cases: &[(Dialect, Sender, u8, &str, usize)] = &[
        (V4, Client, b'h', "04 00 ffff 00", 1),
        (V4, Client, b'i', "7500 2f6600 000001a4 0000", 2),
        (Legacy3, Client, b'e', "7500 2f6600 41", 1),
        (V4, Client, b'q', "00", 1),
        (V4, Client, b'I', "494e5400 4b", 1),
        (V4, Client, b'O', "6b00 6d00", 2),
        (V4, Server, b'M', "00000000 00", 1),
        (Legacy3, Server, b'm', "00000000 0000", 2),
        (V4, Server, b'T', "000000", 3),
        (V4, Server, b'X', "0001 00", 1),
        (Legacy3, Server, b'E', "0001 0002", 2),
        (V4, Server, b'K', "00", 1),
        (Legacy3, Client, b'K', "0000", 2),
        (V4, Client, b'S', "00000001 01", 1),
        (V4, Client, b'P', "0000000a 00", 1),
        (V4, Server, b'P', "0301 53 0000 ff", 1),
    ];
    for &(d, sender, kind, payload, extra) in cases {
        let e = malformed(d, sender, kind, &hex(payload));
        assert_eq!(e, PayloadError::TrailingBytes { extra }, "{payload}");
        assert!(e.to_string().contains(&format!("{extra} unexpected bytes")));
    }
}

#[test]
fn legacy_interrupt_payload_is_ignored() {
    // The C executor sends none; a payload is tolerated and dropped, not an error.
    let (r, buf) = decode_first(
        Legacy3,
        Sender::Client,
        &hex("49 00 0001 0002 000c 4b494c4c"),
    );
    assert_eq!(
        r,
        Ok(Some(Frame {
            cid: 1,
            xid: 2,
            packet: Packet::Interrupt {
                signal: Bytes::new()
            }
        }))
    );
    assert!(buf.is_empty());
}

#[test]
fn tlv_overrunning_the_payload() {
    let e = malformed(V4, Sender::Server, b'P', &hex("0301 52  0104 0000"));
    assert_eq!(
        e,
        PayloadError::TlvOverrun {
            index: 1,
            kind: 1,
            len: 4,
            have: 2
        }
    );
    assert_eq!(
        e.to_string(),
        "procinfo TLV #1 (type 1) has length 4 but only 2 bytes are left"
    );
    let e = malformed(V4, Sender::Server, b'P', &hex("0bff 7368 0000"));
    assert_eq!(
        e,
        PayloadError::TlvOverrun {
            index: 0,
            kind: 11,
            len: 255,
            have: 4
        }
    );
}

#[test]
fn tlv_list_without_terminator() {
    for payload in ["", "0301 52", "0104 00001092 0b02 7368"] {
        let e = malformed(V4, Sender::Server, b'P', &hex(payload));
        assert_eq!(e, PayloadError::MissingTerminator, "{payload}");
        assert!(e.to_string().contains("terminator"));
    }
}

#[test]
fn tlv_list_too_long() {
    let mut payload: Vec<u8> = std::iter::repeat_n([1u8, 0], MAX_PROCINFO_FIELDS)
        .flatten()
        .collect();
    payload.extend([0, 0]);
    let (r, _) = decode_first(V4, Sender::Server, &raw_packet(V4, b'P', 1, 1, &payload));
    let Ok(Some(Frame {
        packet: Packet::ProcInfoResponse { fields },
        ..
    })) = r
    else {
        panic!("{r:?}")
    };
    assert_eq!(fields.len(), MAX_PROCINFO_FIELDS);

    payload.splice(0..0, [1, 0]);
    let e = malformed(V4, Sender::Server, b'P', &payload);
    assert_eq!(
        e,
        PayloadError::TooMany {
            field: "procinfo TLV",
            max: MAX_PROCINFO_FIELDS
        }
    );
}

#[test]
fn too_many_env_entries() {
    let fixed = hex("7500 6300 00000000 00000000 00000000 00000000");
    let with_env = |n: usize| {
        let mut p = fixed.clone();
        for _ in 0..n {
            p.extend_from_slice(b"A=1\0");
        }
        p
    };
    let (r, _) = decode_first(
        V4,
        Sender::Client,
        &raw_packet(V4, b'c', 1, 1, &with_env(MAX_ENV_ENTRIES)),
    );
    let Ok(Some(Frame {
        packet: Packet::Command(cmd),
        ..
    })) = r
    else {
        panic!("{r:?}")
    };
    assert_eq!(cmd.env.len(), MAX_ENV_ENTRIES);

    let e = malformed(
        Legacy3,
        Sender::Client,
        b'c',
        &with_env(MAX_ENV_ENTRIES + 1),
    );
    assert_eq!(
        e,
        PayloadError::TooMany {
            field: "env",
            max: MAX_ENV_ENTRIES
        }
    );
    assert_names_field(&e, "env");
}

// --------------------------------------------------------------------------- dialect detection

#[test]
fn detect_dialect_from_the_first_bytes() {
    // The C executor's hello: under the 4.0 layout its length would be 0.
    assert_eq!(
        detect_dialect(&hex("68 00 00 00 00 00 00 0c")),
        Some(Legacy3)
    );
    assert_eq!(
        detect_dialect(&hex("68 00 00 00 00 00 00 0c 03 00 ff ff")),
        Some(Legacy3)
    );
    assert_eq!(
        detect_dialect(&hex("68 00 00 0c 00 00 00 00 04 00 ff ff")),
        Some(V4)
    );
    for n in 0..8 {
        assert_eq!(detect_dialect(&hex("68 00 00 0c 00 00 00 00")[..n]), None);
    }
    // Neither layout is valid: 4.0 is assumed and the decoder reports the bad length.
    assert_eq!(detect_dialect(&[0; 8]), Some(V4));
}

// --------------------------------------------------------------------------- encoder

#[test]
fn encode_refuses_packets_over_65535_bytes() {
    let ok = Packet::Data {
        channel: 1,
        data: Bytes::from(vec![0; MAX_CHUNK]),
    };
    assert_eq!(ok.to_bytes(V4, 1, 1).unwrap().len(), MAX_PACKET_LEN);

    let too_long = Packet::Data {
        channel: 1,
        data: Bytes::from(vec![0; MAX_CHUNK + 1]),
    };
    for d in DIALECTS {
        let mut out = BytesMut::from(&b"kept"[..]);
        let e = too_long.encode(d, 1, 1, &mut out).unwrap_err();
        assert_eq!(
            e,
            EncodeError::TooLong {
                kind: "channel data",
                len: 65536,
                max: 65535
            }
        );
        assert_eq!(
            e.to_string(),
            "channel data packet of 65536 bytes exceeds the limit of 65535 bytes"
        );
        assert_eq!(&out[..], b"kept", "a refused packet writes nothing");
    }

    let cmd = Packet::Command(CommandRequest {
        user: b("u"),
        command: Bytes::from(vec![b'x'; 65535]),
        timeout: 0,
        request_tty: 0,
        reserved: [0, 0],
        env: vec![],
    });
    assert!(matches!(
        cmd.to_bytes(V4, 1, 1),
        Err(EncodeError::TooLong {
            kind: "command",
            ..
        })
    ));
}

#[test]
fn encode_refuses_nul_inside_strings() {
    let cmd = |user: &str, command: &str, env: &[&str]| {
        Packet::Command(CommandRequest {
            user: b(user),
            command: b(command),
            timeout: 0,
            request_tty: 0,
            reserved: [0, 0],
            env: env.iter().map(|e| b(e)).collect(),
        })
    };
    let cases = [
        (cmd("ro\0ot", "ls", &[]), "user"),
        (cmd("root", "ls\0", &[]), "command"),
        (cmd("root", "ls", &["A=1", "\0B=2"]), "env"),
        (
            Packet::Inject {
                user: b("\0"),
                path: b("/f"),
                mode: 0,
            },
            "user",
        ),
        (
            Packet::Inject {
                user: b("u"),
                path: b("/f\0.tmp"),
                mode: 0,
            },
            "filename",
        ),
        (
            Packet::Extract {
                user: b("u"),
                path: b("\0"),
            },
            "filename",
        ),
        (Packet::Interrupt { signal: b("K\0") }, "signal"),
        (Packet::Monitor { source: b("a\0b") }, "source"),
    ];
    for (p, field) in cases {
        let e = p.to_bytes(V4, 1, 1).unwrap_err();
        assert_eq!(e, EncodeError::InteriorNul { field }, "{p:?}");
        assert!(e.to_string().contains(&format!("`{field}`")));
    }
    // Channel data is binary: NUL is fine there.
    let data = Packet::Data {
        channel: 0,
        data: Bytes::from_static(b"\0\0"),
    };
    assert!(data.to_bytes(V4, 1, 1).is_ok());
}

#[test]
fn encode_refuses_what_legacy3_cannot_express() {
    let unsupported = [
        (Packet::Monitor { source: b("kmsg") }, "monitor"),
        (Packet::Settle { seq: 1 }, "settle"),
        (Packet::ProcInfoQuery { mask: 2 }, "procinfo"),
        (Packet::ProcInfoResponse { fields: vec![] }, "procinfo"),
        (Packet::Interrupt { signal: b("INT") }, "interrupt"),
    ];
    for (p, kind) in unsupported {
        let mut out = BytesMut::new();
        let e = p.encode(Legacy3, 1, 1, &mut out).unwrap_err();
        assert!(
            matches!(e, EncodeError::Unsupported { kind: k, dialect: Legacy3, .. } if k == kind),
            "{p:?}: {e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains(kind) && msg.contains("protocol 3.0"), "{msg}");
        assert!(out.is_empty());
        // All of them exist in 4.0.
        assert!(p.to_bytes(V4, 1, 1).is_ok());
    }
    // An interrupt without a signal name is 3.0's only interrupt.
    let intr = Packet::Interrupt {
        signal: Bytes::new(),
    };
    assert_eq!(
        to_hex(&intr.to_bytes(Legacy3, 1, 1).unwrap()),
        to_hex(&hex("49 00 0001 0001 0008"))
    );
}

#[test]
fn encode_refuses_bad_procinfo_fields() {
    let resp = |fields| Packet::ProcInfoResponse { fields };
    let e = resp(vec![ProcInfoField {
        kind: 0,
        value: Bytes::new(),
    }])
    .to_bytes(V4, 1, 1)
    .unwrap_err();
    assert!(
        matches!(e, EncodeError::BadProcInfo { kind: 0, .. }),
        "{e:?}"
    );

    let e = resp(vec![ProcInfoField {
        kind: 11,
        value: Bytes::from(vec![b'a'; 256]),
    }])
    .to_bytes(V4, 1, 1)
    .unwrap_err();
    assert!(
        matches!(e, EncodeError::BadProcInfo { kind: 11, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("255"), "{e}");

    // 255 bytes is the longest value.
    let ok = resp(vec![ProcInfoField {
        kind: 11,
        value: Bytes::from(vec![b'a'; 255]),
    }]);
    assert_eq!(ok.to_bytes(V4, 1, 1).unwrap().len(), 8 + 2 + 255 + 2);
}

#[test]
fn encode_refuses_more_procinfo_fields_than_the_decoder_accepts() {
    let fields = |n| Packet::ProcInfoResponse {
        fields: (0..n)
            .map(|i| ProcInfoField::u32(u8::try_from(i % 255 + 1).unwrap(), i))
            .collect(),
    };
    let most = fields(MAX_PROCINFO_FIELDS as u32)
        .to_bytes(V4, 1, 1)
        .unwrap();
    assert!(common::decode_one(V4, Sender::Server, &most).is_ok());

    let e = fields(MAX_PROCINFO_FIELDS as u32 + 1)
        .to_bytes(V4, 1, 1)
        .unwrap_err();
    assert!(matches!(e, EncodeError::BadProcInfo { .. }), "{e:?}");
}

// --------------------------------------------------------------------------- chunking

#[test]
fn chunks_split_without_copying() {
    let data = Bytes::from((0..100u8).collect::<Vec<_>>());
    let pieces: Vec<Bytes> = chunks(data.clone(), 32).collect();
    assert_eq!(
        pieces.iter().map(Bytes::len).collect::<Vec<_>>(),
        [32, 32, 32, 4]
    );
    assert_eq!(pieces.concat(), data.to_vec());
    assert_eq!(pieces[1].as_ptr(), data[32..].as_ptr());
    assert_eq!(
        chunks(Bytes::from_static(b"abc"), 0).count(),
        3,
        "0 clamps to 1"
    );
    assert_eq!(chunks(Bytes::new(), 10).count(), 0);
    let big = Bytes::from(vec![0; MAX_CHUNK + 1]);
    assert_eq!(
        chunks(big, usize::MAX).map(|c| c.len()).collect::<Vec<_>>(),
        [MAX_CHUNK, 1]
    );
}

#[test]
fn encode_data_writes_one_packet_per_chunk() {
    let mut out = BytesMut::new();
    let n = encode_data(Legacy3, 1, 2, 1, Bytes::from_static(b"hello"), 2, &mut out).unwrap();
    assert_eq!(n, 3);
    assert_eq!(
        to_hex(&out),
        to_hex(&hex("44 00 0001 0002 000c 0001 6865
             44 00 0001 0002 000c 0001 6c6c
             44 00 0001 0002 000b 0001 6f"))
    );
    let mut out = BytesMut::new();
    assert_eq!(encode_data(V4, 1, 2, 1, Bytes::new(), 10, &mut out), Ok(0));
    assert!(out.is_empty());
}

#[test]
fn header_only_packets_obey_the_limit_and_the_dialect() {
    use tuppence::wire::decode_frame;
    // decode_frame takes the limit as given (only Decoder clamps it).
    for (max, want) in [
        (0, Err(DecodeError::LengthTooLong { len: 8, max: 0 })),
        (7, Err(DecodeError::LengthTooLong { len: 8, max: 7 })),
        (8, Ok(Some(keepalive_frame()))),
    ] {
        let mut buf = BytesMut::from(&hex(KEEPALIVE_V4)[..]);
        assert_eq!(
            decode_frame(V4, Sender::Client, &mut buf, max),
            want,
            "max {max}"
        );
        assert_eq!(buf.len(), if want.is_ok() { 0 } else { 8 });
    }
    // Every header-only packet, in each dialect, including those that need a payload.
    for d in DIALECTS {
        for code in 0..=255u8 {
            let (r, rest) = decode_first(d, Sender::Server, &header(d, code, 8, 3, 4));
            assert!(
                rest.is_empty(),
                "{code:#04x}: an 8-byte packet is consumed whole"
            );
            let want = match (code, d) {
                (b'K', _) => Ok(Packet::Keepalive),
                (b'q', _) => Ok(Packet::Quit),
                (b'T', _) => Ok(Packet::Timeout),
                (b'I', Legacy3) => Ok(Packet::Interrupt {
                    signal: Bytes::new(),
                }),
                _ => Err(()),
            };
            match (r, want) {
                (Ok(Some(f)), Ok(p)) => assert_eq!((f.cid, f.xid, f.packet), (3, 4, p)),
                (
                    Err(
                        DecodeError::UnknownType { header } | DecodeError::Malformed { header, .. },
                    ),
                    Err(()),
                ) => {
                    assert_eq!(
                        (header.kind, header.cid, header.xid, header.len),
                        (code, 3, 4, 8)
                    );
                }
                (r, want) => panic!("{code:#04x} in {d}: got {r:?}, want {want:?}"),
            }
        }
    }
}
