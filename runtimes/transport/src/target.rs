//! Target strings: `[legacy+]TRANSPORT:ARGUMENT`.
//!
//! Parsing is strict and total: every input either gives a [`Target`] or a
//! [`ParseTargetError`] that names what was expected, so a typo on the command line is
//! reported instead of being guessed at. `Display` writes the canonical form, which parses
//! back to an equal `Target` (the serial baud rate is always written out, so a log line shows
//! the speed actually used).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tuppence::wire::Dialect;

/// Baud rate used by `serial:DEVICE` when no `@BAUD` is given (the C executor's only speed).
pub const DEFAULT_BAUD: u32 = 115_200;

/// Path of the guest end of the virtio-serial channel the C executor's agent listens on.
pub const DEFAULT_VIRTIO_PORT: &str = "/dev/virtio-ports/org.opensuse.twopence.0";

/// The prefix that selects protocol 3.0 ([`Dialect::Legacy3`]).
pub const LEGACY_PREFIX: &str = "legacy+";

/// `VMADDR_CID_ANY`: bind to every local CID. Written as `any` in a target.
pub const VSOCK_CID_ANY: u32 = u32::MAX;

const EXPECTED_TRANSPORTS: &str = "virtio, serial, vsock, unix, tcp, local, exec, ssh or chroot";

/// A parsed target: which dialect to speak and where the bytes go.
///
/// The same syntax names both ends. On the host, [`Target::connect`](crate::Target::connect)
/// opens it as a client; on the system under test,
/// [`Listener::bind`](crate::Listener::bind) listens on it (there `virtio:PATH` names the
/// guest's character device instead of the host's socket).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// Wire dialect: [`Dialect::V4`] unless the string starts with `legacy+`.
    pub dialect: Dialect,
    /// The transport and its address.
    pub endpoint: Endpoint,
}

/// Where a target's bytes go. See the crate documentation for each form.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `virtio:PATH`. Host side: the unix socket QEMU/libvirt exposes for the guest's
    /// virtio-serial channel (a plain `AF_UNIX` stream connect). Guest side: the port's
    /// character device, e.g. [`DEFAULT_VIRTIO_PORT`].
    Virtio {
        /// Socket (host) or character device (guest).
        path: PathBuf,
    },
    /// `serial:DEVICE[@BAUD]`: a tty, used raw 8N1 without flow control.
    Serial {
        /// The tty device, e.g. `/dev/ttyS1` or a pty slave `/dev/pts/3`.
        device: PathBuf,
        /// Line speed; [`DEFAULT_BAUD`] when not given.
        baud: u32,
    },
    /// `vsock:CID:PORT`: an `AF_VSOCK` stream (Linux only). The CID may also be written as
    /// `any`, `hypervisor` (0), `local` (1) or `host` (2).
    Vsock {
        /// Context id; [`VSOCK_CID_ANY`] is only meaningful for listening.
        cid: u32,
        /// vsock port (32 bits).
        port: u32,
    },
    /// `unix:PATH`: an `AF_UNIX` stream socket.
    Unix {
        /// Socket path.
        path: PathBuf,
    },
    /// `tcp:HOST:PORT` or `tcp:[IPV6]:PORT`. The protocol has no authentication, so there is
    /// no default port and no default listen address: both must be written out.
    Tcp {
        /// Host name or IP literal, without brackets.
        host: String,
        /// TCP port. 0 is accepted (an ephemeral port when listening).
        port: u16,
    },
    /// `local`: an agent embedded in the same process. Not openable by this crate; the CLI
    /// runs the agent itself over a socket pair.
    Local,
    /// `exec:COMMAND`: run COMMAND (split into words as a shell would, without a shell) and
    /// speak over its stdin and stdout, which are one end of a unix socket pair. See
    /// [`ExecLink`](crate::ExecLink).
    Exec {
        /// The program and its arguments.
        argv: Vec<String>,
    },
    /// `ssh:[USER@]HOST[:PORT][?agent=PATH&o=OPTION…]`: `exec:` of the system's OpenSSH
    /// client running `tuppence serve --stdio` on HOST (see [`Endpoint::command`]).
    Ssh {
        /// `-l USER`, when given.
        user: Option<String>,
        /// Host name or IP literal, without brackets.
        host: String,
        /// `-p PORT`, when given.
        port: Option<u16>,
        /// The agent program on HOST ([`DEFAULT_AGENT`](crate::DEFAULT_AGENT) when not given), looked up by the
        /// remote user's shell.
        agent: Option<String>,
        /// `-o OPTION` for each, in order (`o=IdentityFile=/path`).
        options: Vec<String>,
    },
    /// `chroot:DIR[?agent=PATH]`: a child agent, `PATH serve --stdio --root-directory
    /// DIR`, chrooted into DIR (root only). The `tuppence` CLI uses its own binary when no
    /// `agent=` is given; the library runs [`DEFAULT_AGENT`](crate::DEFAULT_AGENT) from `PATH`.
    Chroot {
        /// The new root directory.
        dir: PathBuf,
        /// The agent program on this machine.
        agent: Option<PathBuf>,
    },
}

/// Why a target string was rejected. Each message says what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseTargetError {
    /// Nothing (or only `legacy+`) was given.
    #[error(
        "empty target (expected virtio:PATH, serial:DEVICE[@BAUD], vsock:CID:PORT, unix:PATH, tcp:HOST:PORT, local, exec:COMMAND, ssh:[USER@]HOST[:PORT] or chroot:DIR)"
    )]
    Empty,
    /// The part before the first `:` is not a known transport.
    #[error("unknown transport {0:?} (expected {EXPECTED_TRANSPORTS})")]
    UnknownTransport(String),
    /// A path-taking transport had no path.
    #[error("missing path in {transport} target (expected {usage})")]
    MissingPath {
        /// The transport name.
        transport: &'static str,
        /// The form that was expected.
        usage: &'static str,
    },
    /// A path contained a NUL byte, which no system call accepts.
    #[error("path in {transport} target contains a NUL byte")]
    NulInPath {
        /// The transport name.
        transport: &'static str,
    },
    /// The text after `@` in a serial target is not a baud rate.
    #[error(
        "bad baud rate {0:?} (expected a positive decimal number, e.g. serial:/dev/ttyS1@115200)"
    )]
    BadBaud(String),
    /// A vsock CID that is neither a number nor a known name.
    #[error(
        "bad vsock CID {0:?} (expected a decimal number below 2^32 or any, hypervisor, local, host)"
    )]
    BadCid(String),
    /// A port that is not a number in range.
    #[error("bad {transport} port {value:?} (expected a decimal number from 0 to {max})")]
    BadPort {
        /// The transport name.
        transport: &'static str,
        /// The rejected text.
        value: String,
        /// The largest port of that transport.
        max: u32,
    },
    /// `tcp`, `tcp:`, `vsock` or `vsock:`: the transport without its address.
    #[error("missing address in {transport} target (expected {usage})")]
    MissingAddress {
        /// The transport name.
        transport: &'static str,
        /// The form that was expected.
        usage: &'static str,
    },
    /// `tcp:HOST` or `vsock:CID` without the `:PORT`.
    #[error("missing port in {transport} target (expected {usage})")]
    MissingPort {
        /// The transport name.
        transport: &'static str,
        /// The form that was expected.
        usage: &'static str,
    },
    /// `tcp::PORT` or `tcp:[]:PORT`.
    #[error("missing host in tcp target (expected tcp:HOST:PORT or tcp:[IPV6]:PORT)")]
    MissingHost,
    /// An IPv6 literal written without brackets, which makes the port ambiguous.
    #[error("IPv6 address {0:?} must be in brackets (expected tcp:[ADDRESS]:PORT)")]
    UnbracketedIpv6(String),
    /// A host with characters no host name or address has.
    #[error("bad tcp host {0:?} (expected a host name or an IP address)")]
    BadHost(String),
    /// `local:` followed by something.
    #[error("local takes no argument (found {0:?}; expected just local)")]
    LocalArgument(String),
    /// The command of an `exec:` target does not split into words.
    #[error("bad exec command: {0}")]
    ExecCommand(#[from] crate::words::WordsError),
    /// A malformed `ssh:` or `chroot:` target; the message says what was expected.
    #[error("bad {transport} target: {reason}")]
    Reach {
        /// `"ssh"` or `"chroot"`.
        transport: &'static str,
        /// What is wrong, and what was expected.
        reason: String,
    },
}

impl Target {
    /// A target speaking the default dialect ([`Dialect::V4`]).
    pub fn new(endpoint: Endpoint) -> Self {
        Target {
            dialect: Dialect::V4,
            endpoint,
        }
    }

    /// The same endpoint with another dialect.
    #[must_use]
    pub fn with_dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    /// The transport's name as written in targets (`"virtio"`, `"serial"`, ...).
    pub fn transport_name(&self) -> &'static str {
        self.endpoint.transport_name()
    }
}

impl Endpoint {
    /// The transport's name as written in targets.
    pub fn transport_name(&self) -> &'static str {
        match self {
            Endpoint::Virtio { .. } => "virtio",
            Endpoint::Serial { .. } => "serial",
            Endpoint::Vsock { .. } => "vsock",
            Endpoint::Unix { .. } => "unix",
            Endpoint::Tcp { .. } => "tcp",
            Endpoint::Local => "local",
            Endpoint::Exec { .. } => "exec",
            Endpoint::Ssh { .. } => "ssh",
            Endpoint::Chroot { .. } => "chroot",
        }
    }

    /// Whether a client's link to the agent may run over a device (serial tty or
    /// virtio-serial port) that outlives its clients: `serial` and `virtio`, and `unix`,
    /// since QEMU exposes a guest's serial and virtio-serial ports as unix sockets. On such
    /// a link the agent cannot see one client leave and the next arrive, so a client
    /// should use `ClientConfig::for_device_link` (skip a previous session's leftovers
    /// before the hello reply; say hello again if the first one got lost).
    pub fn may_be_device_link(&self) -> bool {
        matches!(
            self,
            Endpoint::Serial { .. } | Endpoint::Virtio { .. } | Endpoint::Unix { .. }
        )
    }
}

impl FromStr for Target {
    type Err = ParseTargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (dialect, rest) = match s.strip_prefix(LEGACY_PREFIX) {
            Some(rest) => (Dialect::Legacy3, rest),
            None => (Dialect::V4, s),
        };
        if rest.is_empty() {
            return Err(ParseTargetError::Empty);
        }
        let (name, arg) = match rest.split_once(':') {
            Some((name, arg)) => (name, Some(arg)),
            None => (rest, None),
        };
        let endpoint = match name {
            "virtio" => Endpoint::Virtio {
                path: parse_path("virtio", "virtio:PATH", arg)?,
            },
            "unix" => Endpoint::Unix {
                path: parse_path("unix", "unix:PATH", arg)?,
            },
            "serial" => parse_serial(arg)?,
            "vsock" => parse_vsock(arg)?,
            "tcp" => parse_tcp(arg)?,
            "local" => match arg {
                None => Endpoint::Local,
                Some(a) => return Err(ParseTargetError::LocalArgument(a.to_owned())),
            },
            "exec" => crate::reach::parse_exec(arg)?,
            "ssh" => crate::reach::parse_ssh(arg)?,
            "chroot" => crate::reach::parse_chroot(arg)?,
            other => return Err(ParseTargetError::UnknownTransport(other.to_owned())),
        };
        Ok(Target { dialect, endpoint })
    }
}

fn parse_path(
    transport: &'static str,
    usage: &'static str,
    arg: Option<&str>,
) -> Result<PathBuf, ParseTargetError> {
    match arg {
        None | Some("") => Err(ParseTargetError::MissingPath { transport, usage }),
        Some(p) if p.contains('\0') => Err(ParseTargetError::NulInPath { transport }),
        Some(p) => Ok(PathBuf::from(p)),
    }
}

/// `DEVICE[@BAUD]`. The baud is split at the *last* `@` so a device path may contain `@`
/// (udev `by-path` names sometimes do); a suffix that contains `/` belongs to the path.
fn parse_serial(arg: Option<&str>) -> Result<Endpoint, ParseTargetError> {
    const USAGE: &str = "serial:DEVICE[@BAUD]";
    let arg = arg.unwrap_or("");
    let (device, baud) = match arg.rsplit_once('@') {
        Some((device, baud)) if !baud.contains('/') => (device, Some(baud)),
        _ => (arg, None),
    };
    let device = parse_path("serial", USAGE, Some(device))?;
    let baud = match baud {
        None => DEFAULT_BAUD,
        Some(b) => match parse_decimal_u32(b) {
            Some(n) if n > 0 => n,
            _ => return Err(ParseTargetError::BadBaud(b.to_owned())),
        },
    };
    Ok(Endpoint::Serial { device, baud })
}

fn parse_vsock(arg: Option<&str>) -> Result<Endpoint, ParseTargetError> {
    const USAGE: &str = "vsock:CID:PORT";
    let arg = arg.unwrap_or("");
    let Some((cid, port)) = arg.split_once(':') else {
        if arg.is_empty() {
            return Err(ParseTargetError::MissingAddress {
                transport: "vsock",
                usage: USAGE,
            });
        }
        return Err(ParseTargetError::MissingPort {
            transport: "vsock",
            usage: USAGE,
        });
    };
    let cid = match cid {
        "any" => VSOCK_CID_ANY,
        "hypervisor" => 0,
        "local" => 1,
        "host" => 2,
        n => parse_decimal_u32(n).ok_or_else(|| ParseTargetError::BadCid(n.to_owned()))?,
    };
    if port.is_empty() {
        return Err(ParseTargetError::MissingPort {
            transport: "vsock",
            usage: USAGE,
        });
    }
    let port = parse_decimal_u32(port).ok_or_else(|| ParseTargetError::BadPort {
        transport: "vsock",
        value: port.to_owned(),
        max: u32::MAX,
    })?;
    Ok(Endpoint::Vsock { cid, port })
}

fn parse_tcp(arg: Option<&str>) -> Result<Endpoint, ParseTargetError> {
    const USAGE: &str = "tcp:HOST:PORT";
    let arg = arg.unwrap_or("");
    if arg.is_empty() {
        return Err(ParseTargetError::MissingAddress {
            transport: "tcp",
            usage: USAGE,
        });
    }
    let (host, port) = if let Some(rest) = arg.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(ParseTargetError::BadHost(arg.to_owned()));
        };
        if host.is_empty() {
            return Err(ParseTargetError::MissingHost);
        }
        if !host.contains(':') || !valid_host_chars(host, true) {
            return Err(ParseTargetError::BadHost(host.to_owned()));
        }
        match after.strip_prefix(':') {
            Some(port) => (host, port),
            None if after.is_empty() => {
                return Err(ParseTargetError::MissingPort {
                    transport: "tcp",
                    usage: "tcp:[IPV6]:PORT",
                });
            }
            None => return Err(ParseTargetError::BadHost(arg.to_owned())),
        }
    } else {
        match arg.split_once(':') {
            None => {
                return Err(ParseTargetError::MissingPort {
                    transport: "tcp",
                    usage: USAGE,
                });
            }
            Some((host, port)) => {
                if port.contains(':') {
                    return Err(ParseTargetError::UnbracketedIpv6(arg.to_owned()));
                }
                if host.is_empty() {
                    return Err(ParseTargetError::MissingHost);
                }
                if !valid_host_chars(host, false) {
                    return Err(ParseTargetError::BadHost(host.to_owned()));
                }
                (host, port)
            }
        }
    };
    if port.is_empty() {
        return Err(ParseTargetError::MissingPort {
            transport: "tcp",
            usage: USAGE,
        });
    }
    let port = parse_decimal_u32(port)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| ParseTargetError::BadPort {
            transport: "tcp",
            value: port.to_owned(),
            max: u32::from(u16::MAX),
        })?;
    Ok(Endpoint::Tcp {
        host: host.to_owned(),
        port,
    })
}

/// Host names and IP literals are printable ASCII without brackets, slashes or spaces.
/// `%` is allowed inside brackets for IPv6 zone ids (`fe80::1%eth0`).
pub(crate) fn valid_host_chars(host: &str, bracketed: bool) -> bool {
    host.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(b, b'.' | b'-' | b'_')
            || (bracketed && matches!(b, b':' | b'%'))
    })
}

/// Plain decimal digits only: `u32::from_str` would also take a leading `+`.
pub(crate) fn parse_decimal_u32(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dialect == Dialect::Legacy3 {
            f.write_str(LEGACY_PREFIX)?;
        }
        fmt::Display::fmt(&self.endpoint, f)
    }
}

/// Paths built from a `&str` print exactly; a non-UTF-8 path built in code prints lossily.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Virtio { path } => write!(f, "virtio:{}", show(path)),
            Endpoint::Serial { device, baud } => write!(f, "serial:{}@{baud}", show(device)),
            Endpoint::Vsock { cid, port } => {
                if *cid == VSOCK_CID_ANY {
                    write!(f, "vsock:any:{port}")
                } else {
                    write!(f, "vsock:{cid}:{port}")
                }
            }
            Endpoint::Unix { path } => write!(f, "unix:{}", show(path)),
            Endpoint::Tcp { host, port } => {
                if host.contains(':') {
                    write!(f, "tcp:[{host}]:{port}")
                } else {
                    write!(f, "tcp:{host}:{port}")
                }
            }
            Endpoint::Local => f.write_str("local"),
            Endpoint::Exec { .. } | Endpoint::Ssh { .. } | Endpoint::Chroot { .. } => {
                crate::reach::fmt_endpoint(self, f)
            }
        }
    }
}

fn show(p: &Path) -> std::path::Display<'_> {
    p.display()
}
