//! `n`: is this system behind NAT, per address family?
//!
//! Parameters: none, as the C plugin's server sent; or, an extension, one `url` string
//! ([`NatParams`]) naming the address service to ask instead of the agent's configured one.
//! Success data is two bytes, IPv4 then IPv6, each [`NatStatus`]: `'0'` no connectivity,
//! `'N'` NAT, `'D'` direct. Failure data is one code byte, see [`fail`].
//!
//! The C plugin dropped this task in 2017; the format is the one of its last version. The
//! script asks a URL for the address the world sees and compares it with the local
//! addresses; the URL is configurable ([`NatConfig::url`]) because the historical default
//! service may not answer any more, and a server may name its own per request because only
//! it knows which service its network can reach (a test rig's, say).
//!
//! Differences from the C plugin, on purpose: C ignored any parameters. Here parameters
//! that are not exactly one acceptable URL string ([`NatParams::decode`]) are refused with
//! `I`, so a mistyped URL never silently falls back to the default service. Servers of the C
//! era sent no parameters, and C agents ignore the URL, so both directions stay compatible.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::reader::{Reader, put_string};
use super::task::ShellScript;
use super::{
    DEFAULT_OUTPUT_CAP, EncodeError, Outcome, PayloadError, ProcessSpec, TaskFinish, TaskOutput,
    TaskPlan, TaskType, code,
};

/// The NAT type byte.
pub const TYPE: u8 = b'n';

/// The historical address-echo service of the C plugin's script. It answers a GET with the
/// caller's address as plain text; point [`NatConfig::url`] at your own if it does not.
pub const DEFAULT_URL: &str = "https://api.turris.cz/getip.cgi";

/// Longest URL accepted in [`NatParams`].
pub const MAX_URL_LEN: usize = 2048;

/// The script run for a NAT task (POSIX sh, `ip`, `curl`): `sh -c SCRIPT tuppence-sniff-nat
/// CURL URL`. It prints two lines, IPv4 then IPv6: `NONE`, `NAT` or `DIRECT`.
pub const SCRIPT: &str = include_str!("scripts/nat.sh");

/// NAT failure codes (the C plugin's `S M U`, `I` for the URL extension, plus the agent's
/// limits from [`code`]).
pub mod fail {
    /// `I`: the parameters are not one acceptable URL (answered at once, nothing runs).
    pub const BAD_PARAMS: u8 = b'I';
    /// `S`: the process could not be started.
    pub const SPAWN: u8 = b'S';
    /// `M`: a line is missing (also used when reading the output failed: the C plugin had
    /// no code for that and nothing was read).
    pub const MISSING: u8 = b'M';
    /// `U`: a line holds an unknown word.
    pub const UNKNOWN: u8 = b'U';
    pub use super::code::{OUTPUT_TOO_LARGE, TIMEOUT, TOO_MANY_TASKS};
}

/// What the check found for one address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NatStatus {
    /// `'0'` (`NONE`): the address service could not be reached over this family.
    None,
    /// `'N'` (`NAT`): the world sees an address this system does not have.
    Nat,
    /// `'D'` (`DIRECT`): the world sees one of this system's own addresses.
    Direct,
}

impl NatStatus {
    pub const fn byte(self) -> u8 {
        match self {
            NatStatus::None => b'0',
            NatStatus::Nat => b'N',
            NatStatus::Direct => b'D',
        }
    }

    pub const fn from_byte(b: u8) -> Option<NatStatus> {
        match b {
            b'0' => Some(NatStatus::None),
            b'N' => Some(NatStatus::Nat),
            b'D' => Some(NatStatus::Direct),
            _ => None,
        }
    }

    /// The script's word for it.
    fn from_word(w: &[u8]) -> Option<NatStatus> {
        match w {
            b"NONE" => Some(NatStatus::None),
            b"NAT" => Some(NatStatus::Nat),
            b"DIRECT" => Some(NatStatus::Direct),
            _ => None,
        }
    }
}

/// The result of a NAT task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NatReply {
    pub ipv4: NatStatus,
    pub ipv6: NatStatus,
}

impl NatReply {
    /// The two data bytes of the `O` answer.
    pub fn encode(&self) -> [u8; 2] {
        [self.ipv4.byte(), self.ipv6.byte()]
    }

    /// Decodes `O` answer data: exactly two status bytes.
    pub fn decode(data: &[u8]) -> Result<NatReply, PayloadError> {
        let family = |field, b: Option<&u8>| {
            let b = *b.ok_or(PayloadError::Truncated {
                field,
                need: 1,
                have: 0,
            })?;
            NatStatus::from_byte(b).ok_or(PayloadError::Invalid {
                field,
                why: "not '0', 'N' or 'D'",
            })
        };
        let reply = NatReply {
            ipv4: family("ipv4", data.first())?,
            ipv6: family("ipv6", data.get(1))?,
        };
        match data.len() {
            2 => Ok(reply),
            n => Err(PayloadError::TrailingBytes {
                extra: n.saturating_sub(2),
            }),
        }
    }

    /// Parses the script's output the way the C plugin did: the first two non-empty lines
    /// (empty lines collapse), IPv4 then IPv6; further lines are ignored. A missing line is
    /// `M`, an unknown word `U`; when both families fail, the IPv6 failure is reported.
    pub fn parse_output(output: &[u8]) -> Result<NatReply, u8> {
        let mut lines = output.split(|&b| b == b'\n').filter(|l| !l.is_empty());
        let mut family = || match lines.next() {
            None => Err(fail::MISSING),
            Some(w) => NatStatus::from_word(w).ok_or(fail::UNKNOWN),
        };
        let ipv4 = family();
        let ipv6 = family();
        match (ipv4, ipv6) {
            (Ok(ipv4), Ok(ipv6)) => Ok(NatReply { ipv4, ipv6 }),
            (_, Err(e)) | (Err(e), _) => Err(e),
        }
    }
}

/// The parameters of a NAT request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatParams {
    /// The address service to ask; `None` (no parameters on the wire) = the agent's
    /// [`NatConfig::url`].
    pub url: Option<Bytes>,
}

/// Why a URL is refused: it goes to curl as an argument, so it must not look like an option
/// or hide a second word, and only HTTP(S) services answer the way the script expects.
fn check_url(url: &[u8]) -> Result<(), &'static str> {
    if url.len() > MAX_URL_LEN {
        return Err("longer than MAX_URL_LEN");
    }
    let scheme_ok = [&b"http://"[..], b"https://"].iter().any(|p| {
        url.get(..p.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(p))
    });
    if !scheme_ok {
        return Err("not an http:// or https:// URL");
    }
    if url.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err("contains a space or control character");
    }
    Ok(())
}

impl NatParams {
    /// Parses NAT parameters: nothing, or exactly one `url` string that starts with
    /// `http://` or `https://` (any case), holds no space or control byte and is at most
    /// [`MAX_URL_LEN`] bytes. Unlike ping and certificate parameters, trailing bytes are an
    /// error: this layout is new, so there is no old sender to be lenient with.
    pub fn decode(params: Bytes) -> Result<NatParams, PayloadError> {
        if params.is_empty() {
            return Ok(NatParams::default());
        }
        let mut r = Reader::new(params);
        let url = r.string("url")?;
        r.finish()?;
        check_url(&url).map_err(|why| PayloadError::Invalid { field: "url", why })?;
        Ok(NatParams { url: Some(url) })
    }

    /// Appends the parameters (nothing without a URL), refusing a URL the agent would reject.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let Some(url) = &self.url else {
            return Ok(());
        };
        check_url(url).map_err(|why| EncodeError::Invalid { field: "url", why })?;
        put_string(out, "url", url)
    }
}

/// The finish state of a NAT task (the answer depends on nothing from the request).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatRequest;

impl TaskFinish for NatRequest {
    fn finish(&self, output: TaskOutput) -> Outcome {
        Outcome::from_result(
            output
                .complete_or(fail::SPAWN, fail::MISSING)
                .and_then(|out| NatReply::parse_output(&out))
                .map(|reply| Bytes::copy_from_slice(&reply.encode())),
        )
    }
}

/// How the built-in NAT type runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatConfig {
    /// The POSIX shell that runs [`SCRIPT`]. Default `/bin/sh`.
    pub shell: Bytes,
    /// The curl command, split into words by the shell. Default `curl`.
    pub curl: Bytes,
    /// Where to ask for the public address. Default [`DEFAULT_URL`].
    pub url: Bytes,
    /// Per-task timeout; `None` = the agent's default (the script gives each curl 30 s).
    pub timeout: Option<Duration>,
    /// stdout cap. Default [`DEFAULT_OUTPUT_CAP`].
    pub output_cap: usize,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            shell: Bytes::from_static(b"/bin/sh"),
            curl: Bytes::from_static(b"curl"),
            url: Bytes::from_static(DEFAULT_URL.as_bytes()),
            timeout: None,
            output_cap: DEFAULT_OUTPUT_CAP,
        }
    }
}

/// The built-in NAT task type.
#[derive(Clone, Debug, Default)]
pub struct Nat {
    pub config: NatConfig,
}

impl Nat {
    pub fn new(config: NatConfig) -> Nat {
        Nat { config }
    }

    /// The process that runs the check against the configured URL.
    pub fn spec(&self) -> ProcessSpec {
        self.spec_for(&self.config.url)
    }

    /// The process that runs the check against `url`.
    pub fn spec_for(&self, url: &Bytes) -> ProcessSpec {
        let c = &self.config;
        ShellScript {
            shell: &c.shell,
            script: SCRIPT,
            argv0: "tuppence-sniff-nat",
            tool: &c.curl,
            timeout: c.timeout,
            output_cap: c.output_cap,
        }
        .spec([url.clone()])
    }
}

impl TaskType for Nat {
    fn type_byte(&self) -> u8 {
        TYPE
    }

    fn start(&self, params: Bytes) -> TaskPlan {
        let spec = match NatParams::decode(params) {
            Ok(NatParams { url: Some(url) }) => self.spec_for(&url),
            Ok(NatParams { url: None }) => self.spec(),
            Err(_) => return TaskPlan::Answer(Outcome::failure_code(fail::BAD_PARAMS)),
        };
        TaskPlan::Run {
            spec,
            finish: Box::new(NatRequest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sniff::test_support::{answered, assert_endings, spec_of};

    #[test]
    fn output_parses_like_strtok() {
        let ok = |s: &str| NatReply::parse_output(s.as_bytes());
        assert_eq!(
            ok("NAT\nNONE\n"),
            Ok(NatReply {
                ipv4: NatStatus::Nat,
                ipv6: NatStatus::None
            })
        );
        assert_eq!(
            ok("\n\nDIRECT\n\nNAT\nextra\n"),
            Ok(NatReply {
                ipv4: NatStatus::Direct,
                ipv6: NatStatus::Nat
            })
        );
        assert_eq!(
            ok("NONE\nDIRECT"),
            Ok(NatReply {
                ipv4: NatStatus::None,
                ipv6: NatStatus::Direct
            })
        );
        assert_eq!(ok(""), Err(b'M'));
        assert_eq!(ok("NAT\n"), Err(b'M'));
        assert_eq!(ok("nat\nNAT\n"), Err(b'U'));
        assert_eq!(ok("NAT\nNAT \n"), Err(b'U'));
        assert_eq!(ok("BOGUS\n"), Err(b'M'), "the IPv6 failure wins");
        assert_eq!(ok("NAT\nBOGUS\n"), Err(b'U'));
    }

    #[test]
    fn finish_codes_and_answer_bytes() {
        let f = |o| NatRequest.finish(o);
        assert_eq!(
            f(TaskOutput::Complete(Bytes::from_static(b"NAT\nNONE\n"))),
            Outcome::success(Bytes::from_static(b"N0"))
        );
        assert_endings(&NatRequest, b'S', b'M');
        for (o, c) in [
            (TaskOutput::Complete(Bytes::new()), b'M'),
            (TaskOutput::Complete(Bytes::from_static(b"X\nY\n")), b'U'),
        ] {
            assert_eq!(f(o), Outcome::failure_code(c));
        }
    }

    #[test]
    fn answer_decode_is_strict() {
        let r = NatReply {
            ipv4: NatStatus::Direct,
            ipv6: NatStatus::Nat,
        };
        assert_eq!(NatReply::decode(&r.encode()), Ok(r));
        assert!(NatReply::decode(b"").is_err());
        assert!(NatReply::decode(b"N").is_err());
        assert!(NatReply::decode(b"NX").is_err());
        assert!(NatReply::decode(b"NNN").is_err());
    }

    #[test]
    fn the_url_is_configurable_and_a_request_may_name_its_own() {
        let nat = Nat::new(NatConfig {
            url: Bytes::from_static(b"http://192.0.2.1/ip"),
            ..NatConfig::default()
        });
        let spec = spec_of(nat.start(Bytes::new()));
        assert_eq!(&spec.args[3][..], b"curl");
        assert_eq!(&spec.args[4][..], b"http://192.0.2.1/ip");
        assert_eq!(&Nat::default().spec().args[4][..], DEFAULT_URL.as_bytes());

        let mut p = BytesMut::new();
        NatParams {
            url: Some(Bytes::from_static(b"HTTPS://127.0.0.1:8080/getip")),
        }
        .encode(&mut p)
        .unwrap();
        assert_eq!(&p[..4], b"\x00\x00\x00\x1c");
        let spec = spec_of(nat.start(p.freeze()));
        assert_eq!(&spec.args[4][..], b"HTTPS://127.0.0.1:8080/getip");
    }

    #[test]
    fn bad_params_answer_i() {
        let string = |s: &[u8]| {
            let mut b = (s.len() as u32).to_be_bytes().to_vec();
            b.extend_from_slice(s);
            b
        };
        let mut trailing = string(b"http://a/");
        trailing.push(0);
        let long = string(&[b"http://".as_slice(), &[b'a'; MAX_URL_LEN]].concat());
        for bad in [
            b"whatever".to_vec(),
            b"\x00\x00\x00\x05http".to_vec(),
            trailing,
            string(b"ftp://a/"),
            string(b"-o/etc/passwd"),
            string(b"http://a/ b"),
            string(b"http://a/\nb"),
            string(b"http://a/\x7f"),
            long,
        ] {
            let plan = Nat::default().start(Bytes::from(bad.clone()));
            assert_eq!(answered(plan), Outcome::failure_code(b'I'), "{bad:?}");
        }
        for bad in [&b"ftp://a/"[..], b"http://a b"] {
            let p = NatParams {
                url: Some(Bytes::copy_from_slice(bad)),
            };
            assert!(p.encode(&mut BytesMut::new()).is_err());
        }
        let mut none = BytesMut::new();
        NatParams::default().encode(&mut none).unwrap();
        assert!(none.is_empty());
        assert_eq!(NatParams::decode(Bytes::new()), Ok(NatParams::default()));
    }
}
