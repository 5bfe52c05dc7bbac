//! `n`: is this system behind NAT, per address family?
//!
//! No parameters (anything sent is ignored, as in C). Success data is two bytes, IPv4 then
//! IPv6, each [`NatStatus`]: `'0'` no connectivity, `'N'` NAT, `'D'` direct. Failure data is
//! one code byte, see [`fail`].
//!
//! The C plugin dropped this task in 2017; the format is the one of its last version. The
//! script asks a URL for the address the world sees and compares it with the local
//! addresses; the URL is configurable ([`NatConfig::url`]) because the historical default
//! service may not answer any more.

use std::time::Duration;

use bytes::Bytes;

use super::{
    DEFAULT_OUTPUT_CAP, Outcome, PayloadError, ProcessSpec, TaskFinish, TaskOutput, TaskPlan,
    TaskType, code,
};

/// The NAT type byte.
pub const TYPE: u8 = b'n';

/// The historical address-echo service of the C plugin's script. It answers a GET with the
/// caller's address as plain text; point [`NatConfig::url`] at your own if it does not.
pub const DEFAULT_URL: &str = "https://api.turris.cz/getip.cgi";

/// The script run for a NAT task (POSIX sh, `ip`, `curl`): `sh -c SCRIPT tuppence-sniff-nat
/// CURL URL`. It prints two lines, IPv4 then IPv6: `NONE`, `NAT` or `DIRECT`.
pub const SCRIPT: &str = include_str!("scripts/nat.sh");

/// NAT failure codes (the C plugin's `S M U`, plus the agent's limits from [`code`]).
pub mod fail {
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

/// The parameters of a NAT request (there are none; kept so the finish state has a type).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatRequest;

impl TaskFinish for NatRequest {
    fn finish(&self, output: TaskOutput) -> Outcome {
        let code = match output {
            TaskOutput::Complete(out) => match NatReply::parse_output(&out) {
                Ok(reply) => return Outcome::success(Bytes::copy_from_slice(&reply.encode())),
                Err(code) => code,
            },
            TaskOutput::SpawnFailed => fail::SPAWN,
            TaskOutput::ReadFailed => fail::MISSING,
            TaskOutput::TimedOut => code::TIMEOUT,
            TaskOutput::OutputTooLarge => code::OUTPUT_TOO_LARGE,
            TaskOutput::TooManyTasks => code::TOO_MANY_TASKS,
        };
        Outcome::failure_code(code)
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

    /// The process that runs the check.
    pub fn spec(&self) -> ProcessSpec {
        let args = vec![
            Bytes::from_static(b"-c"),
            Bytes::from_static(SCRIPT.as_bytes()),
            Bytes::from_static(b"tuppence-sniff-nat"),
            self.config.curl.clone(),
            self.config.url.clone(),
        ];
        ProcessSpec {
            timeout: self.config.timeout,
            output_cap: self.config.output_cap,
            ..ProcessSpec::new(self.config.shell.clone(), args)
        }
    }
}

impl TaskType for Nat {
    fn type_byte(&self) -> u8 {
        TYPE
    }

    fn start(&self, _params: Bytes) -> TaskPlan {
        TaskPlan::Run {
            spec: self.spec(),
            finish: Box::new(NatRequest),
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

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
        for (o, c) in [
            (TaskOutput::SpawnFailed, b'S'),
            (TaskOutput::ReadFailed, b'M'),
            (TaskOutput::Complete(Bytes::new()), b'M'),
            (TaskOutput::Complete(Bytes::from_static(b"X\nY\n")), b'U'),
            (TaskOutput::TimedOut, b'T'),
            (TaskOutput::OutputTooLarge, b'L'),
            (TaskOutput::TooManyTasks, b'Q'),
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
    fn params_are_ignored_and_the_url_is_configurable() {
        let nat = Nat::new(NatConfig {
            url: Bytes::from_static(b"http://192.0.2.1/ip"),
            ..NatConfig::default()
        });
        let TaskPlan::Run { spec, .. } = nat.start(Bytes::from_static(b"whatever")) else {
            panic!()
        };
        assert_eq!(&spec.args[3][..], b"curl");
        assert_eq!(&spec.args[4][..], b"http://192.0.2.1/ip");
        assert_eq!(&Nat::default().spec().args[4][..], DEFAULT_URL.as_bytes());
    }
}
