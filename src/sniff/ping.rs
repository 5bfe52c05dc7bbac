//! `P`: ping hosts and report each reply's round-trip time.
//!
//! Parameters: `u16 n`, then n × `{ family u8 ('4'|'6'|'X') | count u8 | size u16 | host }`
//! (strings are u32 length + bytes). Success data, per host in request order: `ip` string; if
//! it is empty the host did not resolve and nothing follows, else `count × u32` round-trip
//! times in µs, [`LOST`] for a reply that never came. Failure data is one code byte, see
//! [`fail`].
//!
//! Differences from the C plugin, on purpose: `count = 0` is refused as bad parameters
//! (`ping -c 0` pings forever in busybox), and so is a host containing a NUL byte (C would
//! silently cut it there). Hosts are passed to the script as arguments, never through `eval`,
//! so quotes in a host name are harmless. Bytes after the last target are ignored, as in C.
//! Round-trip times are the printed milliseconds truncated to whole µs in exact decimal
//! (C multiplies a `double`, which can come out 1 µs lower, e.g. 1.001 ms → 1000 µs).

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::reader::{Reader, put_string, string_len, u16_count};
use super::task::{ShellScript, check_host};
use super::{
    DEFAULT_OUTPUT_CAP, EncodeError, Outcome, PayloadError, ProcessSpec, TaskFinish, TaskOutput,
    TaskPlan, TaskType, code,
};

/// The ping type byte.
pub const TYPE: u8 = b'P';

/// The round-trip time sent for a reply that never came.
pub const LOST: u32 = 0xFFFF_FFFF;

/// The script run for a ping task (POSIX sh): `sh -c SCRIPT tuppence-sniff-ping PING_COMMAND
/// {FAMILY COUNT SIZE HOST}…`. It prints one line per host, `IP 0:0.038 1:0.057 END`,
/// `IP END` (no replies) or `END` (unresolved), for iputils and busybox ping alike.
pub const SCRIPT: &str = include_str!("scripts/ping.sh");

/// Ping failure codes (the C plugin's, plus the agent's limits from [`code`]).
pub mod fail {
    /// `I`: the parameters do not parse (answered at once, nothing runs).
    pub const BAD_PARAMS: u8 = b'I';
    /// `F`: the process could not be started.
    pub const SPAWN: u8 = b'F';
    /// `P`: reading the output failed.
    pub const READ: u8 = b'P';
    /// `R`: hosts were requested but the output is empty (e.g. exec failed).
    pub const NO_OUTPUT: u8 = b'R';
    /// `O`: the output does not follow the line format.
    pub const MALFORMED: u8 = b'O';
    pub use super::code::{OUTPUT_TOO_LARGE, TIMEOUT, TOO_MANY_TASKS};
}

/// Address family to ping with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// `'4'`
    V4,
    /// `'6'`
    V6,
    /// `'X'`: whatever the host resolves to.
    Any,
}

impl Family {
    /// The wire byte, which is also the script argument.
    pub const fn byte(self) -> u8 {
        match self {
            Family::V4 => b'4',
            Family::V6 => b'6',
            Family::Any => b'X',
        }
    }

    pub const fn from_byte(b: u8) -> Option<Family> {
        match b {
            b'4' => Some(Family::V4),
            b'6' => Some(Family::V6),
            b'X' => Some(Family::Any),
            _ => None,
        }
    }
}

/// One host to ping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PingTarget {
    pub family: Family,
    /// Echo requests to send, 1..=255.
    pub count: u8,
    /// Payload size passed to `ping -s`.
    pub size: u16,
    pub host: Bytes,
}

/// The parameters of a ping request.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PingRequest {
    pub targets: Vec<PingTarget>,
}

/// The result for one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PingReply {
    /// The address pinged; empty when the host did not resolve.
    pub ip: Bytes,
    /// One entry per echo request (none when unresolved): µs, or `None` when lost.
    pub rtt_us: Vec<Option<u32>>,
}

impl PingReply {
    /// A host that did not resolve.
    pub fn unresolved() -> PingReply {
        PingReply {
            ip: Bytes::new(),
            rtt_us: Vec::new(),
        }
    }

    pub fn is_resolved(&self) -> bool {
        !self.ip.is_empty()
    }
}

/// Smallest wire size of one target (family, count, size, empty host): bounds the
/// preallocation for a claimed target count.
const MIN_TARGET_LEN: usize = 8;

impl PingRequest {
    /// Parses ping parameters. Bytes after the last target are ignored (as the C plugin does).
    pub fn decode(params: Bytes) -> Result<PingRequest, PayloadError> {
        let mut r = Reader::new(params);
        let targets = r.counted("target count", MIN_TARGET_LEN, |r| {
            let family = r.u8("family")?;
            let count = r.u8("count")?;
            let size = r.u16("size")?;
            let host = r.string("host")?;
            let family = Family::from_byte(family).ok_or(PayloadError::Invalid {
                field: "family",
                why: "not '4', '6' or 'X'",
            })?;
            if count == 0 {
                return Err(PayloadError::Invalid {
                    field: "count",
                    why: "0 would ping forever",
                });
            }
            check_host(&host).map_err(|why| PayloadError::Invalid { field: "host", why })?;
            Ok(PingTarget {
                family,
                count,
                size,
                host,
            })
        })?;
        Ok(PingRequest { targets })
    }

    /// Appends the parameters, refusing what the agent would reject.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let n = u16_count("targets", self.targets.len())?;
        for t in &self.targets {
            if t.count == 0 {
                return Err(EncodeError::Invalid {
                    field: "count",
                    why: "0 would ping forever",
                });
            }
            check_host(&t.host).map_err(|why| EncodeError::Invalid { field: "host", why })?;
        }
        out.put_u16(n);
        for t in &self.targets {
            out.put_u8(t.family.byte());
            out.put_u8(t.count);
            out.put_u16(t.size);
            put_string(out, "host", &t.host)?;
        }
        Ok(())
    }

    /// Parses the script's output, strictly (as the C plugin's parser): exactly one `\n`-terminated line
    /// per target and nothing after; `END` alone for an unresolved host, else
    /// `IP {SEQ:MS }… END` with at most `count` reply tokens, each `SEQ < count`. A repeated
    /// sequence number overwrites the earlier time. Returns the failure code otherwise.
    pub fn parse_output(&self, output: &Bytes) -> Result<Vec<PingReply>, u8> {
        if output.is_empty() {
            return if self.targets.is_empty() {
                Ok(Vec::new())
            } else {
                Err(fail::NO_OUTPUT)
            };
        }
        let body = output.strip_suffix(b"\n").ok_or(fail::MALFORMED)?;
        let mut lines = body.split(|&b| b == b'\n');
        let mut replies = Vec::with_capacity(self.targets.len());
        for t in &self.targets {
            let line = lines.next().ok_or(fail::MALFORMED)?;
            replies.push(parse_line(t, output, line).ok_or(fail::MALFORMED)?);
        }
        if lines.next().is_some() {
            return Err(fail::MALFORMED);
        }
        Ok(replies)
    }

    /// Decodes `O` answer data; the answer is not self-describing, so it needs the request's
    /// counts.
    pub fn decode_answer(&self, data: Bytes) -> Result<Vec<PingReply>, PayloadError> {
        let mut r = Reader::new(data);
        let mut replies = Vec::with_capacity(self.targets.len());
        for t in &self.targets {
            let ip = r.string("ip")?;
            if ip.is_empty() {
                replies.push(PingReply::unresolved());
                continue;
            }
            let mut rtt_us = Vec::with_capacity(usize::from(t.count));
            for _ in 0..t.count {
                let v = r.u32("rtt")?;
                rtt_us.push((v != LOST).then_some(v));
            }
            replies.push(PingReply { ip, rtt_us });
        }
        r.finish()?;
        Ok(replies)
    }

    /// Appends `O` answer data for `replies`, which must match the request: one reply per
    /// target, and a resolved one holds exactly `count` times (an unresolved one none), since
    /// the reader of the answer relies on the counts it asked for.
    pub fn encode_answer(
        &self,
        replies: &[PingReply],
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        if replies.len() != self.targets.len() {
            return Err(EncodeError::Invalid {
                field: "replies",
                why: "not one reply per target",
            });
        }
        for (t, r) in self.targets.iter().zip(replies) {
            let want = if r.is_resolved() {
                usize::from(t.count)
            } else {
                0
            };
            if r.rtt_us.len() != want {
                return Err(EncodeError::Invalid {
                    field: "rtt_us",
                    why: "not `count` times for a resolved host, or times for an unresolved one",
                });
            }
        }
        out.reserve(answer_len(replies));
        for r in replies {
            put_string(out, "ip", &r.ip)?;
            for v in &r.rtt_us {
                out.put_u32(v.unwrap_or(LOST));
            }
        }
        Ok(())
    }
}

/// Bytes [`PingRequest::encode_answer`] writes for `replies`, saturating.
pub fn answer_len(replies: &[PingReply]) -> usize {
    replies.iter().fold(0usize, |acc, r| {
        acc.saturating_add(string_len(&r.ip))
            .saturating_add(r.rtt_us.len().saturating_mul(4))
    })
}

fn parse_line(t: &PingTarget, output: &Bytes, line: &[u8]) -> Option<PingReply> {
    let mut words = line.split(|&b| b == b' ');
    let first = words.next()?;
    if first == b"END" {
        return words.next().is_none().then(PingReply::unresolved);
    }
    if first.is_empty() {
        return None;
    }
    let count = usize::from(t.count);
    let mut rtt_us = vec![None; count];
    let mut ended = false;
    // IP, at most `count` tokens, END: more words than that is malformed (as in C).
    for (n, w) in words.enumerate() {
        if ended || n > count {
            return None;
        }
        if w == b"END" {
            ended = true;
            continue;
        }
        let (seq, us) = parse_token(w)?;
        *rtt_us.get_mut(seq)? = Some(us);
    }
    ended.then(|| PingReply {
        ip: output.slice_ref(first),
        rtt_us,
    })
}

/// `SEQ:MS` → (seq, µs).
fn parse_token(w: &[u8]) -> Option<(usize, u32)> {
    let colon = w.iter().position(|&b| b == b':')?;
    let seq = parse_decimal(w.get(..colon)?)?;
    let ms = w.get(colon.checked_add(1)?..)?;
    Some((usize::try_from(seq).ok()?, parse_ms(ms)?))
}

fn digit(b: u8) -> Option<u64> {
    char::from(b).to_digit(10).map(u64::from)
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter()
        .try_fold(0u64, |acc, &b| acc.checked_mul(10)?.checked_add(digit(b)?))
}

/// `DIGITS[.DIGITS]` milliseconds → µs truncated, exact decimal. `None` if it does not parse,
/// overflows, or equals the [`LOST`] marker.
fn parse_ms(s: &[u8]) -> Option<u32> {
    let (int, frac) = match s.iter().position(|&b| b == b'.') {
        Some(dot) => {
            let frac = s.get(dot.checked_add(1)?..)?;
            if frac.is_empty() {
                return None;
            }
            (s.get(..dot)?, frac)
        }
        None => (s, &[][..]),
    };
    let mut us = parse_decimal(int)?.checked_mul(1000)?;
    let mut scale = 100u64;
    for (i, &b) in frac.iter().enumerate() {
        let d = digit(b)?;
        if i < 3 {
            us = us.checked_add(d.checked_mul(scale)?)?;
            scale /= 10;
        }
    }
    u32::try_from(us).ok().filter(|&v| v != LOST)
}

/// How the built-in ping type runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PingConfig {
    /// The POSIX shell that runs [`SCRIPT`]. Default `/bin/sh`.
    pub shell: Bytes,
    /// The ping command, split into words by the shell: `ping` (default; iputils or busybox
    /// applet) or e.g. `busybox ping`.
    pub ping: Bytes,
    /// Per-task timeout; `None` = the agent's default.
    pub timeout: Option<Duration>,
    /// stdout cap. Default [`DEFAULT_OUTPUT_CAP`].
    pub output_cap: usize,
}

impl Default for PingConfig {
    fn default() -> Self {
        PingConfig {
            shell: Bytes::from_static(b"/bin/sh"),
            ping: Bytes::from_static(b"ping"),
            timeout: None,
            output_cap: DEFAULT_OUTPUT_CAP,
        }
    }
}

/// The built-in ping task type.
#[derive(Clone, Debug, Default)]
pub struct Ping {
    pub config: PingConfig,
}

impl Ping {
    pub fn new(config: PingConfig) -> Ping {
        Ping { config }
    }

    /// The process that pings `req`'s targets.
    pub fn spec(&self, req: &PingRequest) -> ProcessSpec {
        let c = &self.config;
        ShellScript {
            shell: &c.shell,
            script: SCRIPT,
            argv0: "tuppence-sniff-ping",
            tool: &c.ping,
            timeout: c.timeout,
            output_cap: c.output_cap,
        }
        .spec(req.targets.iter().flat_map(|t| {
            [
                Bytes::copy_from_slice(&[t.family.byte()]),
                Bytes::from(t.count.to_string()),
                Bytes::from(t.size.to_string()),
                t.host.clone(),
            ]
        }))
    }
}

impl TaskType for Ping {
    fn type_byte(&self) -> u8 {
        TYPE
    }

    fn start(&self, params: Bytes) -> TaskPlan {
        TaskPlan::run_or_refuse(PingRequest::decode(params), fail::BAD_PARAMS, |req| {
            self.spec(req)
        })
    }
}

impl TaskFinish for PingRequest {
    fn finish(&self, output: TaskOutput) -> Outcome {
        Outcome::from_result(
            output
                .complete_or(fail::SPAWN, fail::READ)
                .and_then(|out| self.parse_output(&out))
                .and_then(|replies| {
                    let mut data = BytesMut::new();
                    self.encode_answer(&replies, &mut data)
                        .map_err(|_| fail::MALFORMED)?;
                    Ok(data.freeze())
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sniff::test_support::{answered, assert_endings, spec_of};

    fn target(family: Family, count: u8, host: &'static [u8]) -> PingTarget {
        PingTarget {
            family,
            count,
            size: 56,
            host: Bytes::from_static(host),
        }
    }

    fn req(targets: Vec<PingTarget>) -> PingRequest {
        PingRequest { targets }
    }

    fn out(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn params_parse_by_hand() {
        let p = b"\x00\x02\
            4\x03\x00\x38\x00\x00\x00\x09127.0.0.1\
            6\x01\x01\x00\x00\x00\x00\x03::1";
        let r = PingRequest::decode(Bytes::from_static(p)).unwrap();
        assert_eq!(
            r.targets,
            vec![
                target(Family::V4, 3, b"127.0.0.1"),
                PingTarget {
                    size: 256,
                    ..target(Family::V6, 1, b"::1")
                }
            ]
        );
        let mut enc = BytesMut::new();
        r.encode(&mut enc).unwrap();
        assert_eq!(&enc[..], &p[..]);
        // Trailing junk is ignored, as in C.
        let mut junk = p.to_vec();
        junk.extend_from_slice(b"junk");
        assert_eq!(PingRequest::decode(Bytes::from(junk)).unwrap(), r);
        assert_eq!(
            PingRequest::decode(Bytes::from_static(b"\x00\x00")).unwrap(),
            PingRequest::default()
        );
    }

    #[test]
    fn bad_params_are_typed_and_answer_i() {
        let cases: [(&[u8], &str); 7] = [
            (b"", "target count"),
            (b"\x00", "target count"),
            (b"\x00\x01", "family"),
            (b"\x00\x01" as &[u8], "family"),
            (b"\x00\x01Z\x01\x00\x00\x00\x00\x00\x00", "family"),
            (b"\x00\x014\x00\x00\x00\x00\x00\x00\x00", "count"),
            (b"\x00\x014\x01\x00\x00\x00\x00\x00\x02a\x00", "host"),
        ];
        for (p, field) in cases {
            let e = PingRequest::decode(Bytes::copy_from_slice(p)).unwrap_err();
            match e {
                PayloadError::Truncated { field: f, .. }
                | PayloadError::Invalid { field: f, .. } => {
                    assert_eq!(f, field, "{p:?}")
                }
                other => panic!("{other:?}"),
            }
            let plan = Ping::default().start(Bytes::copy_from_slice(p));
            assert_eq!(answered(plan), Outcome::failure_code(b'I'), "{p:?}");
        }
        // A string longer than the message.
        let e = PingRequest::decode(Bytes::from_static(
            b"\x00\x014\x01\x00\x00\xff\xff\xff\xffab",
        ))
        .unwrap_err();
        assert!(matches!(e, PayloadError::Truncated { field: "host", .. }));
    }

    #[test]
    fn encode_refuses_what_the_agent_rejects() {
        let mut o = BytesMut::new();
        assert!(
            req(vec![target(Family::V4, 0, b"h")])
                .encode(&mut o)
                .is_err()
        );
        assert!(
            req(vec![target(Family::V4, 1, b"h\0")])
                .encode(&mut o)
                .is_err()
        );
        assert!(o.is_empty());
    }

    #[test]
    fn spec_runs_the_script_with_one_quadruple_per_host() {
        let r = req(vec![target(Family::Any, 2, b"it's.example")]);
        let mut b = BytesMut::new();
        r.encode(&mut b).unwrap();
        let spec = spec_of(Ping::default().start(b.freeze()));
        assert_eq!(&spec.program[..], b"/bin/sh");
        let args: Vec<&[u8]> = spec.args.iter().map(|a| &a[..]).collect();
        assert_eq!(args[0], b"-c");
        assert_eq!(args[1], SCRIPT.as_bytes());
        assert_eq!(
            &args[2..],
            [
                &b"tuppence-sniff-ping"[..],
                b"ping",
                b"X",
                b"2",
                b"56",
                b"it's.example"
            ]
        );
    }

    #[test]
    fn output_parses_resolved_lost_and_unresolved() {
        let r = req(vec![
            target(Family::V4, 3, b"a"),
            target(Family::V4, 2, b"b"),
            target(Family::V6, 2, b"c"),
        ]);
        let got = r
            .parse_output(&out("127.0.0.1 0:0.038 1:0.057 END\nEND\n::1 END\n"))
            .unwrap();
        assert_eq!(
            got,
            vec![
                PingReply {
                    ip: out("127.0.0.1"),
                    rtt_us: vec![Some(38), Some(57), None]
                },
                PingReply::unresolved(),
                PingReply {
                    ip: out("::1"),
                    rtt_us: vec![None, None]
                },
            ]
        );
        // Out-of-order and duplicate sequence numbers (the later one wins).
        let r1 = req(vec![target(Family::V4, 2, b"a")]);
        assert_eq!(
            r1.parse_output(&out("10.0.0.1 1:12 1:1.0019 END\n"))
                .unwrap()[0]
                .rtt_us,
            vec![None, Some(1001)]
        );
        // No targets and no output: success with no data.
        assert_eq!(req(vec![]).parse_output(&Bytes::new()), Ok(vec![]));
    }

    #[test]
    fn output_failures_follow_the_c_codes() {
        let r = req(vec![target(Family::V4, 2, b"a")]);
        assert_eq!(r.parse_output(&Bytes::new()), Err(b'R'));
        for bad in [
            "1.2.3.4 0:1 END",             // no final newline
            "1.2.3.4 0:1 END\n\n",         // an extra line
            "1.2.3.4 0:1 END\nEND\n",      // more lines than targets
            "1.2.3.4 0:1 1:2 0:3 END\n",   // more than count+2 words
            "1.2.3.4 0:1\n",               // no END
            "1.2.3.4 END 0:1\n",           // END not last
            "1.2.3.4 2:1 END\n",           // seq >= count
            "1.2.3.4 0:x END\n",           // bad time
            "1.2.3.4 0:1. END\n",          // bad time
            "1.2.3.4 x:1 END\n",           // bad seq
            "1.2.3.4 01 END\n",            // no colon
            "1.2.3.4  0:1 END\n",          // empty word
            " 0:1 END\n",                  // empty ip
            "END junk\n",                  // unresolved with more words
            "BAD INPUT\n",                 // the C script's quote guard
            "1.2.3.4 0:4294967.295 END\n", // the LOST marker itself
            "1.2.3.4 0:99999999999999999999 END\n",
        ] {
            assert_eq!(
                r.parse_output(&Bytes::from_static(bad.as_bytes())),
                Err(b'O'),
                "{bad:?}"
            );
        }
        assert_eq!(req(vec![]).parse_output(&out("END\n")), Err(b'O'));
    }

    #[test]
    fn finish_maps_every_ending_to_its_code() {
        let r = req(vec![target(Family::V4, 1, b"a")]);
        assert_endings(&r, b'F', b'P');
        let cases = [
            (TaskOutput::Complete(Bytes::new()), b'R'),
            (TaskOutput::Complete(out("x\n")), b'O'),
        ];
        for (o, c) in cases {
            assert_eq!(r.finish(o), Outcome::failure_code(c));
        }
        let ok = r.finish(TaskOutput::Complete(out("1.2.3.4 0:0.5 END\n")));
        assert_eq!(
            ok,
            Outcome::success(Bytes::from_static(
                b"\x00\x00\x00\x071.2.3.4\x00\x00\x01\xf4"
            ))
        );
    }

    #[test]
    fn answer_round_trips_and_is_strict() {
        let r = req(vec![
            target(Family::V4, 2, b"a"),
            target(Family::V4, 3, b"b"),
        ]);
        let replies = vec![
            PingReply::unresolved(),
            PingReply {
                ip: out("::1"),
                rtt_us: vec![Some(0), None, Some(7)],
            },
        ];
        let mut b = BytesMut::new();
        r.encode_answer(&replies, &mut b).unwrap();
        assert_eq!(b.len(), answer_len(&replies));
        assert_eq!(
            &b[..],
            b"\x00\x00\x00\x00\x00\x00\x00\x03::1\x00\x00\x00\x00\xff\xff\xff\xff\x00\x00\x00\x07"
        );
        let data = b.freeze();
        assert_eq!(r.decode_answer(data.clone()).unwrap(), replies);
        assert!(r.decode_answer(data.slice(..data.len() - 1)).is_err());
        let mut long = data.to_vec();
        long.push(0);
        assert_eq!(
            r.decode_answer(Bytes::from(long)),
            Err(PayloadError::TrailingBytes { extra: 1 })
        );
        let bad = vec![
            PingReply {
                ip: Bytes::new(),
                rtt_us: vec![None],
            },
            replies[1].clone(),
        ];
        assert!(r.encode_answer(&bad, &mut BytesMut::new()).is_err());
        assert!(
            r.encode_answer(&replies[..1], &mut BytesMut::new())
                .is_err()
        );
        let short = vec![
            replies[0].clone(),
            PingReply {
                rtt_us: vec![None],
                ..replies[1].clone()
            },
        ];
        assert!(r.encode_answer(&short, &mut BytesMut::new()).is_err());
    }

    #[test]
    fn milliseconds_are_truncated_exactly() {
        for (s, us) in [
            ("0.038", Some(38)),
            ("0.057", Some(57)),
            ("1.001", Some(1001)),
            ("12", Some(12000)),
            ("0.0009", Some(0)),
            ("4294967.294", Some(4_294_967_294)),
            ("4294967.295", None),
            ("4294968", None),
            (".5", None),
            ("5.", None),
            ("-1", None),
            ("1e3", None),
            ("", None),
        ] {
            assert_eq!(parse_ms(s.as_bytes()), us, "{s}");
        }
    }
}
