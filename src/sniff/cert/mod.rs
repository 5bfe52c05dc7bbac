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
pub const SCRIPT: &str = include_str!("../scripts/cert.sh");

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
mod tests;
