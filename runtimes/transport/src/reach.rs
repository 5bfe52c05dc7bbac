//! The targets that reach an agent through a command: `exec:COMMAND`, `ssh:…` and
//! `chroot:DIR` — their syntax, their canonical form, and the command each one runs.
//!
//! ```text
//! exec:COMMAND                                   COMMAND split as a shell would (crate::words)
//! ssh:[USER@]HOST[:PORT][?agent=PATH&o=OPTION…]  HOST may be [IPV6]; o= repeats
//! chroot:DIR[?agent=PATH]
//! ```
//!
//! The `?` parameters are split at the first `?` and at every `&`, and taken literally (no
//! percent-decoding): a value cannot contain `&`, and a `chroot:` directory cannot contain
//! `?`. Anything beyond that is what `exec:` is for.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use crate::target::{Endpoint, ParseTargetError, parse_decimal_u32, valid_host_chars};
use crate::words;

/// The agent program `ssh:` runs on the remote host and `chroot:` runs here when no
/// `agent=` is given (looked up in `PATH`).
pub const DEFAULT_AGENT: &str = "tuppence";

/// The arguments the agent is started with, after its program.
const SERVE_STDIO: [&str; 2] = ["serve", "--stdio"];

fn bad(transport: &'static str, reason: impl Into<String>) -> ParseTargetError {
    ParseTargetError::Reach {
        transport,
        reason: reason.into(),
    }
}

pub(crate) fn parse_exec(arg: Option<&str>) -> Result<Endpoint, ParseTargetError> {
    let argv = words::split(arg.unwrap_or(""))?;
    Ok(Endpoint::Exec { argv })
}

/// The address part and the `?` parameters, split at the first `?`.
fn split_query(arg: Option<&str>) -> (&str, Option<&str>) {
    let arg = arg.unwrap_or("");
    match arg.split_once('?') {
        Some((addr, query)) => (addr, Some(query)),
        None => (arg, None),
    }
}

/// `key=value` pairs after the first `?`, each key checked against `allowed`.
fn parse_query(
    transport: &'static str,
    query: &str,
    allowed: &[&str],
) -> Result<Vec<(String, String)>, ParseTargetError> {
    let mut pairs = Vec::new();
    for item in query.split('&') {
        let Some((key, value)) = item.split_once('=') else {
            return Err(bad(
                transport,
                format!("parameter {item:?} has no value (expected KEY=VALUE)"),
            ));
        };
        if !allowed.contains(&key) {
            return Err(bad(
                transport,
                format!(
                    "unknown parameter {key:?} (expected {})",
                    allowed.join(" or ")
                ),
            ));
        }
        if value.is_empty() {
            return Err(bad(transport, format!("empty value for {key}")));
        }
        if value.contains('\0') {
            return Err(bad(transport, format!("{key} contains a NUL byte")));
        }
        if key == "agent" && pairs.iter().any(|(k, _): &(String, String)| k == "agent") {
            return Err(bad(transport, "agent given twice"));
        }
        pairs.push((key.to_owned(), value.to_owned()));
    }
    Ok(pairs)
}

pub(crate) fn parse_ssh(arg: Option<&str>) -> Result<Endpoint, ParseTargetError> {
    const T: &str = "ssh";
    const USAGE: &str = "ssh:[USER@]HOST[:PORT][?agent=PATH&o=OPTION]";
    let (addr, query) = split_query(arg);
    if addr.is_empty() {
        return Err(bad(T, format!("missing host (expected {USAGE})")));
    }
    let (user, hostport) = match addr.rsplit_once('@') {
        Some((user, rest)) => (Some(user), rest),
        None => (None, addr),
    };
    if let Some(user) = user {
        if user.is_empty() {
            return Err(bad(T, format!("empty user before @ (expected {USAGE})")));
        }
        if user.starts_with('-') || user.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(
                T,
                format!("bad user {user:?} (no blanks, no leading -)"),
            ));
        }
    }
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(bad(T, format!("no ] after [ in {hostport:?}")));
        };
        if !host.contains(':') || !valid_host_chars(host, true) {
            return Err(bad(T, format!("bad IPv6 address {host:?}")));
        }
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(bad(T, format!("junk {after:?} after ]"))),
            },
        }
    } else {
        match hostport.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return Err(bad(
                    T,
                    format!("IPv6 address {hostport:?} must be in brackets (ssh:[ADDRESS]:PORT)"),
                ));
            }
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(bad(T, format!("missing host (expected {USAGE})")));
    }
    // A host starting with `-` would be read by ssh as an option.
    if host.starts_with('-') || !valid_host_chars(host, host.contains(':')) {
        return Err(bad(T, format!("bad host {host:?}")));
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            parse_decimal_u32(p)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    bad(
                        T,
                        format!("bad port {p:?} (expected a decimal number from 1 to 65535)"),
                    )
                })?,
        ),
    };
    let mut agent = None;
    let mut options = Vec::new();
    if let Some(query) = query {
        for (key, value) in parse_query(T, query, &["agent", "o"])? {
            if key == "agent" {
                agent = Some(value);
            } else {
                options.push(value);
            }
        }
    }
    Ok(Endpoint::Ssh {
        user: user.map(str::to_owned),
        host: host.to_owned(),
        port,
        agent,
        options,
    })
}

pub(crate) fn parse_chroot(arg: Option<&str>) -> Result<Endpoint, ParseTargetError> {
    const T: &str = "chroot";
    let (dir, query) = split_query(arg);
    if dir.is_empty() {
        return Err(ParseTargetError::MissingPath {
            transport: T,
            usage: "chroot:DIR[?agent=PATH]",
        });
    }
    if dir.contains('\0') {
        return Err(ParseTargetError::NulInPath { transport: T });
    }
    let mut agent = None;
    if let Some(query) = query {
        for (_, value) in parse_query(T, query, &["agent"])? {
            agent = Some(PathBuf::from(value));
        }
    }
    Ok(Endpoint::Chroot {
        dir: PathBuf::from(dir),
        agent,
    })
}

/// The canonical form of the three endpoints above (the rest are in `target.rs`).
pub(crate) fn fmt_endpoint(e: &Endpoint, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match e {
        Endpoint::Exec { argv } => write!(f, "exec:{}", words::join(argv)),
        Endpoint::Ssh {
            user,
            host,
            port,
            agent,
            options,
        } => {
            f.write_str("ssh:")?;
            if let Some(user) = user {
                write!(f, "{user}@")?;
            }
            if host.contains(':') {
                write!(f, "[{host}]")?;
            } else {
                f.write_str(host)?;
            }
            if let Some(port) = port {
                write!(f, ":{port}")?;
            }
            let params = agent
                .iter()
                .map(|a| ("agent", a.as_str()))
                .chain(options.iter().map(|o| ("o", o.as_str())));
            for (i, (key, value)) in params.enumerate() {
                let sep = if i == 0 { '?' } else { '&' };
                write!(f, "{sep}{key}={value}")?;
            }
            Ok(())
        }
        Endpoint::Chroot { dir, agent } => {
            write!(f, "chroot:{}", dir.display())?;
            if let Some(agent) = agent {
                write!(f, "?agent={}", agent.display())?;
            }
            Ok(())
        }
        // The other endpoints are written by `target.rs`, which never calls this for them.
        _ => Ok(()),
    }
}

impl Endpoint {
    /// The command an `exec:`, `ssh:` or `chroot:` target runs (program first); `None`
    /// for the other transports.
    ///
    /// * `exec:COMMAND`: COMMAND's words.
    /// * `ssh:`: `ssh [-o OPTION…] -T -o BatchMode=yes [-p PORT] [-l USER] HOST 'AGENT'
    ///   serve --stdio`. The target's own `o=` options come first, so they win over the
    ///   defaults (ssh keeps the first value it reads for an option). `-T`: no remote tty
    ///   (the link carries binary packets); `BatchMode=yes`: fail instead of prompting for a
    ///   password or a host key nobody can answer. The system's ssh configuration, keys and
    ///   agent apply as for any `ssh`. ssh hands the last word to the remote user's shell,
    ///   so AGENT is a shell word there: `~/bin/tuppence`, `$HOME/bin/tuppence` and even
    ///   `sudo tuppence` work, and a path with blanks needs quotes for that shell.
    /// * `chroot:DIR`: `AGENT serve --stdio --root-directory DIR`.
    pub fn command(&self) -> Option<Vec<OsString>> {
        match self {
            Endpoint::Exec { argv } => Some(argv.iter().map(OsString::from).collect()),
            Endpoint::Ssh {
                user,
                host,
                port,
                agent,
                options,
            } => {
                let mut argv: Vec<OsString> = vec!["ssh".into()];
                for o in options {
                    argv.push("-o".into());
                    argv.push(o.into());
                }
                argv.extend(["-T", "-o", "BatchMode=yes"].map(OsString::from));
                if let Some(port) = port {
                    argv.push("-p".into());
                    argv.push(port.to_string().into());
                }
                if let Some(user) = user {
                    argv.push("-l".into());
                    argv.push(user.into());
                }
                argv.push(host.into());
                let mut remote = agent.as_deref().unwrap_or(DEFAULT_AGENT).to_owned();
                for a in SERVE_STDIO {
                    remote.push(' ');
                    remote.push_str(a);
                }
                argv.push(remote.into());
                Some(argv)
            }
            Endpoint::Chroot { dir, agent } => {
                let mut argv: Vec<OsString> = vec![match agent {
                    Some(a) => a.clone().into_os_string(),
                    None => DEFAULT_AGENT.into(),
                }];
                argv.extend(SERVE_STDIO.map(OsString::from));
                argv.push("--root-directory".into());
                argv.push(dir.clone().into_os_string());
                Some(argv)
            }
            _ => None,
        }
    }
}
