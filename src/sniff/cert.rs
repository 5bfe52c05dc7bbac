//! `C`: fetch the TLS certificates (and optionally cipher, protocol, names, expiry) of
//! services.
//!
//! Parameters: `u16 n`, then n × `{ flags u8 | port u16 | host }`. Flags: bits 0–2 the
//! STARTTLS protocol ([`StartTls`]; 6 and 7 are invalid), bit 3 send the whole certificate
//! (else its SHA-1 fingerprint), bit 4 the whole chain (else only the host's certificate),
//! bit 5 names and expiry, bit 6 cipher and protocol, bit 7 invalid ("more flags").
//!
//! Success data per service, in request order: `u8 count`; if `count > 0` and bit 6: `cipher`,
//! `protocol` strings; then `count ×` { certificate (the PEM's base64 body without the armour
//! lines, as the C plugin sends it) or fingerprint; if bit 5: `names` (newline-separated),
//! `expiry` }. The answer is not self-describing: decoding needs the flags of the request.
//! Failure data is one code byte, see [`fail`].
//!
//! Differences from the C plugin, on purpose: a host containing a NUL byte is refused as bad
//! parameters; an empty host name is looked up like any other (C stopped at it and then
//! failed with `C`); a chain longer than 255 certificates, a section out of place, or a
//! section the flags need but the output lacks is `B` (C crashed or read garbage).

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::reader::{Reader, put_string, string_len, u16_count};
use super::task::{ShellScript, check_host};
use super::{
    DEFAULT_OUTPUT_CAP, EncodeError, Outcome, PayloadError, ProcessSpec, TaskFinish, TaskOutput,
    TaskPlan, TaskType, code,
};

/// The certificate type byte.
pub const TYPE: u8 = b'C';

/// The script run for a certificate task (POSIX sh + openssl): `sh -c SCRIPT
/// tuppence-sniff-cert OPENSSL {HOST PORT STARTTLS}…`; its output format is described in
/// [`CertRequest::parse_output`].
pub const SCRIPT: &str = include_str!("scripts/cert.sh");

/// Certificate failure codes (the C plugin's, plus the agent's limits from [`code`]).
pub mod fail {
    /// `I`: the parameters do not parse (answered at once, nothing runs).
    pub const BAD_PARAMS: u8 = b'I';
    /// `F`: the process could not be started.
    pub const SPAWN: u8 = b'F';
    /// `P`: reading the output failed.
    pub const READ: u8 = b'P';
    /// `R`: services were requested but the output is empty.
    pub const NO_OUTPUT: u8 = b'R';
    /// `B`: a host block does not parse.
    pub const BLOCK: u8 = b'B';
    /// `E`: text after the last host block.
    pub const TRAILING: u8 = b'E';
    /// `C`: the number of host blocks differs from the number of services.
    pub const HOST_COUNT: u8 = b'C';
    pub use super::code::{OUTPUT_TOO_LARGE, TIMEOUT, TOO_MANY_TASKS};
}

const BEGIN_HOST: &[u8] = b"-----BEGIN HOST-----\n";
const END_HOST: &[u8] = b"-----END HOST-----\n";
const DASHES: &[u8] = b"-----";

/// The STARTTLS protocol to speak before the TLS handshake (flags bits 0–2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum StartTls {
    /// Plain TLS from the first byte.
    #[default]
    None,
    Smtp,
    Pop3,
    Imap,
    Ftp,
    Xmpp,
}

impl StartTls {
    const ALL: [StartTls; 6] = [
        StartTls::None,
        StartTls::Smtp,
        StartTls::Pop3,
        StartTls::Imap,
        StartTls::Ftp,
        StartTls::Xmpp,
    ];

    /// The value of flags bits 0–2.
    pub const fn bits(self) -> u8 {
        self as u8
    }

    /// The `openssl s_client -starttls` argument, empty for [`StartTls::None`].
    pub const fn name(self) -> &'static str {
        match self {
            StartTls::None => "",
            StartTls::Smtp => "smtp",
            StartTls::Pop3 => "pop3",
            StartTls::Imap => "imap",
            StartTls::Ftp => "ftp",
            StartTls::Xmpp => "xmpp",
        }
    }

    pub fn from_bits(bits: u8) -> Option<StartTls> {
        Self::ALL.get(usize::from(bits)).copied()
    }
}

/// Flag bits of a certificate target.
pub mod flags {
    pub const STARTTLS_MASK: u8 = 0b111;
    pub const WANT_CERT: u8 = 1 << 3;
    pub const WANT_CHAIN: u8 = 1 << 4;
    pub const WANT_DETAILS: u8 = 1 << 5;
    pub const WANT_PARAMS: u8 = 1 << 6;
    pub const MORE_FLAGS: u8 = 1 << 7;
}

/// One service to look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertTarget {
    pub starttls: StartTls,
    /// Send each certificate's base64 body (else its SHA-1 fingerprint).
    pub want_cert: bool,
    /// Send the whole chain (else only the first, the host's own certificate).
    pub want_chain: bool,
    /// Send each certificate's names and expiry.
    pub want_details: bool,
    /// Send the negotiated cipher and protocol.
    pub want_params: bool,
    pub port: u16,
    pub host: Bytes,
}

impl CertTarget {
    /// The flags byte.
    pub fn flags(&self) -> u8 {
        let bit = |on: bool, b: u8| if on { b } else { 0 };
        self.starttls.bits()
            | bit(self.want_cert, flags::WANT_CERT)
            | bit(self.want_chain, flags::WANT_CHAIN)
            | bit(self.want_details, flags::WANT_DETAILS)
            | bit(self.want_params, flags::WANT_PARAMS)
    }
}

/// The parameters of a certificate request.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CertRequest {
    pub targets: Vec<CertTarget>,
}

/// Negotiated connection parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsParams {
    pub cipher: Bytes,
    pub protocol: Bytes,
}

/// Names and expiry of one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertDetails {
    /// Common name and DNS subject alternative names, newline-separated.
    pub names: Bytes,
    /// The `notAfter` date as openssl prints it.
    pub expiry: Bytes,
}

/// One certificate of an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertEntry {
    /// The base64 body of the PEM (if `want_cert`) or the upper-case hex SHA-1 fingerprint.
    pub value: Bytes,
    /// Present iff `want_details`.
    pub details: Option<CertDetails>,
}

/// The result for one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertReply {
    /// Present iff `want_params` and at least one certificate came back.
    pub tls: Option<TlsParams>,
    /// The certificates; none when the connection failed, at most one without `want_chain`.
    pub certs: Vec<CertEntry>,
}

impl CertReply {
    /// The count byte of the answer.
    pub fn count(&self) -> usize {
        self.certs.len()
    }
}

/// One certificate as the script printed it.
#[derive(Debug, Default)]
struct RawCert {
    body: Bytes,
    fingerprint: Option<Bytes>,
    names: Option<Bytes>,
    expiry: Option<Bytes>,
}

/// One host block as the script printed it.
#[derive(Debug, Default)]
struct HostBlock {
    cipher: Option<Bytes>,
    protocol: Option<Bytes>,
    certs: Vec<RawCert>,
}

/// Smallest wire size of one target: bounds the preallocation for a claimed count.
const MIN_TARGET_LEN: usize = 7;

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut at = from;
    loop {
        let rest = hay.get(at..)?;
        let off = rest.iter().position(|&b| b == first)?;
        let pos = at.checked_add(off)?;
        if hay.get(pos..)?.starts_with(needle) {
            return Some(pos);
        }
        at = pos.checked_add(1)?;
    }
}

fn is_space(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n')
}

/// `s[start..end]` with spaces, tabs and newlines trimmed off both ends, zero-copy.
fn trimmed(s: &Bytes, start: usize, end: usize) -> Option<Bytes> {
    let part = s.get(start..end)?;
    let lead = part.iter().take_while(|b| is_space(b)).count();
    let trail = part.iter().rev().take_while(|b| is_space(b)).count();
    let len = part.len().saturating_sub(lead).saturating_sub(trail);
    let from = start.checked_add(lead)?;
    Some(s.slice(from..from.checked_add(len)?))
}

impl CertRequest {
    /// Parses certificate parameters. Bytes after the last target are ignored (as in C).
    pub fn decode(params: Bytes) -> Result<CertRequest, PayloadError> {
        let mut r = Reader::new(params);
        let targets = r.counted("target count", MIN_TARGET_LEN, |r| {
            let f = r.u8("flags")?;
            let port = r.u16("port")?;
            let host = r.string("host")?;
            if f & flags::MORE_FLAGS != 0 {
                return Err(PayloadError::Invalid {
                    field: "flags",
                    why: "bit 7 (more flags) is not supported",
                });
            }
            let starttls =
                StartTls::from_bits(f & flags::STARTTLS_MASK).ok_or(PayloadError::Invalid {
                    field: "flags",
                    why: "unknown STARTTLS protocol",
                })?;
            check_host(&host).map_err(|why| PayloadError::Invalid { field: "host", why })?;
            Ok(CertTarget {
                starttls,
                want_cert: f & flags::WANT_CERT != 0,
                want_chain: f & flags::WANT_CHAIN != 0,
                want_details: f & flags::WANT_DETAILS != 0,
                want_params: f & flags::WANT_PARAMS != 0,
                port,
                host,
            })
        })?;
        Ok(CertRequest { targets })
    }

    /// Appends the parameters, refusing what the agent would reject.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let n = u16_count("targets", self.targets.len())?;
        for t in &self.targets {
            check_host(&t.host).map_err(|why| EncodeError::Invalid { field: "host", why })?;
        }
        out.put_u16(n);
        for t in &self.targets {
            out.put_u8(t.flags());
            out.put_u16(t.port);
            put_string(out, "host", &t.host)?;
        }
        Ok(())
    }

    /// Parses the script's output, strictly.
    ///
    /// The output is host blocks, each ending with `-----END HOST-----\n` and starting with
    /// `-----BEGIN HOST-----\n` (else `B`). Inside, sections start with a `-----NAME-----\n`
    /// line and run to the next `-----`; their content is trimmed of spaces, tabs and
    /// newlines. A block with no section (only whitespace) is a service with no certificate.
    /// `CIPHER` and `PROTOCOL` come at most once, before the certificates; a certificate is a
    /// `BEGIN CERTIFICATE` section (its content is the base64 body: the armour lines are not
    /// part of it) directly followed by an empty `END CERTIFICATE` section, then at most one
    /// each of `FINGERPRINT`, `NAME`, `EXPIRY`. Anything else is `B`. Non-empty text after
    /// the last block is `E`; a block count other than the target count is `C`.
    pub fn parse_output(&self, output: &Bytes) -> Result<Vec<CertReply>, u8> {
        if output.is_empty() {
            return if self.targets.is_empty() {
                Ok(Vec::new())
            } else {
                Err(fail::NO_OUTPUT)
            };
        }
        let mut blocks = Vec::with_capacity(self.targets.len());
        let mut at = 0usize;
        while let Some(end) = find(output, END_HOST, at) {
            blocks.push(parse_block(output, at, end).ok_or(fail::BLOCK)?);
            at = end.checked_add(END_HOST.len()).ok_or(fail::BLOCK)?;
        }
        if output.len() > at {
            return Err(fail::TRAILING);
        }
        if blocks.len() != self.targets.len() {
            return Err(fail::HOST_COUNT);
        }
        self.targets
            .iter()
            .zip(blocks)
            .map(|(t, b)| reply_for(t, b).ok_or(fail::BLOCK))
            .collect()
    }

    /// Decodes `O` answer data using the flags of this request.
    pub fn decode_answer(&self, data: Bytes) -> Result<Vec<CertReply>, PayloadError> {
        let mut r = Reader::new(data);
        let mut replies = Vec::with_capacity(self.targets.len());
        for t in &self.targets {
            let count = r.u8("cert count")?;
            let tls = if count > 0 && t.want_params {
                Some(TlsParams {
                    cipher: r.string("cipher")?,
                    protocol: r.string("protocol")?,
                })
            } else {
                None
            };
            let mut certs = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                let value = r.string("cert")?;
                let details = if t.want_details {
                    Some(CertDetails {
                        names: r.string("names")?,
                        expiry: r.string("expiry")?,
                    })
                } else {
                    None
                };
                certs.push(CertEntry { value, details });
            }
            replies.push(CertReply { tls, certs });
        }
        r.finish()?;
        Ok(replies)
    }

    /// Appends `O` answer data for `replies`, which must match the request's flags (one reply
    /// per target; `tls` iff `want_params` and certificates; `details` iff `want_details`;
    /// at most one certificate without `want_chain`, at most 255 with).
    pub fn encode_answer(
        &self,
        replies: &[CertReply],
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let invalid = |why| EncodeError::Invalid {
            field: "replies",
            why,
        };
        if replies.len() != self.targets.len() {
            return Err(invalid("not one reply per target"));
        }
        let mut len = 0usize;
        for (t, r) in self.targets.iter().zip(replies) {
            if r.certs.len() > usize::from(u8::MAX) || (!t.want_chain && r.certs.len() > 1) {
                return Err(invalid(
                    "more certificates than the count byte or flags allow",
                ));
            }
            if r.tls.is_some() != (t.want_params && !r.certs.is_empty()) {
                return Err(invalid("cipher/protocol present against the flags"));
            }
            if r.certs
                .iter()
                .any(|c| c.details.is_some() != t.want_details)
            {
                return Err(invalid("names/expiry present against the flags"));
            }
            len = len.saturating_add(reply_len(r));
        }
        out.reserve(len);
        for r in replies {
            out.put_u8(u8::try_from(r.certs.len()).unwrap_or(u8::MAX));
            if let Some(tls) = &r.tls {
                put_string(out, "cipher", &tls.cipher)?;
                put_string(out, "protocol", &tls.protocol)?;
            }
            for c in &r.certs {
                put_string(out, "cert", &c.value)?;
                if let Some(d) = &c.details {
                    put_string(out, "names", &d.names)?;
                    put_string(out, "expiry", &d.expiry)?;
                }
            }
        }
        Ok(())
    }
}

fn reply_len(r: &CertReply) -> usize {
    let tls = r.tls.as_ref().map_or(0, |t| {
        string_len(&t.cipher).saturating_add(string_len(&t.protocol))
    });
    r.certs.iter().fold(1usize.saturating_add(tls), |acc, c| {
        let d = c.details.as_ref().map_or(0, |d| {
            string_len(&d.names).saturating_add(string_len(&d.expiry))
        });
        acc.saturating_add(string_len(&c.value)).saturating_add(d)
    })
}

/// Parses the block `output[start..end]` (without its END HOST line).
fn parse_block(output: &Bytes, start: usize, end: usize) -> Option<HostBlock> {
    let block = output.get(start..end)?;
    if !block.starts_with(BEGIN_HOST) {
        return None;
    }
    let mut at = start.checked_add(BEGIN_HOST.len())?;
    let mut host = HostBlock::default();
    // Text before the first section must be blank.
    let first = find(output.get(..end)?, DASHES, at).unwrap_or(end);
    if !output.get(at..first)?.iter().all(is_space) {
        return None;
    }
    at = first;
    let mut open_cert = false; // a BEGIN CERTIFICATE awaiting its END CERTIFICATE
    while at < end {
        // A section header line: -----NAME-----\n
        let name_start = at.checked_add(DASHES.len())?;
        let name_end = find(output.get(..end)?, DASHES, name_start)?;
        let name = output.get(name_start..name_end)?;
        let content_start = name_end.checked_add(DASHES.len())?;
        if output.get(content_start..end)?.first() != Some(&b'\n') {
            return None;
        }
        let content_start = content_start.checked_add(1)?;
        let next = find(output.get(..end)?, DASHES, content_start).unwrap_or(end);
        let content = trimmed(output, content_start, next)?;
        at = next;

        if open_cert {
            if name != b"END CERTIFICATE" || !content.is_empty() {
                return None;
            }
            open_cert = false;
            continue;
        }
        let set = |slot: &mut Option<Bytes>| slot.replace(content.clone()).is_none();
        let ok = match name {
            b"CIPHER" if host.certs.is_empty() => set(&mut host.cipher),
            b"PROTOCOL" if host.certs.is_empty() => set(&mut host.protocol),
            b"BEGIN CERTIFICATE" if !content.is_empty() => {
                host.certs.push(RawCert {
                    body: content.clone(),
                    ..RawCert::default()
                });
                open_cert = true;
                true
            }
            b"FINGERPRINT" => host
                .certs
                .last_mut()
                .is_some_and(|c| set(&mut c.fingerprint)),
            b"NAME" => host.certs.last_mut().is_some_and(|c| set(&mut c.names)),
            b"EXPIRY" => host.certs.last_mut().is_some_and(|c| set(&mut c.expiry)),
            _ => false,
        };
        if !ok {
            return None;
        }
    }
    (!open_cert).then_some(host)
}

/// Builds a service's reply from its block and flags; `None` (→ `B`) when the flags need a
/// section the block lacks or the chain does not fit the count byte.
fn reply_for(t: &CertTarget, b: HostBlock) -> Option<CertReply> {
    let count = if t.want_chain {
        b.certs.len()
    } else {
        b.certs.len().min(1)
    };
    if count > usize::from(u8::MAX) {
        return None;
    }
    let tls = if t.want_params && count > 0 {
        Some(TlsParams {
            cipher: b.cipher?,
            protocol: b.protocol?,
        })
    } else {
        None
    };
    let certs = b
        .certs
        .into_iter()
        .take(count)
        .map(|c| {
            let value = if t.want_cert { c.body } else { c.fingerprint? };
            let details = if t.want_details {
                Some(CertDetails {
                    names: c.names?,
                    expiry: c.expiry?,
                })
            } else {
                None
            };
            Some(CertEntry { value, details })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(CertReply { tls, certs })
}

/// How the built-in certificate type runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertConfig {
    /// The POSIX shell that runs [`SCRIPT`]. Default `/bin/sh`.
    pub shell: Bytes,
    /// The openssl command, split into words by the shell. Default `openssl`.
    pub openssl: Bytes,
    /// Per-task timeout; `None` = the agent's default.
    pub timeout: Option<Duration>,
    /// stdout cap. Default [`DEFAULT_OUTPUT_CAP`].
    pub output_cap: usize,
}

impl Default for CertConfig {
    fn default() -> Self {
        CertConfig {
            shell: Bytes::from_static(b"/bin/sh"),
            openssl: Bytes::from_static(b"openssl"),
            timeout: None,
            output_cap: DEFAULT_OUTPUT_CAP,
        }
    }
}

/// The built-in certificate task type.
#[derive(Clone, Debug, Default)]
pub struct Cert {
    pub config: CertConfig,
}

impl Cert {
    pub fn new(config: CertConfig) -> Cert {
        Cert { config }
    }

    /// The process that inspects `req`'s services.
    pub fn spec(&self, req: &CertRequest) -> ProcessSpec {
        let c = &self.config;
        ShellScript {
            shell: &c.shell,
            script: SCRIPT,
            argv0: "tuppence-sniff-cert",
            tool: &c.openssl,
            timeout: c.timeout,
            output_cap: c.output_cap,
        }
        .spec(req.targets.iter().flat_map(|t| {
            [
                t.host.clone(),
                Bytes::from(t.port.to_string()),
                Bytes::from_static(t.starttls.name().as_bytes()),
            ]
        }))
    }
}

impl TaskType for Cert {
    fn type_byte(&self) -> u8 {
        TYPE
    }

    fn start(&self, params: Bytes) -> TaskPlan {
        TaskPlan::run_or_refuse(CertRequest::decode(params), fail::BAD_PARAMS, |req| {
            self.spec(req)
        })
    }
}

impl TaskFinish for CertRequest {
    fn finish(&self, output: TaskOutput) -> Outcome {
        Outcome::from_result(
            output
                .complete_or(fail::SPAWN, fail::READ)
                .and_then(|out| self.parse_output(&out))
                .and_then(|replies| {
                    let mut data = BytesMut::new();
                    self.encode_answer(&replies, &mut data)
                        .map_err(|_| fail::BLOCK)?;
                    Ok(data.freeze())
                }),
        )
    }
}

#[cfg(test)]
mod tests {
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
        let mut want =
            b"\x01\x00\x00\x00\x16TLS_AES_256_GCM_SHA384\x00\x00\x00\x07TLSv1.3".to_vec();
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
}
