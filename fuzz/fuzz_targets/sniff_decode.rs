//! The sniff framing and message decoders with arbitrary bytes in arbitrary chunks: no panic,
//! the same messages whatever the chunking, buffering bounded by one frame, and whatever
//! decodes re-encodes to the same bytes. Each message also goes through the parameter
//! decoders of the built-in task types and, with the next message as "script output", their
//! output parsers.
#![no_main]

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tuppence::sniff::cert::CertRequest;
use tuppence::sniff::nat::NatReply;
use tuppence::sniff::ping::PingRequest;
use tuppence::sniff::{Answer, FrameDecoder, Request, TaskFinish, TaskOutput, encode_frame};

const MAX: usize = 4096;

#[derive(Arbitrary, Debug)]
struct Input {
    stream: Vec<u8>,
    cuts: Vec<u16>,
}

fn deframe(stream: &[u8], cuts: &[u16]) -> (Vec<Bytes>, bool) {
    let mut d = FrameDecoder::new(MAX);
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut sizes = cuts.iter().map(|&c| usize::from(c) % 64 + 1).cycle();
    while at < stream.len() {
        let n = if cuts.is_empty() {
            stream.len() - at
        } else {
            sizes.next().unwrap_or(1)
        };
        let end = (at + n).min(stream.len());
        d.push(&stream[at..end]);
        at = end;
        loop {
            match d.next_frame() {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => {
                    assert!(e.is_fatal());
                    assert_eq!(d.next_frame().unwrap_err(), e, "sticky");
                    return (out, true);
                }
            }
        }
        assert!(d.buffered() <= MAX + 4 + 64, "more than one frame buffered");
    }
    (out, false)
}

fuzz_target!(|input: Input| {
    let (whole, whole_err) = deframe(&input.stream, &[]);
    let (chunked, chunked_err) = deframe(&input.stream, &input.cuts);
    assert_eq!(whole, chunked);
    assert_eq!(whole_err, chunked_err);

    for (i, m) in whole.iter().enumerate() {
        let mut framed = BytesMut::new();
        encode_frame(m, MAX, &mut framed).unwrap();

        if let Ok(r) = Request::decode(m.clone()) {
            let mut b = BytesMut::new();
            r.encode(&mut b);
            assert_eq!(&b[..], &m[..]);
        }
        if let Ok(a) = Answer::decode(m.clone()) {
            let mut b = BytesMut::new();
            a.encode(&mut b);
            assert_eq!(&b[..], &m[..]);
        }
        let output = whole.get(i + 1).cloned().unwrap_or_default();
        if let Ok(p) = PingRequest::decode(m.clone()) {
            let mut b = BytesMut::new();
            p.encode(&mut b).unwrap();
            assert_eq!(PingRequest::decode(b.freeze()).unwrap(), p);
            if let Ok(replies) = p.parse_output(&output) {
                let mut d = BytesMut::new();
                p.encode_answer(&replies, &mut d).unwrap();
                assert_eq!(p.decode_answer(d.freeze()).unwrap(), replies);
            }
            let _ = p.decode_answer(output.clone());
            let _ = p.finish(TaskOutput::Complete(output.clone()));
        }
        if let Ok(c) = CertRequest::decode(m.clone()) {
            let mut b = BytesMut::new();
            c.encode(&mut b).unwrap();
            assert_eq!(CertRequest::decode(b.freeze()).unwrap(), c);
            if let Ok(replies) = c.parse_output(&output) {
                let mut d = BytesMut::new();
                c.encode_answer(&replies, &mut d).unwrap();
                assert_eq!(c.decode_answer(d.freeze()).unwrap(), replies);
            }
            let _ = c.decode_answer(output.clone());
            let _ = c.finish(TaskOutput::Complete(output.clone()));
        }
        if let Ok(n) = NatReply::parse_output(m) {
            assert_eq!(NatReply::decode(&n.encode()).unwrap(), n);
        }
        let _ = NatReply::decode(m);
    }
});
