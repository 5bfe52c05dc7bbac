//! `tuppence sniff …`: the sniff background-task protocol, both sides. `sniff serve` runs
//! the agent side (`tuppence_agent::sniff`, on the same event loop as `tuppence serve`);
//! `sniff request` asks one task with the blocking requester (`tuppence_blocking::sniff`)
//! and prints the answer ([`render`]). Arguments are clap subcommands like every other
//! command's, so `--help` and shell completions cover them.

mod render;

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use bytes::Bytes;
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use tuppence::sniff::cert::{CertRequest, CertTarget, StartTls};
use tuppence::sniff::nat::{Nat, NatConfig, NatParams};
use tuppence::sniff::ping::{Family, PingRequest, PingTarget};
use tuppence::sniff::{Agent, AgentConfig, TaskId};
use tuppence_agent::sniff::{
    RunnerConfig, SniffDaemonConfig, TaskStderr, serve_listener_until, serve_until,
};
use tuppence_transport::{ListenOptions, Listener, Target};

use crate::exit::{self, Failure};
use crate::serve::{SocketFile, stop_on_signals};
use render::{TaskArgs, exit_code, render_json, render_text};

/// Default port for `cert HOST`.
const DEFAULT_TLS_PORT: u16 = 443;

const TARGETS: &str = "TARGET: unix:PATH, tcp:HOST:PORT, vsock:CID:PORT, serial:DEV[@BAUD], \
virtio:PATH.";

#[derive(Debug, Args)]
pub struct SniffArgs {
    #[command(subcommand)]
    pub command: SniffCommand,
}

#[derive(Debug, Subcommand)]
pub enum SniffCommand {
    /// Be a sniff agent: run the background tasks requesters ask for.
    #[command(after_help = SERVE_AFTER)]
    Serve(SniffServeArgs),
    /// Ask a sniff agent for one task and print its answer.
    #[command(after_help = REQUEST_AFTER)]
    Request(SniffRequestArgs),
}

const SERVE_AFTER: &str = "\
Each connection gets its own agent and its tasks end with it (each task in a cgroup of \
its own where the system allows). Output is capped at 16 MiB (F L), tasks time out after \
10 minutes (F T), at most 256 run per connection (F Q). SIGTERM or SIGINT stop the agent: \
its tasks are killed and a unix socket's file is removed.

TARGET: unix:PATH, tcp:HOST:PORT, vsock:CID:PORT, serial:DEV[@BAUD], virtio:PATH.

Exit status: 0 after a signal (or, with --connect, when the peer closed), 202 the \
listener or connection failed, 204 bad usage.";

const REQUEST_AFTER: &str = "\
The options --id, --timeout and --json may also follow the task.

Exit status: 0 the task succeeded (O), 1 it failed or the agent does not know it (F, U), \
202 no answer (connection, timeout), 204 bad usage.";

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("mode").required(true).args(["listen", "connect"])))]
pub struct SniffServeArgs {
    /// Listen on TARGET and serve every client, each with its own agent.
    #[arg(long, value_name = "TARGET", value_parser = parse_target)]
    pub listen: Option<Target>,
    /// Dial TARGET and serve that one stream until it closes.
    #[arg(long, value_name = "TARGET", value_parser = parse_target)]
    pub connect: Option<Target>,
    /// The address service NAT tasks ask when a request names none (http or https).
    #[arg(long, value_name = "URL")]
    pub nat_url: Option<OsString>,
    /// Let task stderr through to this process's stderr (for debugging a task type).
    #[arg(long)]
    pub task_stderr: bool,
}

#[derive(Debug, Args)]
pub struct SniffRequestArgs {
    #[arg(value_name = "TARGET", value_parser = parse_target, help = TARGETS)]
    pub target: Target,
    /// The task id (a task still running under it on the connection is aborted).
    #[arg(long, global = true, default_value_t = 1)]
    pub id: u32,
    /// Seconds to wait for the answer.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 120.0, value_parser = parse_timeout)]
    pub timeout: f64,
    /// Print the answer as one JSON object on one line.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub task: TaskCommand,
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// No task: answered at once (under a running id it cancels that task).
    Nop,
    /// Ping each HOST and report the round-trip times.
    Ping(PingArgs),
    /// Fetch the TLS certificates of each HOST[:PORT] (port 443 by default).
    Cert(CertArgs),
    /// Tell whether the system under test reaches the internet directly, through NAT, or
    /// not at all (IPv4 and IPv6).
    Nat(NatArgs),
}

#[derive(Debug, Args)]
pub struct PingArgs {
    /// IPv4 only.
    #[arg(short = '4', conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// IPv6 only.
    #[arg(short = '6')]
    pub ipv6: bool,
    /// Echo requests per host.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..))]
    pub count: u8,
    /// Payload size of each echo request, in bytes.
    #[arg(long, default_value_t = 56)]
    pub size: u16,
    #[arg(required = true, value_name = "HOST")]
    pub hosts: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct CertArgs {
    /// Whole certificates (PEM), else SHA-1 fingerprints.
    #[arg(long)]
    pub full: bool,
    /// The whole chain, else the host's own certificate.
    #[arg(long)]
    pub chain: bool,
    /// Each certificate's names and expiry.
    #[arg(long)]
    pub details: bool,
    /// The negotiated cipher and protocol.
    #[arg(long)]
    pub params: bool,
    /// Speak this protocol before TLS (STARTTLS).
    #[arg(long, value_enum, value_name = "PROTO", ignore_case = true)]
    pub starttls: Option<StartTlsArg>,
    /// HOST, HOST:PORT, [V6] or [V6]:PORT (a bare IPv6 address takes port 443).
    #[arg(required = true, value_name = "HOST[:PORT]", value_parser = parse_host_port)]
    pub hosts: Vec<(Bytes, u16)>,
}

/// The STARTTLS protocols of the `C` task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StartTlsArg {
    Smtp,
    Pop3,
    Imap,
    Ftp,
    Xmpp,
}

impl From<StartTlsArg> for StartTls {
    fn from(p: StartTlsArg) -> StartTls {
        match p {
            StartTlsArg::Smtp => StartTls::Smtp,
            StartTlsArg::Pop3 => StartTls::Pop3,
            StartTlsArg::Imap => StartTls::Imap,
            StartTlsArg::Ftp => StartTls::Ftp,
            StartTlsArg::Xmpp => StartTls::Xmpp,
        }
    }
}

#[derive(Debug, Args)]
pub struct NatArgs {
    /// The address service to ask (http or https), instead of the agent's --nat-url.
    #[arg(long, value_name = "URL")]
    pub url: Option<OsString>,
}

/// Runs `tuppence sniff …`; returns the exit status.
pub fn sniff(args: SniffArgs) -> Result<u8, Failure> {
    match args.command {
        SniffCommand::Serve(a) => serve(&a),
        SniffCommand::Request(a) => request(&a),
    }
}

/// `sniff request`: the answer on stdout; its status says how the task went.
fn request(args: &SniffRequestArgs) -> Result<u8, Failure> {
    let task = task_args(&args.task)?;
    let req = task
        .to_request()
        .map_err(|e| Failure::usage(format!("sniff request: cannot encode the request: {e}")))?;
    let id = TaskId::from(args.id);
    let timeout = Duration::from_secs_f64(args.timeout);
    let result = tuppence_blocking::sniff::request(&args.target, id, &req, timeout)
        .map_err(|e| Failure::new(exit::CONNECTION, format!("{}: {e}", args.target)))?;
    let text = if args.json {
        render_json(id, &task, &result)
    } else {
        render_text(&task, &result)
    };
    print!("{text}");
    Ok(exit_code(&result))
}

/// The typed task of a request; a URL that cannot be sent is a usage error.
fn task_args(task: &TaskCommand) -> Result<TaskArgs, Failure> {
    Ok(match task {
        TaskCommand::Nop => TaskArgs::Nop,
        TaskCommand::Ping(p) => {
            let family = match (p.ipv4, p.ipv6) {
                (true, _) => Family::V4,
                (_, true) => Family::V6,
                _ => Family::Any,
            };
            TaskArgs::Ping(PingRequest {
                targets: p
                    .hosts
                    .iter()
                    .map(|h| PingTarget {
                        family,
                        count: p.count,
                        size: p.size,
                        host: Bytes::copy_from_slice(h.as_bytes()),
                    })
                    .collect(),
            })
        }
        TaskCommand::Cert(c) => TaskArgs::Cert(CertRequest {
            targets: c
                .hosts
                .iter()
                .map(|(host, port)| CertTarget {
                    starttls: c.starttls.map(StartTls::from).unwrap_or_default(),
                    want_cert: c.full,
                    want_chain: c.chain,
                    want_details: c.details,
                    want_params: c.params,
                    port: *port,
                    host: host.clone(),
                })
                .collect(),
        }),
        TaskCommand::Nat(n) => {
            let params = NatParams {
                url: n.url.as_ref().map(|u| Bytes::copy_from_slice(u.as_bytes())),
            };
            params
                .encode(&mut bytes::BytesMut::new())
                .map_err(|e| Failure::usage(format!("sniff request: --url: {e}")))?;
            TaskArgs::Nat(params)
        }
    })
}

/// `sniff serve`: until SIGTERM or SIGINT (or, with `--connect`, the peer closing). The
/// first signal stops the server, which kills its tasks and removes its unix socket's
/// file; a second one exits at once (removing the file too). Killed by the signal, as it
/// was, the process left the file behind.
fn serve(args: &SniffServeArgs) -> Result<u8, Failure> {
    let config = SniffDaemonConfig {
        runner: RunnerConfig {
            stderr: if args.task_stderr {
                TaskStderr::Inherit
            } else {
                TaskStderr::Null
            },
            ..RunnerConfig::default()
        },
        ..SniffDaemonConfig::default()
    };
    let nat_url = args
        .nat_url
        .as_ref()
        .map(|u| Bytes::copy_from_slice(u.as_bytes()));
    let new_agent = || {
        let mut agent = Agent::new(AgentConfig::default());
        if let Some(url) = &nat_url {
            agent.register(Box::new(Nat::new(NatConfig {
                url: url.clone(),
                ..NatConfig::default()
            })));
        }
        agent
    };
    let mut stopping = Stopping::default();
    let cannot =
        |e: &dyn std::fmt::Display| Failure::new(exit::CONNECTION, format!("sniff serve: {e}"));
    let result = match (&args.listen, &args.connect) {
        (Some(target), _) => {
            let listener =
                Listener::bind(target, &ListenOptions::default()).map_err(|e| cannot(&e))?;
            // Known once the listener is bound: the socket file's identity.
            let sockets = SocketFile::of(target).into_iter().collect();
            serve_listener_until(listener, new_agent, &config, |stop| {
                stopping.arm(sockets, stop)
            })
            .map_err(|e| cannot(&e))
        }
        (None, Some(target)) => {
            let transport = target.connect().map_err(|e| cannot(&e))?;
            serve_until(new_agent(), transport, &config, |stop| {
                stopping.arm(Vec::new(), stop)
            })
            .map(|_| ())
            .map_err(|e| cannot(&e))
        }
        // clap requires one of them.
        (None, None) => Err(Failure::usage("sniff serve: --listen or --connect")),
    };
    if let Some(h) = stopping.handle {
        h.close();
    }
    if let Some(f) = stopping.failed {
        return Err(f);
    }
    result.map(|()| 0)
}

/// The signal handling of a sniff server (see `crate::serve::stop_on_signals`).
#[derive(Default)]
struct Stopping {
    handle: Option<signal_hook::iterator::Handle>,
    failed: Option<Failure>,
}

impl Stopping {
    /// Called once the server is set up: SIGTERM and SIGINT stop it.
    fn arm(&mut self, sockets: Vec<SocketFile>, stop: tuppence_agent::sniff::StopHandle) {
        let on_signal = stop.clone();
        match stop_on_signals("tuppence sniff serve", sockets, move || on_signal.stop()) {
            Ok(h) => self.handle = Some(h),
            Err(f) => {
                // Not serving without a way to stop cleanly.
                self.failed = Some(f);
                stop.stop();
            }
        }
    }
}

fn parse_target(s: &str) -> Result<Target, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// Seconds, positive and finite.
fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= f64::from(u32::MAX) => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

/// `HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT`, or a bare IPv6 address (more than one colon).
fn parse_host_port(s: &str) -> Result<(Bytes, u16), String> {
    let port =
        |p: &str| -> Result<u16, String> { p.parse().map_err(|_| format!("bad port in {s:?}")) };
    if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("missing ] in {s:?}"));
        };
        let p = match after.strip_prefix(':') {
            Some(p) => port(p)?,
            None if after.is_empty() => DEFAULT_TLS_PORT,
            None => return Err(format!("junk after ] in {s:?}")),
        };
        return Ok((Bytes::copy_from_slice(host.as_bytes()), p));
    }
    match (s.matches(':').count(), s.rsplit_once(':')) {
        (1, Some((host, p))) => Ok((Bytes::copy_from_slice(host.as_bytes()), port(p)?)),
        _ => Ok((Bytes::copy_from_slice(s.as_bytes()), DEFAULT_TLS_PORT)),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(s: &str) -> Result<SniffCommand, clap::Error> {
        let words = std::iter::once("tuppence").chain(std::iter::once("sniff"));
        Cli::try_parse_from(words.chain(s.split_whitespace())).map(|cli| match cli.command {
            Command::Sniff(a) => a.command,
            other => panic!("{other:?}"),
        })
    }

    fn req(s: &str) -> (SniffRequestArgs, TaskArgs) {
        match parse(s) {
            Ok(SniffCommand::Request(r)) => {
                let task = task_args(&r.task).expect("task");
                (r, task)
            }
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
        assert_eq!(a.listen, Some("unix:/tmp/s".parse().unwrap()));
        assert_eq!(a.nat_url, Some("http://x/".into()));
        assert!(a.task_stderr);
        assert!(matches!(
            parse("serve --connect tcp:127.0.0.1:9"),
            Ok(SniffCommand::Serve(SniffServeArgs {
                connect: Some(_),
                listen: None,
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
    }

    #[test]
    fn request_args() {
        let (r, task) = req("request unix:/s --id 7 --json nop");
        assert_eq!((r.id, r.json, task), (7, true, TaskArgs::Nop));
        assert_eq!(r.timeout, 120.0);

        let (r, task) =
            req("request tcp:127.0.0.1:5 ping -4 --count 2 --size=100 a.example b --timeout 1.5");
        let TaskArgs::Ping(p) = &task else { panic!() };
        assert_eq!(p.targets.len(), 2);
        assert_eq!(
            (p.targets[1].family, p.targets[1].count, p.targets[1].size),
            (Family::V4, 2, 100)
        );
        assert_eq!(&p.targets[0].host[..], b"a.example");
        assert_eq!(r.timeout, 1.5);
        let (_, TaskArgs::Ping(p)) = req("request unix:/s ping h") else {
            panic!()
        };
        assert_eq!(
            (p.targets[0].family, p.targets[0].count, p.targets[0].size),
            (Family::Any, 3, 56)
        );

        let (_, TaskArgs::Cert(c)) = req(
            "request unix:/s cert --full --details --starttls SMTP mail:25 [::1]:993 [::1] ::1 host",
        ) else {
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
            req("request unix:/s nat --url http://127.0.0.1:8/ip").1,
            TaskArgs::Nat(NatParams {
                url: Some(Bytes::from_static(b"http://127.0.0.1:8/ip"))
            })
        );
        assert_eq!(
            req("request unix:/s nat").1,
            TaskArgs::Nat(NatParams::default())
        );
        // A URL the protocol cannot carry parses, and is refused before anything is sent.
        let Ok(SniffCommand::Request(r)) = parse("request unix:/s nat --url ftp://x/") else {
            panic!()
        };
        assert!(task_args(&r.task).is_err());

        for bad in [
            "request",
            "request unix:/s",
            "request unix:/s frob",
            "request unix:/s ping",
            "request unix:/s cert",
            "request unix:/s nop extra",
            "request unix:/s nop --url http://x/",
            "request unix:/s ping --full h",
            "request unix:/s cert --count 2 h",
            "request unix:/s ping --count 0 h",
            "request unix:/s ping --count 256 h",
            "request unix:/s ping -4 -6 h",
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
}
