//! The command line, as clap derive structures. Every option's help says what it does and
//! what the default is, because `--help` is the manual.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tuppence_transport::DEFAULT_VIRTIO_PORT;

const TARGET_HELP: &str = "\
Where the agent is: virtio:/HOST/SOCKET (QEMU's unix socket of the guest's virtio-serial \
channel), serial:/dev/ttyX[@BAUD], vsock:CID:PORT, unix:/PATH, tcp:HOST:PORT, local (an \
agent embedded in this process; no setup), exec:COMMAND (run COMMAND, e.g. `podman exec -i \
CTR tuppence serve --stdio`, and speak over its stdin/stdout; split like a shell would, \
without one), ssh:[USER@]HOST[:PORT][?agent=PATH&o=OPTION] (`tuppence serve --stdio` on \
HOST through the system's ssh), or chroot:DIR[?agent=PATH] (this binary's agent chrooted \
into DIR; root only). Prefix legacy+ to speak protocol 3.0, the C twopence executor's.";

/// The target forms, shown by `tuppence --help` (`-t` repeats them in short).
const TARGETS: &str = "\
Targets (-t, or $TUPPENCE_TARGET; prefix legacy+ for protocol 3.0):
  local                     an agent inside this process (the default)
  virtio:/HOST/SOCKET       QEMU's unix socket of a guest's virtio-serial channel
  serial:/dev/ttyS1[@BAUD]  a serial line, raw 8N1 (default 115200)
  vsock:CID:PORT            AF_VSOCK
  unix:/PATH, tcp:HOST:PORT sockets (no authentication: keep them private)
  exec:COMMAND              run COMMAND and speak over its stdin/stdout; COMMAND is split
                            like a shell would, without a shell (use sh -c '…' for one):
                              exec:podman exec -i CTR tuppence serve --stdio
                              exec:kubectl exec -i POD -- tuppence serve --stdio
  ssh:[USER@]HOST[:PORT][?agent=PATH&o=OPTION…]
                            tuppence serve --stdio on HOST through your ssh (its config,
                            keys and agent; -T, BatchMode=yes); agent= is the remote
                            agent, each o= an ssh -o option:
                              ssh:root@[::1]:2222?agent=/opt/tuppence
  chroot:DIR[?agent=PATH]   this binary's agent chrooted into DIR (root only)";

const ABOUT: &str =
    "Drive a system under test (VM, serial board, container) over a byte link with no network";

const LONG_ABOUT: &str = "\
Drive a system under test (VM, serial board, container) over a byte link with no network.

tuppence talks to an agent (`tuppence serve`, or the C twopence_test_server with a legacy+ \
target) over a virtio-serial channel, a serial line, vsock, a unix socket or TCP, or over \
the stdin/stdout of a command that starts one (exec:, e.g. podman exec or kubectl exec; \
ssh:; chroot:). It runs \
commands with live stdin/stdout/stderr, copies files in and out, watches event sources and \
samples running commands. The default target, `local`, runs an agent inside this process, \
so `tuppence run -- uname -a` works with nothing set up.

Logging goes to stderr: -v for more, -q for less, or TUPPENCE_LOG: a level (debug) or \
levels per crate or module, as in TUPPENCE_LOG=warn,tuppence_agent=trace.";

#[derive(Debug, Parser)]
#[command(
    name = "tuppence",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = format!("{TARGETS}\n\n{}", crate::exit::TABLE),
    propagate_version = true,
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The options every subcommand takes.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less log output on stderr (-q errors only, -qq nothing but the final error line).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,
}

impl Cli {
    /// [`Cli::command`] with each subcommand's options defined only when that subcommand
    /// is parsed (`Command::defer`): defining all of them took 0.2 ms of every start, a
    /// twentieth of a `tuppence run -- true`. Help and errors are the same (a test compares
    /// every subcommand's help with the derived command's).
    pub fn command_for_parsing() -> clap::Command {
        use clap::Command as C;
        // A flattened `Args` struct's doc comment becomes the about of whatever it is
        // flattened into, so the about is set again after the options, as the derive does.
        // (The derive drops the final period of a one-sentence doc comment.)
        macro_rules! sub {
            ($name:literal, $about:literal, $args:ty) => {
                C::new($name)
                    .about($about)
                    .long_about(None)
                    .defer(|c| <$args>::augment_args(c).about($about).long_about(None))
            };
        }
        let top = LogArgs::augment_args(C::new("tuppence"))
            .version(env!("CARGO_PKG_VERSION"))
            .about(ABOUT)
            .long_about(LONG_ABOUT)
            .after_help(format!("{TARGETS}\n\n{}", crate::exit::TABLE))
            .propagate_version(true)
            .subcommand_required(true)
            .arg_required_else_help(true);
        top.subcommands([
            sub!(
                "run",
                "Run a command on the target, streaming its output; exit with its status",
                RunArgs
            )
            .after_help(RUN_AFTER)
            .override_usage("tuppence run [OPTIONS] -- COMMAND..."),
            sub!(
                "inject",
                "Copy a local file (or stdin) to the target",
                InjectArgs
            ),
            sub!(
                "extract",
                "Copy a file from the target to a local file (or stdout)",
                ExtractArgs
            ),
            sub!(
                "interrupt",
                "Send a signal to a process group on the target (by its id, not by transaction)",
                InterruptArgs
            )
            .after_help(INTERRUPT_AFTER),
            sub!(
                "monitor",
                "Print the events of an agent event source until Ctrl-C",
                MonitorArgs
            ),
            sub!(
                "procinfo",
                "Start a command and print its process information (pid, rss, CPU time, ...)",
                ProcinfoArgs
            )
            .after_help(PROCINFO_AFTER)
            .override_usage("tuppence procinfo [OPTIONS] -- COMMAND..."),
            sub!(
                "quit",
                "Ask the agent to exit (it kills what it started first)",
                QuitArgs
            ),
            sub!(
                "ping",
                "Connect, print the agent's protocol version, connection id, keepalive and latency",
                PingArgs
            ),
            sub!(
                "serve",
                "Be the agent: serve clients on the given ports and sockets",
                ServeArgs
            )
            .after_help(SERVE_AFTER),
            sub!(
                "sniff",
                "The sniff background-task protocol: `sniff serve` (agent) and `sniff request`",
                crate::sniff::SniffArgs
            ),
            sub!(
                "completions",
                "Print a shell completion script to stdout",
                CompletionsArgs
            ),
        ])
    }

    /// Parses `std::env::args` as `Cli::try_parse` does: the plainest `run` lines by
    /// [`Cli::parse_plain_run`], everything else with [`Cli::command_for_parsing`].
    pub fn try_parse_fast() -> Result<Cli, clap::Error> {
        use clap::FromArgMatches;
        let target = std::env::var_os(TARGET_ENV);
        if let Some(cli) = Cli::parse_plain_run(std::env::args_os(), target) {
            return Ok(cli);
        }
        let mut cmd = Cli::command_for_parsing();
        let mut matches = cmd.try_get_matches_from_mut(std::env::args_os())?;
        Cli::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut cmd))
    }

    /// The command line `tuppence run [-t TARGET] [-u USER] -- COMMAND...` (long forms
    /// and `--opt=value` too), without clap; `None` for any other line, which clap then
    /// parses (so help, errors and every other option stay clap's).
    ///
    /// Why: it is the line scripts run in loops, and building clap's parser cold (its code
    /// paged in, its strings made) took 130–160 µs of a 2 ms `tuppence run -- true`, more
    /// than any other step of ours. `target_env` is `$TUPPENCE_TARGET`. A test holds the
    /// result equal to clap's for every shape this accepts.
    pub fn parse_plain_run(
        args: impl IntoIterator<Item = OsString>,
        target_env: Option<OsString>,
    ) -> Option<Cli> {
        let mut args = args.into_iter();
        args.next()?; // the program's name
        if args.next()? != "run" {
            return None;
        }
        // An option's value as clap would take it; anything it might read differently
        // (empty, hyphen-led, not UTF-8) goes to clap.
        fn value(v: OsString) -> Option<String> {
            let v = v.into_string().ok()?;
            (!v.is_empty() && !v.starts_with('-')).then_some(v)
        }
        let (mut target, mut user) = (None, None);
        loop {
            let arg = args.next()?;
            let arg = arg.to_str()?;
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(OsString::from(v))),
                _ => (arg, None),
            };
            let slot = match name {
                "--" if inline.is_none() => break,
                "-t" | "--target" => &mut target,
                "-u" | "--user" => &mut user,
                _ => return None,
            };
            if slot.is_some() {
                return None;
            }
            *slot = Some(value(match inline {
                Some(v) => v,
                None => args.next()?,
            })?);
        }
        let command: Vec<OsString> = args.collect();
        if command.is_empty() {
            return None;
        }
        let target = match (target, target_env) {
            (Some(t), _) => t,
            (None, None) => "local".to_owned(),
            (None, Some(env)) => env.into_string().ok().filter(|t| !t.is_empty())?,
        };
        Some(Cli {
            log: LogArgs {
                verbose: 0,
                quiet: 0,
            },
            command: Command::Run(RunArgs {
                target: TargetArgs {
                    target,
                    connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                    keepalive: None,
                },
                user,
                timeout: 0.0,
                tty: false,
                interactive: false,
                env: Vec::new(),
                stdout: None,
                stderr: None,
                command,
            }),
        })
    }
}

/// Where `-t` is read from when it is not given.
const TARGET_ENV: &str = "TUPPENCE_TARGET";
/// `--connect-timeout`'s default, in seconds.
const DEFAULT_CONNECT_TIMEOUT: f64 = 10.0;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command on the target, streaming its output; exit with its status.
    #[command(after_help = RUN_AFTER, override_usage = "tuppence run [OPTIONS] -- COMMAND...")]
    Run(RunArgs),
    /// Copy a local file (or stdin) to the target.
    Inject(InjectArgs),
    /// Copy a file from the target to a local file (or stdout).
    Extract(ExtractArgs),
    /// Send a signal to a process group on the target (by its id, not by transaction).
    #[command(after_help = INTERRUPT_AFTER)]
    Interrupt(InterruptArgs),
    /// Print the events of an agent event source until Ctrl-C.
    Monitor(MonitorArgs),
    /// Start a command and print its process information (pid, rss, CPU time, ...).
    #[command(
        after_help = PROCINFO_AFTER,
        override_usage = "tuppence procinfo [OPTIONS] -- COMMAND..."
    )]
    Procinfo(ProcinfoArgs),
    /// Ask the agent to exit (it kills what it started first).
    Quit(QuitArgs),
    /// Connect, print the agent's protocol version, connection id, keepalive and latency.
    Ping(PingArgs),
    /// Be the agent: serve clients on the given ports and sockets.
    #[command(after_help = SERVE_AFTER)]
    Serve(ServeArgs),
    /// The sniff background-task protocol: `sniff serve` (agent) and `sniff request`.
    Sniff(crate::sniff::SniffArgs),
    /// Print a shell completion script to stdout.
    Completions(CompletionsArgs),
}

/// Options of every command that talks to an agent.
#[derive(Debug, Args)]
pub struct TargetArgs {
    #[arg(short, long, env = TARGET_ENV, default_value = "local", help = TARGET_HELP, value_name = "TARGET")]
    pub target: String,
    /// Seconds to wait for the agent's answer to the hello.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_CONNECT_TIMEOUT, value_parser = parse_seconds)]
    pub connect_timeout: f64,
    /// Keepalive to ask for, in seconds (0 = off); default: the agent's setting. The link is
    /// declared dead after this long without hearing from the agent.
    #[arg(short = 'k', long, value_name = "SECS", value_parser = parse_keepalive)]
    pub keepalive: Option<u16>,
}

const RUN_AFTER: &str = "\
The COMMAND words are joined with spaces and run by /bin/sh -c on the target, as ssh does: \
quote what the remote shell should see, e.g. tuppence run -- 'echo $HOME'.

Ctrl-C sends INT to the remote command's process group (TERM, HUP and QUIT are forwarded \
as themselves); a second signal sends KILL; a third gives up waiting and exits with 130.

With --timeout T, tuppence itself gives up T + 5 s after sending the command if the \
agent has not ended it by then (the C agent cannot always: a background child keeps it \
waiting): the command is sent KILL and the status is 200.

Exit status: the remote exit code, 128+N if signal N killed it, 200 if it timed out, 201 \
if it could not be started, 202 connection failure, 203 protocol failure, 204 bad usage \
(also: command, environment and user too large for one packet, 32768 bytes with legacy+), \
205 local output file failure.";

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// User to run as [default: root; on the local target, yourself].
    #[arg(short, long)]
    pub user: Option<String>,
    /// Seconds after which the agent kills the command (rounded up); 0 = the agent's
    /// default (60 s unless `serve --default-timeout` says otherwise; a legacy+ target is
    /// sent 60, since the C agent reads 0 as 12 s).
    #[arg(long, value_name = "SECS", default_value_t = 0.0, value_parser = parse_seconds)]
    pub timeout: f64,
    /// Run on a pseudo-terminal: stdout and stderr arrive merged, Ctrl-C and other keys go
    /// to the remote terminal (our terminal is switched to raw mode meanwhile).
    #[arg(long)]
    pub tty: bool,
    /// Forward stdin even when it is a terminal (a file or pipe on stdin is always
    /// forwarded; a terminal is left alone unless -i or --tty).
    #[arg(short, long)]
    pub interactive: bool,
    /// Set NAME=VALUE in the command's environment; NAME alone takes the value from ours
    /// (skipped with a warning when unset). Repeatable.
    #[arg(short, long = "env", value_name = "NAME[=VALUE]")]
    pub env: Vec<OsString>,
    /// Write the command's stdout to FILE (truncated) instead of our stdout.
    #[arg(long, value_name = "FILE")]
    pub stdout: Option<PathBuf>,
    /// Write the command's stderr to FILE (truncated) instead of our stderr; may be the
    /// same file as --stdout.
    #[arg(long, value_name = "FILE")]
    pub stderr: Option<PathBuf>,
    /// The command and its arguments (after --).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Ctrl-C aborts the transfer at once, even while LOCAL (a pipe, a terminal) \
has nothing to read: the agent removes its temporary and nothing is written remotely.

Injects are durable: when tuppence inject exits 0, the agent has flushed the file's data \
to disk (fdatasync), renamed it over REMOTE and flushed the directory, so a crash or reset \
after that finds the new file complete under its name. A crash during the transfer leaves \
the old file untouched (and at most a hidden \
.NAME.tuppence-XXXXXXXX temporary beside it). The agent writes the data back while it \
arrives, so the final flush is short.

Exit status: 0 done, 201 the agent could not write the file, 202 \
connection failure, 204 bad usage, 205 the local file could not be read, 130 Ctrl-C."
)]
pub struct InjectArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// User who owns the remote file [default: root; on the local target, yourself].
    #[arg(short, long)]
    pub user: Option<String>,
    /// Permission bits of the remote file, in octal [default: the local file's rwx bits,
    /// 0644 for stdin].
    #[arg(short, long, value_name = "OCTAL", value_parser = parse_mode)]
    pub mode: Option<u32>,
    /// Local file to send; - for stdin.
    pub local: PathBuf,
    /// Remote path (relative paths are under the user's home; a trailing / appends the
    /// local file's name). The agent writes a temporary beside it and renames it into
    /// place only when complete.
    pub remote: String,
}

#[derive(Debug, Args)]
#[command(
    after_help = "LOCAL is treated as cp treats its destination. A new or regular file is \
written to a temporary beside it and renamed into place only when the transfer succeeded, \
so a failure never leaves an empty or partial file; an existing one keeps its permission \
bits, a new one gets 0666 minus the umask. A FIFO or device is written in place (a FIFO \
waits for its reader; /dev/full fails with status 205). A symbolic link is followed and \
stays; a link to nothing is refused. A remote file that shrinks while it is read fails \
with 201 and nothing is kept.

Exit status: 0 done, 201 the agent could not read the file, 202 connection failure, 204 \
bad usage, 205 the local file could not be written, 130 Ctrl-C."
)]
pub struct ExtractArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// User to read the remote file as [default: root; on the local target, yourself].
    #[arg(short, long)]
    pub user: Option<String>,
    /// Remote file (relative paths are under the user's home).
    pub remote: String,
    /// Local destination; - for stdout; an existing directory receives the remote file's
    /// name.
    pub local: PathBuf,
}

const INTERRUPT_AFTER: &str = "\
Why a process group and not a transaction id: transaction ids (xids) belong to one \
connection, and the agent gives every new connection its own. A second tuppence process \
therefore cannot reach the xid of a command that `tuppence run` started; that run forwards \
Ctrl-C itself. What another process can do is signal the command's process group: the agent \
starts every command in its own group, whose id `tuppence run -v` logs and `tuppence \
procinfo` prints (pgid). This runs `kill -SIGNAL -PGID` on the target and exits with \
kill's status.";

#[derive(Debug, Args)]
pub struct InterruptArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// User to send the signal as [default: root; on the local target, yourself].
    #[arg(short, long)]
    pub user: Option<String>,
    /// Signal name (INT, TERM, KILL, HUP, USR1, ...; with or without SIG) or number.
    #[arg(short, long, default_value = "INT", value_parser = parse_signal_name)]
    pub signal: String,
    /// Process-group id of the remote command.
    pub pgid: u32,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Sources: agent (the agent's audit trail: one record per request with its \
outcome), kmsg (new kernel log lines), file:PATH (lines appended to a regular file; a FIFO, \
socket or device is refused with 22). Events are \
written to stdout as they arrive. Ctrl-C ends the subscription cleanly and exits 0. Not \
available over the legacy 3.0 dialect."
)]
pub struct MonitorArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print the events already pending, then exit instead of waiting for more.
    #[arg(long)]
    pub settle: bool,
    /// Event source: agent, kmsg or file:PATH.
    pub source: String,
}

const PROCINFO_AFTER: &str = "\
Process information is only available about a command started on the same connection, so \
this starts COMMAND itself (its stdin closed, its output copied to our stderr), waits \
--after seconds, and prints one line of NAME=VALUE pairs to stdout. Then it kills the \
command, unless --wait or --every let it run to its end (and mirror its exit status). Not \
available over the legacy 3.0 dialect.

Fields: pid pgid state uid gid rss_kib utime_ms stime_ms elapsed_ms threads comm";

#[derive(Debug, Args)]
pub struct ProcinfoArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// User to run as [default: root; on the local target, yourself].
    #[arg(short, long)]
    pub user: Option<String>,
    /// Seconds after which the agent kills the command; 0 = the agent's default.
    #[arg(long, value_name = "SECS", default_value_t = 0.0, value_parser = parse_seconds)]
    pub timeout: f64,
    /// Fields to print (repeatable or comma-separated) [default: all].
    #[arg(short, long, value_enum, value_delimiter = ',', value_name = "NAME")]
    pub field: Vec<Field>,
    /// Seconds to let the command run before the (first) sample.
    #[arg(long, value_name = "SECS", default_value_t = 0.0, value_parser = parse_seconds)]
    pub after: f64,
    /// Sample again every SECS seconds until the command ends; exit with its status.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub every: Option<f64>,
    /// Let the command finish after the sample and exit with its status, instead of
    /// killing it.
    #[arg(long)]
    pub wait: bool,
    /// The command and its arguments (after --), run by /bin/sh -c.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<OsString>,
}

/// Procinfo fields by name (ARCHITECTURE.md, "Link protocol": types 1..=11).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Field {
    Pid,
    Pgid,
    State,
    Uid,
    Gid,
    RssKib,
    UtimeMs,
    StimeMs,
    ElapsedMs,
    Threads,
    Comm,
}

#[derive(Debug, Args)]
#[command(
    after_help = "With --no-quit on the agent the request is ignored; this command \
cannot tell and exits 0 once the request is sent."
)]
pub struct QuitArgs {
    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Debug, Args)]
pub struct PingArgs {
    #[command(flatten)]
    pub target: TargetArgs,
}

const SERVE_AFTER: &str = "\
Listeners may be combined; with none, --virtio is assumed (what the C \
twopence_test_server does). Once every listener is open a line `tuppence serve: ready on \
TARGET, ...` is printed to stderr. SIGTERM or SIGINT stop the agent cleanly: commands it \
started are killed and reaped, partial injected files removed. It also exits, with status \
0, when a client sends quit (unless --no-quit). Audit lines (commands, injects, extracts) \
are logged at info level.

The protocol has no authentication: whoever can reach a listener can run commands as any \
user the agent may switch to. Unix sockets are created mode 0600; TCP is opened only on the \
address given.

With --stdio the agent serves exactly one client on its own stdin and stdout (or on a \
connected socket on stdin) and exits when that link closes: this is what exec:, ssh: and \
chroot: targets start, e.g. tuppence run -t 'exec:podman exec -i CTR tuppence serve \
--stdio' -- uname -a. Stdout then carries nothing but the protocol; the log goes to stderr \
(warnings only unless -v; there is no ready line) and the client shows it. The stdio fds \
are never set non-blocking (they are shared with whoever started the agent): two threads \
relay them to the agent's own socket.

--root-directory DIR chroots into DIR (and changes to its /) before anything is served \
or opened, as the C agent's option of that name; root only. Inside, the agent sees only \
DIR: commands need DIR/bin/sh, users come from DIR/etc/passwd, tty commands need \
DIR/dev/ptmx, procinfo needs DIR/proc, and cgroups are used only if mounted in DIR.

Exit status: 0 after quit or a signal (or, with --stdio, the end of the link), 202 a \
listener could not be opened (or the chroot failed), 204 bad usage.";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Serve on a virtio-serial port of this guest [PATH default:
    /// /dev/virtio-ports/org.opensuse.twopence.0].
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = DEFAULT_VIRTIO_PORT)]
    pub virtio: Vec<PathBuf>,
    /// Serve on a serial tty, raw 8N1 (BAUD default 115200).
    #[arg(long, value_name = "DEV[@BAUD]")]
    pub serial: Vec<String>,
    /// Listen on this AF_VSOCK port, from any CID.
    #[arg(long, value_name = "PORT")]
    pub vsock: Vec<u32>,
    /// Listen on a unix socket (a stale socket file is replaced).
    #[arg(long, value_name = "PATH")]
    pub unix: Vec<PathBuf>,
    /// Permission bits of --unix sockets, in octal.
    #[arg(long, value_name = "OCTAL", default_value = "0600", value_parser = parse_mode)]
    pub unix_mode: u32,
    /// Listen on TCP at an explicit address (HOST:PORT or [V6]:PORT; port 0 = any free
    /// port, shown in the ready line). Unauthenticated: bind loopback or a private link.
    #[arg(long, value_name = "ADDR:PORT")]
    pub tcp: Vec<String>,
    /// Clients served at once; more are refused (their hello is answered "too many
    /// clients", then the connection is closed). Every connection counts: a controller
    /// holding more sessions to this one agent needs a higher limit.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_clients: usize,
    /// Live transactions per client.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_transactions: usize,
    /// Timeout in seconds for commands that ask for 0.
    #[arg(long, value_name = "SECS", default_value_t = 60.0, value_parser = parse_seconds)]
    pub default_timeout: f64,
    /// Keepalive offered on sockets (unix, TCP, vsock), seconds; 0 = off, else at least 10.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = parse_keepalive)]
    pub keepalive: u16,
    /// Keepalive offered on serial and virtio ports, seconds; 0 = off (a tty has no
    /// disconnect, so silence is normal there), else at least 10. A new client's hello
    /// ends a vanished client's session on a port anyway: the keepalive only makes the
    /// agent notice sooner when nobody comes.
    #[arg(long, value_name = "SECS", default_value_t = 0, value_parser = parse_keepalive)]
    pub port_keepalive: u16,
    /// On serial and virtio ports, a silence this long inside a packet next to a new
    /// client's hello (just before it, or just after: the client waits for its reply)
    /// drops the unfinished packet in front of the hello as line noise left by a client
    /// that died mid-write; a client that merely pauses is never cut. 0 = never.
    #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = parse_seconds)]
    pub port_partial_timeout: f64,
    /// Only these users may be run as or act as (repeatable) [default: any]. Monitors then
    /// read as an allowed user too: `file:` as the first who may open the file, `kmsg` only
    /// if one may read the kernel log, `agent` only if the agent's own user is allowed.
    #[arg(long = "allow-user", value_name = "USER")]
    pub allow_users: Vec<String>,
    /// Ignore clients' quit requests.
    #[arg(long)]
    pub no_quit: bool,
    /// Log every request with its outcome: commands, transfers, monitors, interrupts,
    /// refusals (the default).
    #[arg(long, overrides_with = "no_audit")]
    pub audit: bool,
    /// Do not log requests.
    #[arg(long, overrides_with = "audit")]
    pub no_audit: bool,
    /// Do not run each command in a cgroup of its own. By default, where cgroup v2 is
    /// writable (root on the host, or a delegated subtree), a timeout, an interrupt with
    /// KILL or a disconnect kills everything a command started, even processes that left
    /// its process group with setsid; without cgroups only the process group is killed.
    #[arg(long)]
    pub no_cgroups: bool,
    /// Serve one client on stdin/stdout (or a connected socket on stdin) and exit when it
    /// leaves: the agent end of exec:, ssh: and chroot: targets.
    #[arg(long, conflicts_with_all = ["virtio", "serial", "vsock", "unix", "tcp"])]
    pub stdio: bool,
    /// chroot(2) into DIR and change to its / before serving (root only).
    #[arg(long, value_name = "DIR")]
    pub root_directory: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to generate completions for.
    pub shell: clap_complete::Shell,
}

/// Seconds as a non-negative finite decimal (`1`, `0.5`).
fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=f64::from(u32::MAX)).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds (expected e.g. 10 or 0.5)"
        )),
    }
}

/// A keepalive in seconds: 0 (off) or at least the link's minimum. Shorter values are
/// refused rather than silently raised to the minimum by both sides (which the hello
/// reply, and so `tuppence ping`, would not show).
fn parse_keepalive(s: &str) -> Result<u16, String> {
    let min = tuppence::link::MIN_KEEPALIVE.as_secs();
    match s.parse::<u16>() {
        Ok(0) => Ok(0),
        Ok(k) if u64::from(k) >= min => Ok(k),
        Ok(k) => Err(format!(
            "{k} s is below the keepalive minimum of {min} s (0 turns keepalives off)"
        )),
        Err(_) => Err(format!(
            "{s:?} is not a keepalive in seconds (expected 0 for off, or {min} to 65535)"
        )),
    }
}

/// Permission bits in octal, with or without a leading 0 (`644`, `0644`, `0o644`).
fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(m),
        _ => Err(format!(
            "{s:?} is not an octal mode (expected e.g. 0644 or 755)"
        )),
    }
}

/// Signal names travel as text and end up in a remote shell command: only letters and
/// digits are accepted.
fn parse_signal_name(s: &str) -> Result<String, String> {
    let upper = s.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if !bare.is_empty() && bare.len() <= 16 && bare.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Ok(bare.to_owned());
    }
    Err(format!(
        "{s:?} is not a signal name (expected e.g. INT, TERM, KILL or 9)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn modes_and_seconds() {
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("0988").is_err());
        assert!(parse_mode("").is_err());
        assert!(parse_mode("17777").is_err());
        assert_eq!(parse_seconds("0.5"), Ok(0.5));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("inf").is_err());
        assert_eq!(parse_signal_name("sigterm"), Ok("TERM".into()));
        assert_eq!(parse_signal_name("9"), Ok("9".into()));
        assert!(parse_signal_name("INT; rm").is_err());
    }

    /// The clap-free `run` parser gives what clap gives for every line it accepts, and
    /// leaves to clap every line it could read differently.
    #[test]
    fn the_plain_run_parser_is_clap() {
        use clap::FromArgMatches;
        fn os(line: &[&str]) -> Vec<OsString> {
            line.iter().map(OsString::from).collect()
        }
        // clap reads `$TUPPENCE_TARGET` itself, so its side is always given `-t`: the
        // environment's value, or the default, where the line has none.
        let clap = |line: &[&str], env: Option<&str>| {
            let has_target = line
                .iter()
                .take_while(|a| **a != "--")
                .any(|a| a.starts_with("-t") || a.starts_with("--target"));
            let mut line = os(line);
            if !has_target {
                let t = env.unwrap_or("local");
                line.splice(2..2, [OsString::from("-t"), OsString::from(t)]);
            }
            let m = Cli::command_for_parsing().try_get_matches_from(line).ok()?;
            Some(format!("{:?}", Cli::from_arg_matches(&m).ok()?))
        };
        let accepted: &[&[&str]] = &[
            &["tuppence", "run", "--", "true"],
            &["tuppence", "run", "--", "sh", "-c", "exit 3", "--", "-x"],
            &["tuppence", "run", "-t", "unix:/run/t.sock", "--", "true"],
            &[
                "tuppence", "run", "--target", "tcp:h:1", "-u", "me", "--", "a",
            ],
            &[
                "tuppence",
                "run",
                "--target=ssh:h?o=A=b",
                "--user=me",
                "--",
                "a",
            ],
            &[
                "tuppence", "run", "-u", "nobody", "-t", "local", "--", "--help",
            ],
        ];
        for line in accepted {
            for env in [None, Some("unix:/from/env")] {
                let fast = Cli::parse_plain_run(os(line), env.map(OsString::from))
                    .unwrap_or_else(|| panic!("{line:?} with {env:?} was left to clap"));
                assert_eq!(
                    Some(format!("{fast:?}")),
                    clap(line, env),
                    "{line:?} {env:?}"
                );
            }
        }
        let left: &[&[&str]] = &[
            &["tuppence"],
            &["tuppence", "inject", "--", "a"],
            &["tuppence", "run"],
            &["tuppence", "run", "--"],
            &["tuppence", "run", "true"],
            &["tuppence", "run", "-v", "--", "true"],
            &["tuppence", "run", "--help"],
            &["tuppence", "run", "-h", "--", "true"],
            &["tuppence", "run", "--timeout", "5", "--", "true"],
            &["tuppence", "run", "-t", "--", "true"],
            &["tuppence", "run", "-t", "", "--", "true"],
            &["tuppence", "run", "-t", "a", "-t", "b", "--", "true"],
            &["tuppence", "run", "-tunix:/s", "--", "true"],
            &["tuppence", "run", "-t=unix:/s", "--", "true"],
            &["tuppence", "run", "--target=", "--", "true"],
            &["tuppence", "run", "--user", "-x", "--", "true"],
            &["tuppence", "run", "--=x", "--", "true"],
            &["tuppence", "run", "-t"],
        ];
        for line in left {
            assert!(Cli::parse_plain_run(os(line), None).is_none(), "{line:?}");
        }
        // An empty `$TUPPENCE_TARGET` is clap's to judge, as is one that is not UTF-8.
        assert!(
            Cli::parse_plain_run(os(&["tuppence", "run", "--", "true"]), Some("".into())).is_none()
        );
        use std::os::unix::ffi::OsStringExt;
        let not_utf8 = OsString::from_vec(vec![0xff]);
        assert!(
            Cli::parse_plain_run(os(&["tuppence", "run", "--", "true"]), Some(not_utf8)).is_none()
        );
        // The command words are passed on as they are, bytes included.
        let mut line = os(&["tuppence", "run", "--"]);
        line.push(OsString::from_vec(vec![b'e', 0xff]));
        let Some(Cli {
            command: Command::Run(run),
            ..
        }) = Cli::parse_plain_run(line, None)
        else {
            panic!("a non-UTF-8 command word was left to clap");
        };
        assert_eq!(run.command, [OsString::from_vec(vec![b'e', 0xff])]);
    }

    /// Every command line parses, and every help and usage text reads, the same with the
    /// deferred parser as with the derived `Cli::command()`.
    #[test]
    fn the_deferred_parser_is_the_derived_one() {
        use clap::CommandFactory;
        fn texts(cmd: &mut clap::Command, path: &str, out: &mut Vec<(String, String)>) {
            cmd.build();
            out.push((format!("{path} help"), cmd.render_long_help().to_string()));
            out.push((format!("{path} short help"), cmd.render_help().to_string()));
            out.push((format!("{path} usage"), cmd.render_usage().to_string()));
            out.push((format!("{path} version"), cmd.render_long_version()));
            for sub in cmd.get_subcommands_mut() {
                let p = format!("{path} {}", sub.get_name());
                // The `help` subcommand's own tree (for completions, which use the derived
                // command) is not expanded below a deferred one; `help` itself is compared
                // by parsing below.
                if p.starts_with("tuppence help ") {
                    continue;
                }
                texts(sub, &p, out);
            }
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        texts(&mut Cli::command(), "tuppence", &mut a);
        texts(&mut Cli::command_for_parsing(), "tuppence", &mut b);
        assert!(a.len() > 40, "{} texts", a.len());
        let names = |v: &Vec<(String, String)>| v.iter().map(|p| p.0.clone()).collect::<Vec<_>>();
        let (na, nb) = (names(&a), names(&b));
        let only_a: Vec<_> = na.iter().filter(|n| !nb.contains(n)).collect();
        let only_b: Vec<_> = nb.iter().filter(|n| !na.contains(n)).collect();
        assert!(
            only_a.is_empty() && only_b.is_empty(),
            "derived only: {only_a:?}; deferred only: {only_b:?}"
        );
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            assert_eq!(x, y, "{name}");
        }
        for line in [
            &[
                "tuppence", "-v", "run", "-t", "unix:/s", "-u", "me", "--", "true",
            ][..],
            &["tuppence", "run", "--no-such-option"],
            &["tuppence", "inject", "a", "b", "-q"],
            &["tuppence", "sniff", "request", "--help"],
            &["tuppence", "help", "sniff", "request", "nat"],
            &["tuppence", "help", "run"],
            &["tuppence", "run", "-h"],
            &["tuppence", "--version"],
            &["tuppence"],
        ] {
            let x = Cli::command().try_get_matches_from(line);
            let y = Cli::command_for_parsing().try_get_matches_from(line);
            match (x, y) {
                (Ok(x), Ok(y)) => {
                    use clap::FromArgMatches;
                    let (x, y) = (Cli::from_arg_matches(&x), Cli::from_arg_matches(&y));
                    assert_eq!(format!("{x:?}"), format!("{y:?}"), "{line:?}");
                }
                (Err(x), Err(y)) => assert_eq!(x.to_string(), y.to_string(), "{line:?}"),
                (x, y) => panic!("{line:?}: {x:?} / {y:?}"),
            }
        }
    }
}
