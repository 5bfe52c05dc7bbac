//! Unit tests of the certificate task: parameters, the script's output, answers.

use super::*;
use crate::sniff::test_support::{answered, assert_endings};

fn target(f: u8, host: &'static [u8]) -> CertTarget {
    CertTarget {
        starttls: StartTls::from_bits(f & 7).unwrap(),
        want_cert: f & flags::WANT_CERT != 0,
        want_chain: f & flags::WANT_CHAIN != 0,
        want_details: f & flags::WANT_DETAILS != 0,
        want_params: f & flags::WANT_PARAMS != 0,
        port: 443,
        host: Bytes::from_static(host),
    }
}

fn req(fs: &[u8]) -> CertRequest {
    CertRequest {
        targets: fs.iter().map(|&f| target(f, b"example.org")).collect(),
    }
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// Output as the script prints it for one host with a two-certificate chain.
const TWO_CERTS: &str = "-----BEGIN HOST-----\n\
    -----CIPHER-----\nTLS_AES_256_GCM_SHA384\n\
    -----PROTOCOL-----\nTLSv1.3\n\
    -----BEGIN CERTIFICATE-----\nMIIBaaaa\nbbbb==\n-----END CERTIFICATE-----\n\
    -----FINGERPRINT-----\nA94A8FE5CCB19BA61C4C0873D391E987982FBBD3\n\
    -----NAME-----\nexample.org\nwww.example.org\n\
    -----EXPIRY-----\nJan  1 00:00:00 2030 GMT\n\
    -----BEGIN CERTIFICATE-----\nMIICcccc\n-----END CERTIFICATE-----\n\
    -----FINGERPRINT-----\n0000\n\
    -----NAME-----\nR3\n\
    -----EXPIRY-----\nSep 15 16:00:00 2025 GMT\n\
    -----END HOST-----\n";

const NO_CONNECTION: &str = "-----BEGIN HOST-----\n-----END HOST-----\n";

#[test]
fn params_parse_by_hand() {
    let p = b"\x00\x02\x60\x01\xbb\x00\x00\x00\x0bexample.org\x19\x00\x19\x00\x00\x00\x01m";
    let r = CertRequest::decode(Bytes::from_static(p)).unwrap();
    assert_eq!(r.targets[0], target(0x60, b"example.org"));
    assert!(r.targets[0].want_details && r.targets[0].want_params);
    assert_eq!(r.targets[1].starttls, StartTls::Smtp);
    assert!(r.targets[1].want_cert && r.targets[1].want_chain);
    assert_eq!(r.targets[1].port, 25);
    let mut enc = BytesMut::new();
    r.encode(&mut enc).unwrap();
    assert_eq!(&enc[..], &p[..]);
}

#[test]
fn bad_params_answer_i() {
    for p in [
        &b""[..],
        b"\x00\x01\x00\x01",
        b"\x00\x01\x06\x01\xbb\x00\x00\x00\x00", // STARTTLS 6
        b"\x00\x01\x07\x01\xbb\x00\x00\x00\x00", // STARTTLS 7
        b"\x00\x01\x80\x01\xbb\x00\x00\x00\x00", // more flags
        b"\x00\x01\x00\x01\xbb\x00\x00\x00\x01\x00", // NUL in host
        b"\x00\x01\x00\x01\xbb\x00\x00\x01\x00", // host longer than the message
    ] {
        assert!(
            CertRequest::decode(Bytes::copy_from_slice(p)).is_err(),
            "{p:?}"
        );
        let plan = Cert::default().start(Bytes::copy_from_slice(p));
        assert_eq!(answered(plan), Outcome::failure_code(b'I'), "{p:?}");
    }
}

#[test]
fn spec_passes_host_port_starttls() {
    let r = CertRequest {
        targets: vec![target(1, b"mx.example")],
    };
    let spec = Cert::default().spec(&r);
    let args: Vec<&[u8]> = spec.args.iter().map(|a| &a[..]).collect();
    assert_eq!(
        &args[2..],
        [
            &b"tuppence-sniff-cert"[..],
            b"openssl",
            b"mx.example",
            b"443",
            b"smtp"
        ]
    );
    let spec = Cert::default().spec(&req(&[0]));
    assert_eq!(&spec.args[6][..], b"");
}

#[test]
fn output_with_every_flag_combination() {
    let out = b(TWO_CERTS);
    // Fingerprint only, host certificate only.
    let r = req(&[0]).parse_output(&out).unwrap();
    assert_eq!(r[0].tls, None);
    assert_eq!(r[0].count(), 1);
    assert_eq!(
        r[0].certs[0].value,
        b("A94A8FE5CCB19BA61C4C0873D391E987982FBBD3")
    );
    assert_eq!(r[0].certs[0].details, None);
    // Whole chain, whole certificates (base64 body, no armour), details and params.
    let all = flags::WANT_CERT | flags::WANT_CHAIN | flags::WANT_DETAILS | flags::WANT_PARAMS;
    let r = req(&[all]).parse_output(&out).unwrap();
    assert_eq!(
        r[0].tls,
        Some(TlsParams {
            cipher: b("TLS_AES_256_GCM_SHA384"),
            protocol: b("TLSv1.3")
        })
    );
    assert_eq!(r[0].count(), 2);
    assert_eq!(r[0].certs[0].value, b("MIIBaaaa\nbbbb=="));
    assert_eq!(
        r[0].certs[0].details,
        Some(CertDetails {
            names: b("example.org\nwww.example.org"),
            expiry: b("Jan  1 00:00:00 2030 GMT")
        })
    );
    assert_eq!(r[0].certs[1].value, b("MIICcccc"));
    // The encoded answer, byte for byte.
    let mut data = BytesMut::new();
    req(&[flags::WANT_DETAILS | flags::WANT_PARAMS])
        .encode_answer(
            &req(&[flags::WANT_DETAILS | flags::WANT_PARAMS])
                .parse_output(&out)
                .unwrap(),
            &mut data,
        )
        .unwrap();
    let mut want = b"\x01\x00\x00\x00\x16TLS_AES_256_GCM_SHA384\x00\x00\x00\x07TLSv1.3".to_vec();
    want.extend_from_slice(b"\x00\x00\x00\x28A94A8FE5CCB19BA61C4C0873D391E987982FBBD3");
    want.extend_from_slice(b"\x00\x00\x00\x1bexample.org\nwww.example.org");
    want.extend_from_slice(b"\x00\x00\x00\x18Jan  1 00:00:00 2030 GMT");
    assert_eq!(&data[..], &want[..]);
}

#[test]
fn failed_connection_is_count_zero() {
    let r = req(&[flags::WANT_PARAMS | flags::WANT_CHAIN, 0]);
    let out = Bytes::from(format!(
        "{NO_CONNECTION}-----BEGIN HOST-----\n  \n-----END HOST-----\n"
    ));
    let replies = r.parse_output(&out).unwrap();
    assert!(replies.iter().all(|r| r.count() == 0 && r.tls.is_none()));
    assert_eq!(
        r.finish(TaskOutput::Complete(out)),
        Outcome::success(Bytes::from_static(b"\x00\x00"))
    );
    // CIPHER/PROTOCOL but no certificate (s_client printed something, no chain).
    let out = b(
        "-----BEGIN HOST-----\n-----CIPHER-----\n0000\n-----PROTOCOL-----\n\n-----END HOST-----\n",
    );
    assert_eq!(
        req(&[flags::WANT_PARAMS]).parse_output(&out).unwrap()[0].count(),
        0
    );
}

#[test]
fn output_failures_follow_the_c_codes() {
    let one = req(&[flags::WANT_DETAILS | flags::WANT_PARAMS]);
    assert_eq!(one.parse_output(&Bytes::new()), Err(b'R'));
    assert_eq!(req(&[]).parse_output(&Bytes::new()), Ok(vec![]));
    let block_errors = [
        "-----BEGIN HOS-----\n-----END HOST-----\n",
        "junk\n-----BEGIN HOST-----\n-----END HOST-----\n",
        "-----BEGIN HOST-----\ntext\n-----END HOST-----\n",
        "-----BEGIN HOST-----\n-----WHAT-----\nx\n-----END HOST-----\n",
        "-----BEGIN HOST-----\n-----CIPHER----- x\n-----END HOST-----\n",
        "-----BEGIN HOST-----\n-----CIPHER-----\na\n-----CIPHER-----\nb\n-----END HOST-----\n",
        "-----BEGIN HOST-----\n-----FINGERPRINT-----\nAB\n-----END HOST-----\n",
        "-----BEGIN HOST-----\n-----NAME-----\nx\n-----END HOST-----\n",
        "-----BEGIN HOST-----\n-----BEGIN CERTIFICATE-----\nMII\n-----END HOST-----\n",
        "-----BEGIN HOST-----\n-----BEGIN CERTIFICATE-----\n\n-----END CERTIFICATE-----\n-----END HOST-----\n",
        "-----BEGIN HOST-----\n-----BEGIN CERTIFICATE-----\nM\n-----END CERTIFICATE-----\nx\n-----END HOST-----\n",
        "-----BEGIN HOST-----\n-----BEGIN CERTIFICATE-----\nM\n-----END CERTIFICATE-----\n-----NAME-----\na\n-----NAME-----\nb\n-----END HOST-----\n",
        "-----BEGIN HOST-----\n-----BEGIN CERTIFICATE-----\nM\n-----END CERTIFICATE-----\n-----CIPHER-----\na\n-----END HOST-----\n",
        "-----BEGIN HOST-----\n-----",
    ];
    for bad in block_errors {
        let out = Bytes::from(format!("{bad}-----END HOST-----\n"));
        let out = if bad.ends_with("-----END HOST-----\n") {
            b(bad)
        } else {
            out
        };
        assert_eq!(one.parse_output(&out), Err(b'B'), "{bad:?}");
    }
    // Sections the flags need but the block lacks.
    let no_expiry = b(
        "-----BEGIN HOST-----\n-----CIPHER-----\nc\n-----PROTOCOL-----\np\n\
        -----BEGIN CERTIFICATE-----\nM\n-----END CERTIFICATE-----\n\
        -----FINGERPRINT-----\nF\n-----NAME-----\nn\n-----END HOST-----\n",
    );
    assert_eq!(one.parse_output(&no_expiry), Err(b'B'));
    assert!(req(&[flags::WANT_PARAMS]).parse_output(&no_expiry).is_ok());
    let no_cipher = b(
        "-----BEGIN HOST-----\n-----BEGIN CERTIFICATE-----\nM\n-----END CERTIFICATE-----\n\
        -----FINGERPRINT-----\nF\n-----END HOST-----\n",
    );
    assert_eq!(
        req(&[flags::WANT_PARAMS]).parse_output(&no_cipher),
        Err(b'B')
    );
    assert!(req(&[0]).parse_output(&no_cipher).is_ok());
    assert_eq!(
        req(&[flags::WANT_CERT]).parse_output(&no_cipher).unwrap()[0].certs[0].value,
        b("M")
    );
    // Trailing text, wrong block count.
    assert_eq!(
        one.parse_output(&b("-----BEGIN HOST-----\n-----END HOST-----\nx")),
        Err(b'E')
    );
    assert_eq!(
        one.parse_output(&b("-----BEGIN HOST-----\n-----END HOST-----")),
        Err(b'E')
    );
    assert_eq!(one.parse_output(&b("garbage")), Err(b'E'));
    let two = Bytes::from(format!("{NO_CONNECTION}{NO_CONNECTION}"));
    assert_eq!(one.parse_output(&two), Err(b'C'));
    assert_eq!(req(&[0, 0, 0]).parse_output(&two), Err(b'C'));
}

#[test]
fn finish_maps_every_ending_to_its_code() {
    let r = req(&[0]);
    assert_endings(&r, b'F', b'P');
    for (o, c) in [
        (TaskOutput::Complete(Bytes::new()), b'R'),
        (TaskOutput::Complete(b("x")), b'E'),
    ] {
        assert_eq!(r.finish(o), Outcome::failure_code(c));
    }
}

#[test]
fn answer_decode_uses_the_request_flags() {
    let r = req(&[
        flags::WANT_DETAILS | flags::WANT_PARAMS | flags::WANT_CHAIN,
        0,
    ]);
    let replies = r
        .parse_output(&Bytes::from(format!("{TWO_CERTS}{NO_CONNECTION}")))
        .unwrap();
    let mut data = BytesMut::new();
    r.encode_answer(&replies, &mut data).unwrap();
    assert_eq!(data.len(), replies.iter().map(reply_len).sum::<usize>());
    let data = data.freeze();
    assert_eq!(r.decode_answer(data.clone()).unwrap(), replies);
    assert!(r.decode_answer(data.slice(..data.len() - 1)).is_err());
    // The same bytes read with other flags do not parse.
    assert!(req(&[0, 0]).decode_answer(data).is_err());
    // Encoding refuses replies that contradict the flags.
    let mut bad = replies.clone();
    bad[1].tls = Some(TlsParams {
        cipher: b("x"),
        protocol: b("y"),
    });
    assert!(r.encode_answer(&bad, &mut BytesMut::new()).is_err());
    let mut bad = replies.clone();
    bad[0].certs[0].details = None;
    assert!(r.encode_answer(&bad, &mut BytesMut::new()).is_err());
    let r1 = req(&[0, 0]);
    let bad = vec![
        CertReply {
            tls: None,
            certs: vec![
                CertEntry {
                    value: b("a"),
                    details: None
                };
                2
            ],
        },
        CertReply {
            tls: None,
            certs: vec![],
        },
    ];
    assert!(r1.encode_answer(&bad, &mut BytesMut::new()).is_err());
}
