//! The `sniff` command line: argument parsing into typed structs, and printing answers as
//! human text or JSON. Kept apart from any binary so the `tuppence` CLI can embed it as
//! `tuppence sniff …` (the `sniff` example is a thin `main` around it).
//!
//! ```text
//! sniff serve (--listen TARGET | --connect TARGET) [--nat-url URL] [--task-stderr]
//! sniff request TARGET [--id N] [--timeout SECS] [--json] TASK
//!   TASK: nop
//!       | ping [-4|-6] [--count N] [--size BYTES] HOST…
//!       | cert [--full] [--chain] [--details] [--params] [--starttls PROTO] HOST[:PORT]…
//!       | nat [--url URL]
//! ```
//!
//! Options may come anywhere after `serve`/`request`, as `--name value` or `--name=value`.
//! JSON is written by hand (no serde): one object per answer, strings as lossy UTF-8.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use bytes::Bytes;
use tuppence::sniff::cert::{CertReply, CertRequest, CertTarget, StartTls};
use tuppence::sniff::nat::{Nat, NatConfig, NatParams, NatStatus};
use tuppence::sniff::ping::{Family, PingReply, PingRequest, PingTarget};
use tuppence::sniff::{Agent, AgentConfig, EncodeError, TaskId, TaskKind, TaskResult, code};
use tuppence_transport::{ListenOptions, Listener, Target, TransportError};

use super::client::{ClientError, SniffRequest, request};
use super::daemon::{ServeError, SniffDaemonConfig, StopHandle, serve_listener_until, serve_until};
use super::runner::{RunnerConfig, TaskStderr};

/// The usage text.
pub const USAGE: &str = "\
usage: sniff serve (--listen TARGET | --connect TARGET) [--nat-url URL] [--task-stderr]
       sniff request TARGET [--id N] [--timeout SECS] [--json] TASK
TASK:  nop
       ping [-4|-6] [--count N] [--size BYTES] HOST...
       cert [--full] [--chain] [--details] [--params] [--starttls PROTO] HOST[:PORT]...
       nat [--url URL]
TARGET: unix:PATH, tcp:HOST:PORT, vsock:CID:PORT, serial:DEV[@BAUD], virtio:PATH
cert:  --full whole certificates (else SHA-1 fingerprints), --chain the whole chain,
       --details names and expiry, --params cipher and protocol; PORT defaults to 443;
       PROTO: smtp, pop3, imap, ftp, xmpp
";

/// Default echo requests per host.
pub const DEFAULT_PING_COUNT: u8 = 3;
/// Default ping payload size.
pub const DEFAULT_PING_SIZE: u16 = 56;
/// Default port for `cert HOST`.
pub const DEFAULT_TLS_PORT: u16 = 443;
/// Default time `request` waits for the answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// A parsed `sniff` command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SniffCommand {
    Serve(ServeArgs),
    Request(RequestArgs),
    /// `-h`/`--help`/`help`: print [`USAGE`].
    Help,
}

/// Where `serve` gets its connection(s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServeMode {
    /// Listen and serve every client, each with its own agent.
    Listen(Target),
    /// Dial out and serve that one stream until it closes.
    Connect(Target),
}

/// `sniff serve …`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeArgs {
    pub mode: ServeMode,
    /// The address service NAT tasks ask when a request names none.
    pub nat_url: Option<Bytes>,
    /// Let task stderr through to the agent's stderr.
    pub task_stderr: bool,
}

/// `sniff request …`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestArgs {
    pub target: Target,
    pub id: TaskId,
    pub timeout: Duration,
    pub json: bool,
    pub task: TaskArgs,
}

/// The task to request, with its typed parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskArgs {
    Nop,
    Ping(PingRequest),
    Cert(CertRequest),
    Nat(NatParams),
}

impl TaskArgs {
    /// The request to send.
    pub fn to_request(&self) -> Result<SniffRequest, EncodeError> {
        match self {
            TaskArgs::Nop => Ok(SniffRequest::nop()),
            TaskArgs::Ping(r) => SniffRequest::ping(r.clone()),
            TaskArgs::Cert(r) => SniffRequest::cert(r.clone()),
            TaskArgs::Nat(p) => SniffRequest::nat(p),
        }
    }

    fn kind(&self) -> TaskKind {
        match self {
            TaskArgs::Nop => TaskKind::Nop,
            TaskArgs::Ping(r) => TaskKind::Ping(r.clone()),
            TaskArgs::Cert(r) => TaskKind::Cert(r.clone()),
            TaskArgs::Nat(_) => TaskKind::Nat,
        }
    }
}

/// A command line that does not parse; the message says what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ArgError> {
    Err(ArgError(msg.into()))
}

/// Splits arguments into options (with their values) and positionals.
struct Args {
    items: std::vec::IntoIter<OsString>,
}

enum Item {
    Opt(String, Option<OsString>),
    Pos(OsString),
}

/// Options that take a value.
const VALUED: &[&str] = &[
    "--listen",
    "--connect",
    "--nat-url",
    "--id",
    "--timeout",
    "--count",
    "--size",
    "--starttls",
    "--url",
];

impl Args {
    fn next(&mut self) -> Result<Option<Item>, ArgError> {
        let Some(a) = self.items.next() else {
            return Ok(None);
        };
        let bytes = a.as_bytes();
        if !bytes.starts_with(b"-") || bytes == b"-" {
            return Ok(Some(Item::Pos(a)));
        }
        let s = String::from_utf8_lossy(bytes).into_owned();
        let (name, inline) = match s.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(OsString::from(v))),
            _ => (s, None),
        };
        if VALUED.contains(&name.as_str()) {
            let value = match inline {
                Some(v) => v,
                None => match self.items.next() {
                    Some(v) => v,
                    None => return err(format!("{name} needs a value")),
                },
            };
            return Ok(Some(Item::Opt(name, Some(value))));
        }
        if inline.is_some() {
            return err(format!("{name} takes no value"));
        }
        Ok(Some(Item::Opt(name, None)))
    }
}

fn utf8(name: &str, v: &OsString) -> Result<String, ArgError> {
    v.to_str()
        .map(str::to_owned)
        .ok_or_else(|| ArgError(format!("{name}: not UTF-8")))
}

fn number<T: std::str::FromStr>(name: &str, v: &OsString) -> Result<T, ArgError> {
    utf8(name, v)?.parse().map_err(|_| {
        ArgError(format!(
            "{name}: not a valid number: {}",
            v.to_string_lossy()
        ))
    })
}

fn target(v: &OsString) -> Result<Target, ArgError> {
    utf8("TARGET", v)?
        .parse()
        .map_err(|e| ArgError(format!("TARGET: {e}")))
}

/// Parses the arguments after the program name (`serve …` or `request …`).
pub fn parse_args<I>(args: I) -> Result<SniffCommand, ArgError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let mut items: Vec<OsString> = args.into_iter().map(Into::into).collect();
    if items.is_empty() {
        return err("missing subcommand (serve or request)");
    }
    let sub = items.remove(0);
    let mut args = Args {
        items: items.into_iter(),
    };
    match sub.as_bytes() {
        b"serve" => parse_serve(&mut args).map(SniffCommand::Serve),
        b"request" => parse_request(&mut args).map(SniffCommand::Request),
        b"help" | b"-h" | b"--help" => Ok(SniffCommand::Help),
        other => err(format!(
            "unknown subcommand {:?} (expected serve or request)",
            String::from_utf8_lossy(other)
        )),
    }
}

fn parse_serve(args: &mut Args) -> Result<ServeArgs, ArgError> {
    let mut mode = None;
    let mut nat_url = None;
    let mut task_stderr = false;
    while let Some(item) = args.next()? {
        match item {
            Item::Opt(name, Some(v)) if name == "--listen" || name == "--connect" => {
                if mode.is_some() {
                    return err("give one of --listen or --connect");
                }
                let t = target(&v)?;
                mode = Some(if name == "--listen" {
                    ServeMode::Listen(t)
                } else {
                    ServeMode::Connect(t)
                });
            }
            Item::Opt(name, Some(v)) if name == "--nat-url" => {
                nat_url = Some(Bytes::copy_from_slice(v.as_bytes()));
            }
            Item::Opt(name, None) if name == "--task-stderr" => task_stderr = true,
            Item::Opt(name, _) => return err(format!("serve: unknown option {name}")),
            Item::Pos(p) => {
                return err(format!(
                    "serve: unexpected argument {:?}",
                    p.to_string_lossy()
                ));
            }
        }
    }
    let Some(mode) = mode else {
        return err("serve needs --listen TARGET or --connect TARGET");
    };
    Ok(ServeArgs {
        mode,
        nat_url,
        task_stderr,
    })
}

#[derive(Default)]
struct TaskOpts {
    family: Option<Family>,
    count: Option<u8>,
    size: Option<u16>,
    full: bool,
    chain: bool,
    details: bool,
    params: bool,
    starttls: Option<StartTls>,
    url: Option<Bytes>,
    /// Which task-specific options were given, for the error if the task does not take them.
    given: Vec<String>,
}

fn parse_request(args: &mut Args) -> Result<RequestArgs, ArgError> {
    let mut id = TaskId::from(1);
    let mut timeout = DEFAULT_TIMEOUT;
    let mut json = false;
    let mut o = TaskOpts::default();
    let mut positional = Vec::new();
    while let Some(item) = args.next()? {
        let Item::Opt(name, value) = item else {
            if let Item::Pos(p) = item {
                positional.push(p);
            }
            continue;
        };
        let v = value.unwrap_or_default();
        match name.as_str() {
            "--id" => id = TaskId::from(number::<u32>("--id", &v)?),
            "--timeout" => {
                let secs: f64 = number("--timeout", &v)?;
                timeout = Duration::try_from_secs_f64(secs)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| ArgError("--timeout: must be a positive number".into()))?;
            }
            "--json" => json = true,
            "-4" | "-6" => {
                o.family = Some(if name == "-4" { Family::V4 } else { Family::V6 });
                o.given.push(name);
            }
            "--count" => {
                let c: u8 = number("--count", &v)?;
                if c == 0 {
                    return err("--count: must be 1 to 255");
                }
                o.count = Some(c);
                o.given.push(name);
            }
            "--size" => {
                o.size = Some(number("--size", &v)?);
                o.given.push(name);
            }
            "--full" | "--chain" | "--details" | "--params" => {
                match name.as_str() {
                    "--full" => o.full = true,
                    "--chain" => o.chain = true,
                    "--details" => o.details = true,
                    _ => o.params = true,
                }
                o.given.push(name);
            }
            "--starttls" => {
                let p = utf8("--starttls", &v)?.to_ascii_lowercase();
                let proto = [
                    StartTls::Smtp,
                    StartTls::Pop3,
                    StartTls::Imap,
                    StartTls::Ftp,
                    StartTls::Xmpp,
                ]
                .into_iter()
                .find(|s| s.name() == p)
                .ok_or_else(|| ArgError(format!("--starttls: unknown protocol {p:?}")))?;
                o.starttls = Some(proto);
                o.given.push(name);
            }
            "--url" => {
                o.url = Some(Bytes::copy_from_slice(v.as_bytes()));
                o.given.push(name);
            }
            _ => return err(format!("request: unknown option {name}")),
        }
    }
    let mut positional = positional.into_iter();
    let Some(t) = positional.next() else {
        return err("request needs a TARGET");
    };
    let target = target(&t)?;
    let Some(task) = positional.next() else {
        return err("request needs a TASK (nop, ping, cert or nat)");
    };
    let rest: Vec<OsString> = positional.collect();
    let allowed: &[&str] = match task.as_bytes() {
        b"nop" => &[],
        b"nat" => &["--url"],
        b"ping" => &["-4", "-6", "--count", "--size"],
        b"cert" => &["--full", "--chain", "--details", "--params", "--starttls"],
        other => {
            return err(format!(
                "unknown task {:?} (expected nop, ping, cert or nat)",
                String::from_utf8_lossy(other)
            ));
        }
    };
    if let Some(bad) = o.given.iter().find(|g| !allowed.contains(&g.as_str())) {
        return err(format!(
            "{bad} does not apply to {}",
            task.to_string_lossy()
        ));
    }
    let task = match task.as_bytes() {
        b"nop" | b"nat" if !rest.is_empty() => {
            return err(format!("{} takes no hosts", task.to_string_lossy()));
        }
        b"nop" => TaskArgs::Nop,
        b"nat" => {
            let params = NatParams { url: o.url };
            params
                .encode(&mut bytes::BytesMut::new())
                .map_err(|e| ArgError(format!("--url: {e}")))?;
            TaskArgs::Nat(params)
        }
        b"ping" => {
            if rest.is_empty() {
                return err("ping needs at least one HOST");
            }
            TaskArgs::Ping(PingRequest {
                targets: rest
                    .iter()
                    .map(|h| PingTarget {
                        family: o.family.unwrap_or(Family::Any),
                        count: o.count.unwrap_or(DEFAULT_PING_COUNT),
                        size: o.size.unwrap_or(DEFAULT_PING_SIZE),
                        host: Bytes::copy_from_slice(h.as_bytes()),
                    })
                    .collect(),
            })
        }
        _ => {
            if rest.is_empty() {
                return err("cert needs at least one HOST[:PORT]");
            }
            let targets = rest
                .iter()
                .map(|hp| {
                    let (host, port) = host_port(hp.as_bytes())?;
                    Ok(CertTarget {
                        starttls: o.starttls.unwrap_or_default(),
                        want_cert: o.full,
                        want_chain: o.chain,
                        want_details: o.details,
                        want_params: o.params,
                        port,
                        host,
                    })
                })
                .collect::<Result<Vec<_>, ArgError>>()?;
            TaskArgs::Cert(CertRequest { targets })
        }
    };
    task.to_request()
        .map_err(|e| ArgError(format!("cannot encode the request: {e}")))?;
    Ok(RequestArgs {
        target,
        id,
        timeout,
        json,
        task,
    })
}

/// `HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT`, or a bare IPv6 address (more than one colon).
fn host_port(s: &[u8]) -> Result<(Bytes, u16), ArgError> {
    let port = |p: &[u8]| -> Result<u16, ArgError> {
        std::str::from_utf8(p)
            .ok()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| {
                ArgError(format!(
                    "bad port in {:?}",
                    String::from_utf8_lossy(s).into_owned()
                ))
            })
    };
    if let Some(rest) = s.strip_prefix(b"[") {
        let Some(close) = rest.iter().position(|&b| b == b']') else {
            return err(format!("missing ] in {:?}", String::from_utf8_lossy(s)));
        };
        let (host, after) = rest.split_at(close);
        let after = after.get(1..).unwrap_or_default();
        let p = match after.strip_prefix(b":") {
            Some(p) => port(p)?,
            None if after.is_empty() => DEFAULT_TLS_PORT,
            None => return err(format!("junk after ] in {:?}", String::from_utf8_lossy(s))),
        };
        return Ok((Bytes::copy_from_slice(host), p));
    }
    let colons = s.iter().filter(|&&b| b == b':').count();
    match (colons, s.iter().rposition(|&b| b == b':')) {
        (1, Some(at)) => {
            let (host, p) = s.split_at(at);
            Ok((
                Bytes::copy_from_slice(host),
                port(p.get(1..).unwrap_or_default())?,
            ))
        }
        _ => Ok((Bytes::copy_from_slice(s), DEFAULT_TLS_PORT)),
    }
}

// ---- running ----

/// Why a `sniff` command failed (as opposed to a task answering `F`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    #[error(transparent)]
    Args(#[from] ArgError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot encode the request: {0}")]
    Encode(#[from] EncodeError),
    #[error("writing the answer: {0}")]
    Output(#[from] io::Error),
}

/// The agent `serve` runs: the built-in task types, with the NAT URL if one was given.
pub fn new_agent(args: &ServeArgs) -> Agent {
    let mut agent = Agent::new(AgentConfig::default());
    if let Some(url) = &args.nat_url {
        agent.register(Box::new(Nat::new(NatConfig {
            url: url.clone(),
            ..NatConfig::default()
        })));
    }
    agent
}

/// The serve settings for `args`.
pub fn serve_config(args: &ServeArgs) -> SniffDaemonConfig {
    SniffDaemonConfig {
        runner: RunnerConfig {
            stderr: if args.task_stderr {
                TaskStderr::Inherit
            } else {
                TaskStderr::Null
            },
            ..RunnerConfig::default()
        },
        ..SniffDaemonConfig::default()
    }
}

/// Runs `sniff serve`: until the connection closes (`--connect`) or forever (`--listen`),
/// or until the [`StopHandle`] handed to `stopper` (once the listener or connection is
/// open) is used. A program wires it to SIGTERM and SIGINT: stopping kills every task and
/// removes a unix listener's socket file, which a process killed by the signal would leave
/// behind.
pub fn run_serve(args: &ServeArgs, stopper: impl FnOnce(StopHandle)) -> Result<(), CliError> {
    let config = serve_config(args);
    match &args.mode {
        ServeMode::Listen(t) => {
            let listener = Listener::bind(t, &ListenOptions::default())?;
            serve_listener_until(listener, || new_agent(args), &config, stopper)?;
        }
        ServeMode::Connect(t) => {
            let transport = t.connect()?;
            serve_until(new_agent(args), transport, &config, stopper)?;
        }
    }
    Ok(())
}

/// Runs `sniff request`: sends the request, prints the answer to `out`, and returns the exit
/// code ([`exit_code`]).
pub fn run_request(args: &RequestArgs, out: &mut impl io::Write) -> Result<u8, CliError> {
    let req = args.task.to_request()?;
    let result = request(&args.target, args.id, &req, args.timeout)?;
    let text = if args.json {
        render_json(args.id, &args.task, &result)
    } else {
        render_text(&args.task, &result)
    };
    out.write_all(text.as_bytes())?;
    Ok(exit_code(&result))
}

/// Exit code for a command line that does not parse.
pub const EXIT_USAGE: u8 = 2;
/// Exit code when no answer came (connection, transport or timeout), or `serve` failed.
pub const EXIT_ERROR: u8 = 3;

/// 0 for an `O` answer, 1 for anything else (`F`, `U`, an answer that does not decode).
pub fn exit_code(result: &TaskResult) -> u8 {
    match result {
        TaskResult::Unknown | TaskResult::Failed(_) | TaskResult::Undecodable { .. } => 1,
        _ => 0,
    }
}

// ---- printing ----

/// What a one-byte failure code means for the task that was asked.
pub fn failure_reason(kind: &TaskKind, c: u8) -> &'static str {
    match (kind, c) {
        (_, code::TIMEOUT) => "timed out",
        (_, code::OUTPUT_TOO_LARGE) => "output too large",
        (_, code::TOO_MANY_TASKS) => "too many tasks running on the agent",
        (TaskKind::Ping(_) | TaskKind::Cert(_) | TaskKind::Nat, b'I') => "bad parameters",
        (TaskKind::Ping(_) | TaskKind::Cert(_), b'F') => "the task could not be started",
        (TaskKind::Ping(_) | TaskKind::Cert(_), b'P') => "reading the task's output failed",
        (TaskKind::Ping(_) | TaskKind::Cert(_), b'R') => "the task printed nothing",
        (TaskKind::Ping(_), b'O') => "the ping output is malformed",
        (TaskKind::Cert(_), b'B') => "a host block of the output is malformed",
        (TaskKind::Cert(_), b'E') => "text after the last host block",
        (TaskKind::Cert(_), b'C') => "the output has the wrong number of host blocks",
        (TaskKind::Nat, b'S') => "the task could not be started",
        (TaskKind::Nat, b'M') => "a line of the output is missing",
        (TaskKind::Nat, b'U') => "the output holds an unknown word",
        _ => "unknown failure code",
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

fn ms(us: u32) -> String {
    format!("{}.{:03} ms", us / 1000, us % 1000)
}

fn nat_word(s: NatStatus) -> &'static str {
    match s {
        NatStatus::None => "none",
        NatStatus::Nat => "nat",
        NatStatus::Direct => "direct",
    }
}

/// The base64 body the agent sends, armoured again so it is a PEM file.
fn pem(body: &[u8]) -> String {
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----",
        lossy(body)
    )
}

fn names(b: &[u8]) -> Vec<String> {
    b.split(|&c| c == b'\n')
        .filter(|l| !l.is_empty())
        .map(lossy)
        .collect()
}

/// The answer as text for a terminal, ending with a newline.
pub fn render_text(task: &TaskArgs, result: &TaskResult) -> String {
    let mut s = String::new();
    match (task, result) {
        (_, TaskResult::Unknown) => s.push_str("the agent does not know this task type (U)\n"),
        (_, TaskResult::Failed(data)) => match result.failure_code() {
            Some(c) => {
                let _ = writeln!(
                    s,
                    "failed: {} ({})",
                    char::from(c),
                    failure_reason(&task.kind(), c)
                );
            }
            None => {
                let _ = writeln!(s, "failed: {}", hex(data));
            }
        },
        (_, TaskResult::Undecodable { data, error }) => {
            let _ = writeln!(s, "answer does not decode: {error}; data: {}", hex(data));
        }
        (_, TaskResult::Nop) => s.push_str("ok\n"),
        (TaskArgs::Ping(req), TaskResult::Ping(replies)) => {
            for (t, r) in req.targets.iter().zip(replies) {
                text_ping(&mut s, t, r);
            }
        }
        (TaskArgs::Cert(req), TaskResult::Cert(replies)) => {
            for (t, r) in req.targets.iter().zip(replies) {
                text_cert(&mut s, t, r);
            }
        }
        (_, TaskResult::Nat(r)) => {
            let _ = writeln!(s, "IPv4: {}\nIPv6: {}", nat_word(r.ipv4), nat_word(r.ipv6));
        }
        (_, TaskResult::Other(data)) => {
            let _ = writeln!(s, "ok: {}", hex(data));
        }
        (_, other) => {
            let _ = writeln!(s, "{other:?}");
        }
    }
    s
}

fn text_ping(s: &mut String, t: &PingTarget, r: &PingReply) {
    if !r.is_resolved() {
        let _ = writeln!(s, "{}: did not resolve", lossy(&t.host));
        return;
    }
    let times: Vec<String> = r
        .rtt_us
        .iter()
        .map(|v| v.map_or_else(|| "lost".to_owned(), ms))
        .collect();
    let _ = writeln!(
        s,
        "{} ({}): {}",
        lossy(&t.host),
        lossy(&r.ip),
        times.join(", ")
    );
}

fn text_cert(s: &mut String, t: &CertTarget, r: &CertReply) {
    let _ = writeln!(
        s,
        "{}:{}: {} certificate{}",
        lossy(&t.host),
        t.port,
        r.count(),
        if r.count() == 1 { "" } else { "s" }
    );
    if let Some(tls) = &r.tls {
        let _ = writeln!(
            s,
            "  protocol {}, cipher {}",
            lossy(&tls.protocol),
            lossy(&tls.cipher)
        );
    }
    for (i, c) in r.certs.iter().enumerate() {
        if t.want_cert {
            let _ = writeln!(s, "  [{i}]\n{}", pem(&c.value));
        } else {
            let _ = writeln!(s, "  [{i}] SHA-1 {}", lossy(&c.value));
        }
        if let Some(d) = &c.details {
            let _ = writeln!(s, "      names: {}", names(&d.names).join(", "));
            let _ = writeln!(s, "      expires: {}", lossy(&d.expiry));
        }
    }
}

/// Appends `b` as a JSON string (lossy UTF-8, control characters escaped).
fn json_str(out: &mut String, b: &[u8]) {
    out.push('"');
    for ch in String::from_utf8_lossy(b).chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_list<T>(out: &mut String, items: &[T], mut each: impl FnMut(&mut String, &T)) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        each(out, item);
    }
    out.push(']');
}

/// The answer as one JSON object on one line, ending with a newline:
/// `{"id":N,"task":"ping","status":"ok",…}`. `status` is `ok`, `failed` (with `code` and
/// `reason`, or `data_hex`), `unknown` or `undecodable` (with `error` and `data_hex`).
pub fn render_json(id: TaskId, task: &TaskArgs, result: &TaskResult) -> String {
    let mut s = String::new();
    let name = match task {
        TaskArgs::Nop => "nop",
        TaskArgs::Ping(_) => "ping",
        TaskArgs::Cert(_) => "cert",
        TaskArgs::Nat(_) => "nat",
    };
    let _ = write!(s, "{{\"id\":{},\"task\":\"{name}\",", id.get());
    match (task, result) {
        (_, TaskResult::Unknown) => s.push_str("\"status\":\"unknown\""),
        (_, TaskResult::Failed(data)) => {
            s.push_str("\"status\":\"failed\",");
            match result.failure_code() {
                Some(c) => {
                    s.push_str("\"code\":");
                    json_str(&mut s, &[c]);
                    s.push_str(",\"reason\":");
                    json_str(&mut s, failure_reason(&task.kind(), c).as_bytes());
                }
                None => {
                    s.push_str("\"data_hex\":");
                    json_str(&mut s, hex(data).as_bytes());
                }
            }
        }
        (_, TaskResult::Undecodable { data, error }) => {
            s.push_str("\"status\":\"undecodable\",\"error\":");
            json_str(&mut s, error.to_string().as_bytes());
            s.push_str(",\"data_hex\":");
            json_str(&mut s, hex(data).as_bytes());
        }
        (_, TaskResult::Nop) => s.push_str("\"status\":\"ok\""),
        (TaskArgs::Ping(req), TaskResult::Ping(replies)) => {
            s.push_str("\"status\":\"ok\",\"hosts\":");
            let pairs: Vec<_> = req.targets.iter().zip(replies).collect();
            json_list(&mut s, &pairs, |s, (t, r)| {
                s.push_str("{\"host\":");
                json_str(s, &t.host);
                s.push_str(",\"ip\":");
                json_str(s, &r.ip);
                s.push_str(",\"rtt_us\":");
                json_list(s, &r.rtt_us, |s, v| match v {
                    Some(us) => {
                        let _ = write!(s, "{us}");
                    }
                    None => s.push_str("null"),
                });
                s.push('}');
            });
        }
        (TaskArgs::Cert(req), TaskResult::Cert(replies)) => {
            s.push_str("\"status\":\"ok\",\"services\":");
            let pairs: Vec<_> = req.targets.iter().zip(replies).collect();
            json_list(&mut s, &pairs, |s, (t, r)| json_cert(s, t, r));
        }
        (_, TaskResult::Nat(r)) => {
            let _ = write!(
                s,
                "\"status\":\"ok\",\"ipv4\":\"{}\",\"ipv6\":\"{}\"",
                nat_word(r.ipv4),
                nat_word(r.ipv6)
            );
        }
        (_, TaskResult::Other(data)) => {
            s.push_str("\"status\":\"ok\",\"data_hex\":");
            json_str(&mut s, hex(data).as_bytes());
        }
        (_, other) => {
            s.push_str("\"status\":\"undecodable\",\"error\":");
            json_str(&mut s, format!("{other:?}").as_bytes());
        }
    }
    s.push_str("}\n");
    s
}

fn json_cert(s: &mut String, t: &CertTarget, r: &CertReply) {
    s.push_str("{\"host\":");
    json_str(s, &t.host);
    let _ = write!(s, ",\"port\":{}", t.port);
    if let Some(tls) = &r.tls {
        s.push_str(",\"protocol\":");
        json_str(s, &tls.protocol);
        s.push_str(",\"cipher\":");
        json_str(s, &tls.cipher);
    }
    s.push_str(",\"certificates\":");
    json_list(s, &r.certs, |s, c| {
        if t.want_cert {
            s.push_str("{\"pem\":");
            json_str(s, pem(&c.value).as_bytes());
        } else {
            s.push_str("{\"sha1\":");
            json_str(s, &c.value);
        }
        if let Some(d) = &c.details {
            s.push_str(",\"names\":");
            json_list(s, &names(&d.names), |s, n| json_str(s, n.as_bytes()));
            s.push_str(",\"expiry\":");
            json_str(s, &d.expiry);
        }
        s.push('}');
    });
    s.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use tuppence::sniff::cert::{CertDetails, CertEntry, TlsParams};
    use tuppence::sniff::nat::NatReply;

    fn parse(s: &str) -> Result<SniffCommand, ArgError> {
        parse_args(s.split_whitespace())
    }

    fn req(s: &str) -> RequestArgs {
        match parse(s) {
            Ok(SniffCommand::Request(r)) => r,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn serve_args() {
        let Ok(SniffCommand::Serve(a)) =
            parse("serve --listen unix:/tmp/s --nat-url=http://x/ --task-stderr")
        else {
            panic!()
        };
        assert_eq!(a.mode, ServeMode::Listen("unix:/tmp/s".parse().unwrap()));
        assert_eq!(a.nat_url.as_deref(), Some(&b"http://x/"[..]));
        assert!(a.task_stderr);
        assert!(matches!(
            parse("serve --connect tcp:127.0.0.1:9"),
            Ok(SniffCommand::Serve(ServeArgs {
                mode: ServeMode::Connect(_),
                ..
            }))
        ));
        for bad in [
            "serve",
            "serve --listen",
            "serve --listen unix:/a --connect unix:/b",
            "serve --listen nope:x",
            "serve --bogus",
            "serve --listen unix:/a extra",
            "serve --task-stderr=1 --listen unix:/a",
            "frobnicate",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse("--help"), Ok(SniffCommand::Help));
        assert!(parse_args(Vec::<String>::new()).is_err());
    }

    #[test]
    fn request_args() {
        let r = req("request unix:/s --id 7 --json nop");
        assert_eq!(
            (r.id, r.json, r.task.clone()),
            (TaskId::from(7), true, TaskArgs::Nop)
        );
        assert_eq!(r.timeout, DEFAULT_TIMEOUT);

        let r =
            req("request tcp:127.0.0.1:5 ping -4 --count 2 --size=100 a.example b --timeout 1.5");
        let TaskArgs::Ping(p) = &r.task else { panic!() };
        assert_eq!(p.targets.len(), 2);
        assert_eq!(
            (p.targets[1].family, p.targets[1].count, p.targets[1].size),
            (Family::V4, 2, 100)
        );
        assert_eq!(&p.targets[0].host[..], b"a.example");
        assert_eq!(r.timeout, Duration::from_millis(1500));
        let TaskArgs::Ping(p) = req("request unix:/s ping h").task else {
            panic!()
        };
        assert_eq!(
            (p.targets[0].family, p.targets[0].count, p.targets[0].size),
            (Family::Any, DEFAULT_PING_COUNT, DEFAULT_PING_SIZE)
        );

        let TaskArgs::Cert(c) =
            req("request unix:/s cert --full --details --starttls SMTP mail:25 [::1]:993 [::1] ::1 host").task
        else {
            panic!()
        };
        let hp: Vec<(&[u8], u16)> = c.targets.iter().map(|t| (&t.host[..], t.port)).collect();
        assert_eq!(
            hp,
            [
                (&b"mail"[..], 25),
                (b"::1", 993),
                (b"::1", 443),
                (b"::1", 443),
                (b"host", 443)
            ]
        );
        assert!(c.targets[0].want_cert && c.targets[0].want_details);
        assert!(!c.targets[0].want_chain && !c.targets[0].want_params);
        assert_eq!(c.targets[0].starttls, StartTls::Smtp);

        assert_eq!(
            req("request unix:/s nat --url http://127.0.0.1:8/ip").task,
            TaskArgs::Nat(NatParams {
                url: Some(Bytes::from_static(b"http://127.0.0.1:8/ip"))
            })
        );
        assert_eq!(
            req("request unix:/s nat").task,
            TaskArgs::Nat(NatParams::default())
        );

        for bad in [
            "request",
            "request unix:/s",
            "request unix:/s frob",
            "request unix:/s ping",
            "request unix:/s cert",
            "request unix:/s nop extra",
            "request unix:/s nat --url ftp://x/",
            "request unix:/s nop --url http://x/",
            "request unix:/s ping --full h",
            "request unix:/s cert --count 2 h",
            "request unix:/s ping --count 0 h",
            "request unix:/s ping --count 256 h",
            "request unix:/s cert --starttls gopher h",
            "request unix:/s cert h:99999",
            "request unix:/s cert [::1",
            "request unix:/s --id x nop",
            "request unix:/s --timeout 0 nop",
            "request unix:/s --timeout -1 nop",
            "request unix:/s --bogus nop",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_and_text() {
        let ping = TaskArgs::Ping(PingRequest {
            targets: vec![
                PingTarget {
                    family: Family::Any,
                    count: 2,
                    size: 56,
                    host: Bytes::from_static(b"lo\"cal"),
                },
                PingTarget {
                    family: Family::Any,
                    count: 2,
                    size: 56,
                    host: Bytes::from_static(b"x.invalid"),
                },
            ],
        });
        let result = TaskResult::Ping(vec![
            PingReply {
                ip: Bytes::from_static(b"127.0.0.1"),
                rtt_us: vec![Some(1038), None],
            },
            PingReply::unresolved(),
        ]);
        assert_eq!(
            render_json(TaskId::from(3), &ping, &result),
            "{\"id\":3,\"task\":\"ping\",\"status\":\"ok\",\"hosts\":[\
             {\"host\":\"lo\\\"cal\",\"ip\":\"127.0.0.1\",\"rtt_us\":[1038,null]},\
             {\"host\":\"x.invalid\",\"ip\":\"\",\"rtt_us\":[]}]}\n"
        );
        assert_eq!(
            render_text(&ping, &result),
            "lo\"cal (127.0.0.1): 1.038 ms, lost\nx.invalid: did not resolve\n"
        );
        let fail = TaskResult::Failed(Bytes::from_static(b"T"));
        assert_eq!(
            render_json(TaskId::from(1), &ping, &fail),
            "{\"id\":1,\"task\":\"ping\",\"status\":\"failed\",\"code\":\"T\",\"reason\":\"timed out\"}\n"
        );
        assert_eq!(
            render_text(&TaskArgs::Nop, &TaskResult::Unknown),
            "the agent does not know this task type (U)\n"
        );
        assert_eq!(exit_code(&fail), 1);
        assert_eq!(exit_code(&TaskResult::Nop), 0);

        let cert = TaskArgs::Cert(CertRequest {
            targets: vec![CertTarget {
                starttls: StartTls::None,
                want_cert: false,
                want_chain: false,
                want_details: true,
                want_params: true,
                port: 443,
                host: Bytes::from_static(b"localhost"),
            }],
        });
        let result = TaskResult::Cert(vec![CertReply {
            tls: Some(TlsParams {
                cipher: Bytes::from_static(b"C"),
                protocol: Bytes::from_static(b"TLSv1.3"),
            }),
            certs: vec![CertEntry {
                value: Bytes::from_static(b"AB12"),
                details: Some(CertDetails {
                    names: Bytes::from_static(b"a\nb"),
                    expiry: Bytes::from_static(b"Dec 1 00:00:00 2030 GMT"),
                }),
            }],
        }]);
        assert_eq!(
            render_json(TaskId::from(9), &cert, &result),
            "{\"id\":9,\"task\":\"cert\",\"status\":\"ok\",\"services\":[{\"host\":\"localhost\",\
             \"port\":443,\"protocol\":\"TLSv1.3\",\"cipher\":\"C\",\"certificates\":[{\"sha1\":\
             \"AB12\",\"names\":[\"a\",\"b\"],\"expiry\":\"Dec 1 00:00:00 2030 GMT\"}]}]}\n"
        );
        assert!(render_text(&cert, &result).contains("names: a, b"));
        let nat = TaskArgs::Nat(NatParams::default());
        let r = TaskResult::Nat(NatReply {
            ipv4: NatStatus::Direct,
            ipv6: NatStatus::None,
        });
        assert_eq!(
            render_json(TaskId::from(2), &nat, &r),
            "{\"id\":2,\"task\":\"nat\",\"status\":\"ok\",\"ipv4\":\"direct\",\"ipv6\":\"none\"}\n"
        );
        let mut s = String::new();
        json_str(&mut s, b"\x01\x7f\xff");
        assert_eq!(s, "\"\\u0001\\u007f\u{fffd}\"");
    }
}
