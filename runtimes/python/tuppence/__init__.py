"""tuppence: drive a system under test over a byte link, from Python.

Run commands with their output as bytes, start them in the background and stream their
output, chat with interactive commands, copy files in and out, watch the agent's event
sources -- over a virtio-serial port, a serial line, vsock, a unix socket, TCP, or an
agent embedded in this process (``local``, the default: nothing to set up)::

    import tuppence

    with tuppence.connect("local") as sut:          # or "virtio:/run/vm1.sock", "legacy+tcp:10.0.0.5:64123"
        r = sut.run("uname -a", check=True)
        print(r.stdout.decode())
        sut.inject(b"hello\\n", "/tmp/greeting")
        assert sut.extract("/tmp/greeting") == b"hello\\n"

The protocol is the Rust client's (``tuppence-blocking``); this package does not
re-implement it. Every wait releases the GIL (other threads keep running, several
threads may use one session at once) and is interruptible with Ctrl-C, which also stops
the remote side: a command gets SIGINT (then SIGKILL if it has not ended half a second
later, as :func:`subprocess.run` does to its child), a transfer is aborted (the agent
removes a half-written file).

Errors are the classes of :mod:`tuppence._errors` (all under :class:`Error`, re-exported
here). The API of the Python 2 ``twopence`` module is :mod:`tuppence.twopence`.
"""

from __future__ import annotations

import os
import re
import shlex
import threading
import time
from dataclasses import dataclass, field
from typing import (
    IO,
    Any,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from . import _errors, _native
from ._errors import (
    Aborted,
    BufferFull,
    CalledProcessError,
    CommandFailed,
    ConnectError,
    EndOfOutput,
    Error,
    ExpectTimeout,
    LinkError,
    LocalError,
    PatternError,
    RemoteError,
    TimeoutExpired,
    TransferTimeout,
    TransportError,
    UsageError,
)

__all__ = [
    "connect",
    "Session",
    "CompletedProcess",
    "Process",
    "Chat",
    "ExpectMatch",
    "Monitor",
    "PROCINFO_FIELDS",
] + _errors.__all__

Command = Union[str, bytes, Sequence[str]]
"""A command line for ``/bin/sh -c`` on the system under test; a list is joined with
shell quoting."""

StdinSource = Union[None, bytes, bytearray, memoryview, str, "os.PathLike[str]", IO[bytes]]

#: Procinfo field names, in the order of their wire types (1..11).
PROCINFO_FIELDS: Tuple[str, ...] = (
    "pid",
    "pgid",
    "state",
    "uid",
    "gid",
    "rss_kib",
    "utime_ms",
    "stime_ms",
    "elapsed_ms",
    "threads",
    "comm",
)

#: How long a command interrupted by Ctrl-C gets to end after SIGINT before SIGKILL.
INTERRUPT_GRACE = 0.5

_CHUNK = 64 * 1024


def _cmdline(cmd: Command) -> bytes:
    if isinstance(cmd, bytes):
        return cmd
    if isinstance(cmd, str):
        return cmd.encode()
    return " ".join(shlex.quote(str(a)) for a in cmd).encode()


def _b(value: Union[str, bytes]) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _env(env: Optional[Mapping[str, str]]) -> List[Tuple[bytes, bytes]]:
    if not env:
        return []
    return [(_b(k), _b(v)) for k, v in env.items()]


def connect(
    target: str = "local", *, timeout: float = 10.0, keepalive: Optional[int] = None
) -> "Session":
    """Connects to ``target`` and returns a :class:`Session` (a context manager).

    ``target`` is any tuppence target: ``local`` (an agent embedded in this process,
    running commands as you), ``virtio:/host/socket``, ``serial:/dev/ttyS1[@115200]``,
    ``vsock:CID:PORT``, ``unix:/path``, ``tcp:HOST:PORT``; prefix ``legacy+`` to speak
    protocol 3.0 to a C twopence agent. ``timeout`` bounds the wait for the agent's hello;
    ``keepalive`` (seconds, 0 = off) is what this client asks for.
    """
    return Session(target, timeout=timeout, keepalive=keepalive)


@dataclass
class CompletedProcess:
    """What :meth:`Session.run` returns, as :class:`subprocess.CompletedProcess`.

    ``returncode`` is the exit status, or ``-N`` when signal N killed the command
    (``signal`` is then N).
    """

    args: Command
    returncode: int
    stdout: bytes = b""
    stderr: bytes = b""
    signal: Optional[int] = None

    def check_returncode(self) -> None:
        """Raises :class:`CalledProcessError` unless ``returncode`` is 0."""
        if self.returncode != 0:
            raise CalledProcessError(self.returncode, self.args, self.stdout, self.stderr)


def _returncode(kind: str, value: int, text: str, args: Command, timeout, out: bytes, err: bytes) -> CompletedProcess:
    """The result of a finished command, or the exception its end means."""
    if kind == "exit":
        return CompletedProcess(args, value, out, err)
    if kind == "signal":
        return CompletedProcess(args, -value, out, err, signal=value)
    if kind == "timeout":
        raise TimeoutExpired(args, timeout, out, err)
    if kind == "failed":
        raise CommandFailed(value, text, "run")
    raise LinkError(f"the connection failed before the command ended: {text}")


class Session:
    """A connection to an agent; see :func:`connect`. Usable from several threads at
    once. Closing it (or leaving its ``with`` block) closes the link once the last of its
    processes, chats and monitors is gone; on ``local`` the embedded agent then kills
    what is still running."""

    def __init__(
        self, target: str = "local", *, timeout: float = 10.0, keepalive: Optional[int] = None
    ):
        self._conn = _native.connect(target, timeout, keepalive)

    # -- what it is --------------------------------------------------------------------

    @property
    def target(self) -> str:
        return self._conn.target

    @property
    def dialect(self) -> str:
        """``"4.0"``, or ``"3.0"`` with ``legacy+``."""
        return self._conn.dialect

    @property
    def local(self) -> bool:
        """True for the embedded ``local`` agent."""
        return self._conn.local

    @property
    def default_user(self) -> str:
        """Who commands run as when ``user`` is not given: ``root``; on ``local``,
        whoever runs Python (the embedded agent has your credentials)."""
        return self._conn.default_user

    @property
    def closed(self) -> bool:
        return self._conn.closed

    def info(self) -> Dict[str, Any]:
        """The agent's hello: ``cid``, ``server_version``, ``keepalive``, ``latency``."""
        cid, version, keepalive, latency = self._conn.info()
        return {"cid": cid, "server_version": version, "keepalive": keepalive, "latency": latency}

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<tuppence.Session {self.target} ({self.dialect})>"

    def _user(self, user: Optional[str]) -> bytes:
        return _b(user if user is not None else self._conn.default_user)

    # -- commands ----------------------------------------------------------------------

    def start(
        self,
        cmd: Command,
        *,
        user: Optional[str] = None,
        timeout: Optional[float] = None,
        env: Optional[Mapping[str, str]] = None,
        tty: bool = False,
    ) -> "Process":
        """Starts ``cmd`` in the background and returns its :class:`Process` (stdin open,
        output streamed). ``timeout``: seconds after which the agent kills it (None: the
        agent's default, 60 s on tuppence's agent)."""
        return self._start(cmd, user, timeout, env, tty, stdin_open=True)

    def _start(
        self,
        cmd: Command,
        user: Optional[str],
        timeout: Optional[float],
        env: Optional[Mapping[str, str]],
        tty: bool,
        stdin_open: bool,
    ) -> "Process":
        native = self._conn.start(_cmdline(cmd), self._user(user), timeout, _env(env), tty, stdin_open)
        return Process(native, cmd, timeout)

    def run(
        self,
        cmd: Command,
        *,
        user: Optional[str] = None,
        timeout: Optional[float] = None,
        env: Optional[Mapping[str, str]] = None,
        stdin: StdinSource = None,
        tty: bool = False,
        check: bool = False,
    ) -> CompletedProcess:
        """Runs ``cmd`` to its end and returns a :class:`CompletedProcess` with its
        ``stdout`` and ``stderr`` as bytes (on a tty both arrive as ``stdout``).

        ``stdin``: None (the command reads end of file at once), bytes, a str (sent as
        UTF-8), a binary file object, or a :class:`os.PathLike` local file.
        ``timeout``: the agent kills the command after that many seconds and this raises
        :class:`TimeoutExpired` with the output so far. ``check``: raise
        :class:`CalledProcessError` unless it exits with 0. A command the agent cannot
        start (unknown user) raises :class:`CommandFailed`.
        """
        # Without stdin the request carries its end: one write, not two.
        proc = self._start(cmd, user, timeout, env, tty, stdin_open=stdin is not None)
        with proc:
            if stdin is not None:
                proc._feed(stdin)
            result = proc.wait()
        if check:
            result.check_returncode()
        return result

    def chat(
        self,
        cmd: Command,
        *,
        user: Optional[str] = None,
        timeout: Optional[float] = None,
        env: Optional[Mapping[str, str]] = None,
        limit: Optional[int] = None,
    ) -> "Chat":
        """Starts ``cmd`` on a tty and returns a :class:`Chat` to drive it. ``limit``:
        the most unconsumed output kept (1 MiB by default; see :class:`BufferFull`)."""
        native = self._conn.chat(_cmdline(cmd), self._user(user), timeout, _env(env), limit)
        return Chat(native, cmd)

    # -- files -------------------------------------------------------------------------

    def inject(
        self,
        src: Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", IO[bytes]],
        dest: str,
        *,
        user: Optional[str] = None,
        mode: int = 0o644,
        timeout: Optional[float] = None,
    ) -> int:
        """Copies ``src`` -- bytes, a local path (str or path-like), or a binary file
        object -- to ``dest`` on the system under test, created as ``user`` with exactly
        ``mode`` and renamed into place only when complete. Returns the bytes sent.
        ``timeout``: abort (and raise :class:`TransferTimeout`) after that many seconds."""
        if isinstance(src, str):
            src = _Path(os.fsencode(src))
        elif isinstance(src, memoryview):
            src = bytes(src)
        return self._conn.inject(self._user(user).decode(), dest, mode, src, timeout)

    def extract(
        self,
        src: str,
        dest: Union[None, str, "os.PathLike[str]", IO[bytes]] = None,
        *,
        user: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Union[bytes, int]:
        """Copies ``src`` from the system under test (read as ``user``). Without
        ``dest`` it returns the content as bytes; with a local path it writes it as
        ``cp`` would (a temporary renamed into place when complete; FIFOs and devices in
        place) and returns the number of bytes; a binary file object is written to."""
        if isinstance(dest, str):
            dest = _Path(os.fsencode(dest))
        return self._conn.extract(self._user(user).decode(), src, dest, timeout)

    # -- event sources -----------------------------------------------------------------

    def monitor(self, source: str) -> "Monitor":
        """Subscribes to an event source of the agent: ``agent`` (its audit trail),
        ``kmsg``, ``file:PATH`` (lines appended to a file). Protocol 4.0 only."""
        return Monitor(self._conn.monitor(_b(source)))

    def quit(self) -> None:
        """Asks the agent to exit (if it allows it)."""
        self._conn.quit()


class _Path(os.PathLike):
    """A local path given as a str: never taken for data."""

    def __init__(self, path: bytes):
        self._path = path

    def __fspath__(self) -> str:
        return os.fsdecode(self._path)


class Process:
    """A command running in the background (:meth:`Session.start`), like
    :class:`subprocess.Popen`: write its stdin, read its output as it comes, signal it,
    wait for it. Iterating yields ``(stream, data)`` pairs, ``stream`` being
    ``"stdout"`` or ``"stderr"``, until it ends. Leaving its ``with`` block kills it if
    it still runs."""

    def __init__(self, native: "_native.Process", args: Command, timeout: Optional[float]):
        self._native = native
        self.args = args
        self._timeout = timeout
        self._out = bytearray()
        self._err = bytearray()
        self._end: Optional[Tuple[str, int, str]] = None
        self._feeder: Optional[threading.Thread] = None
        self._feed_error: Optional[BaseException] = None

    @property
    def xid(self) -> int:
        """The transaction id on the wire."""
        return self._native.xid

    @property
    def returncode(self) -> Optional[int]:
        """None while the command runs (as far as has been read), else as
        :attr:`CompletedProcess.returncode`."""
        if self._end is None:
            return None
        kind, value, _ = self._end
        return value if kind == "exit" else -value if kind == "signal" else None

    # -- stdin -------------------------------------------------------------------------

    def write(self, data: Union[bytes, str]) -> None:
        """Sends data to the command's stdin (waits while the link is congested: read
        the output from another thread if the command produces much, or use
        :meth:`communicate`)."""
        self._native.write(_b(data))

    def close_stdin(self) -> None:
        self._native.close_stdin()

    def _feed(self, stdin: StdinSource) -> None:
        """Feeds ``stdin`` from a thread (so the output is read meanwhile), then closes
        it."""
        if stdin is None:
            self.close_stdin()
            return
        if isinstance(stdin, str):
            stdin = stdin.encode()
        if isinstance(stdin, (bytes, bytearray, memoryview)):
            data = bytes(stdin)
            if len(data) <= _CHUNK:
                if data:
                    self.write(data)
                self.close_stdin()
                return
            source: Any = data
        elif isinstance(stdin, os.PathLike):
            source = stdin
        elif hasattr(stdin, "read"):
            source = stdin
        else:
            raise TypeError(f"stdin must be bytes, str, a path or a binary file, not {type(stdin).__name__}")

        def feed() -> None:
            try:
                if isinstance(source, bytes):
                    view = memoryview(source)
                    for i in range(0, len(view), _CHUNK):
                        self._native.write(bytes(view[i : i + _CHUNK]))
                else:
                    f = open(source, "rb") if isinstance(source, os.PathLike) else source
                    try:
                        while True:
                            chunk = f.read(_CHUNK)
                            if not chunk:
                                break
                            self._native.write(_b(chunk))
                    finally:
                        if f is not source:
                            f.close()
                self._native.close_stdin()
            except BaseException as e:  # reported by wait()
                self._feed_error = e

        self._feeder = threading.Thread(target=feed, name="tuppence-stdin", daemon=True)
        self._feeder.start()

    # -- output ------------------------------------------------------------------------

    def _next(self, timeout: Optional[float]) -> Optional[Tuple[str, bytes]]:
        """The next output event, or None on timeout or at the end (recorded)."""
        if self._end is not None:
            return None
        ev = self._native.next_event(timeout)
        if ev is None:
            return None
        if ev[0] == "end":
            self._end = (ev[1], ev[2], ev[3])
            return None
        return ev

    def __iter__(self) -> Iterator[Tuple[str, bytes]]:
        return self.events()

    def events(self, timeout: Optional[float] = None) -> Iterator[Tuple[str, bytes]]:
        """Yields ``(stream, data)`` as the command prints, until it ends (or, with
        ``timeout``, until nothing came for that long)."""
        try:
            while self._end is None:
                ev = self._next(timeout)
                if ev is None:
                    return
                yield ev
        except KeyboardInterrupt:
            self._cancel()
            raise

    def poll(self) -> Optional[int]:
        """The return code if the command has ended, else None (output read meanwhile is
        kept for :meth:`wait`)."""
        while self._end is None:
            ev = self._next(0)
            if ev is None:
                break
            (self._out if ev[0] == "stdout" else self._err).extend(ev[1])
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> CompletedProcess:
        """Waits for the end and returns the output not read through iteration. Raises
        :class:`TimeoutExpired` if ``timeout`` seconds pass first (the command keeps
        running) or the agent killed it at its own timeout; Ctrl-C interrupts the
        command."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while self._end is None:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                ev = self._next(left)
                if ev is None:
                    if self._end is None:
                        raise TimeoutExpired(self.args, timeout, bytes(self._out), bytes(self._err))
                    break
                (self._out if ev[0] == "stdout" else self._err).extend(ev[1])
        except KeyboardInterrupt:
            self._cancel()
            raise
        if self._feeder is not None:
            self._feeder.join(timeout=5)
            if self._feed_error is not None and not isinstance(self._feed_error, (LinkError, UsageError)):
                raise self._feed_error
        kind, value, text = self._end
        return _returncode(kind, value, text, self.args, self._timeout, bytes(self._out), bytes(self._err))

    def communicate(self, input: StdinSource = None, timeout: Optional[float] = None) -> Tuple[bytes, bytes]:
        """Sends ``input`` (then end of file), waits for the end, returns
        ``(stdout, stderr)``."""
        self._feed(input)
        r = self.wait(timeout)
        return r.stdout, r.stderr

    # -- control -----------------------------------------------------------------------

    def interrupt(self, signal: str = "INT") -> None:
        """Sends a signal (``"INT"``, ``"TERM"``, ``"KILL"``, ...; protocol 3.0 always
        sends KILL) to the command's process group."""
        self._native.interrupt(signal)

    def terminate(self) -> None:
        self.interrupt("TERM")

    def kill(self) -> None:
        self.interrupt("KILL")

    def procinfo(self, *fields: str) -> Dict[str, Any]:
        """Process information from the agent (protocol 4.0): the named fields of
        :data:`PROCINFO_FIELDS` (all by default) that the agent supplies."""
        names = fields or PROCINFO_FIELDS
        mask = 0
        for name in names:
            try:
                mask |= 1 << (PROCINFO_FIELDS.index(name) + 1)
            except ValueError:
                raise ValueError(f"unknown procinfo field {name!r}; known: {', '.join(PROCINFO_FIELDS)}") from None
        out: Dict[str, Any] = {}
        for kind, value in self._native.procinfo(mask):
            if 1 <= kind <= len(PROCINFO_FIELDS):
                name = PROCINFO_FIELDS[kind - 1]
                if name == "state" and isinstance(value, bytes):
                    value = value.decode("ascii", "replace")
                elif name == "comm" and isinstance(value, bytes):
                    value = value.decode("utf-8", "replace")
                out[name] = value
        return out

    def _cancel(self) -> None:
        """After Ctrl-C: SIGINT, a short wait, then SIGKILL (what :func:`subprocess.run`
        does to a child it was waiting for)."""
        if self._end is not None:
            return
        try:
            self._native.interrupt("INT")
            deadline = time.monotonic() + INTERRUPT_GRACE
            while self._end is None and time.monotonic() < deadline:
                self._next(max(0.0, deadline - time.monotonic()))
            if self._end is None:
                self._native.interrupt("KILL")
        except Error:
            pass

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc) -> None:
        if self._end is None:
            try:
                self.kill()
            except Error:
                pass

    def __repr__(self) -> str:
        return f"<tuppence.Process xid={self.xid} returncode={self.returncode}>"


@dataclass
class ExpectMatch:
    """What :meth:`Chat.expect` found: ``index`` of the pattern, the ``pattern`` itself,
    ``consumed`` (all output up to and including the match), ``match`` (the matched
    text) and ``before`` (the output before it)."""

    index: int
    pattern: Any
    consumed: bytes
    start: int = field(repr=False)

    @property
    def match(self) -> bytes:
        return self.consumed[self.start :]

    @property
    def before(self) -> bytes:
        return self.consumed[: self.start]


Pattern = Union[str, bytes, "re.Pattern[str]", "re.Pattern[bytes]"]


def _pattern_spec(p: Any) -> Tuple[str, bytes]:
    """A pattern as the native module takes it: str and bytes are literals, compiled
    :mod:`re` patterns are regular expressions in the Rust regex crate's syntax (no
    look-around or back-references)."""
    if isinstance(p, str):
        return ("literal", p.encode())
    if isinstance(p, (bytes, bytearray)):
        return ("literal", bytes(p))
    if isinstance(p, re.Pattern):
        src = p.pattern
        if isinstance(src, bytes):
            try:
                src = src.decode("ascii")
            except UnicodeDecodeError:
                raise PatternError("a bytes regular expression must be ASCII (use \\xNN escapes)") from None
            prefix = "(?-u)"
        else:
            prefix = ""
        flags = ""
        if p.flags & re.IGNORECASE:
            flags += "i"
        if p.flags & re.MULTILINE:
            flags += "m"
        if p.flags & re.DOTALL:
            flags += "s"
        if p.flags & re.VERBOSE:
            flags += "x"
        if flags:
            prefix += f"(?{flags})"
        return ("regex", (prefix + src).encode())
    raise TypeError(f"a pattern is a str, bytes or re.Pattern, not {type(p).__name__}")


class Chat:
    """An interactive command on a tty (:meth:`Session.chat`): :meth:`expect` a prompt,
    :meth:`send_line` an answer, and so on, then :meth:`wait` for its end.

    Which match wins when several patterns could match: the one that completes first in
    the output; among those completing at the same byte, the one starting earliest (the
    longest); then the lowest index. A regex match is final as soon as it is complete,
    so a trailing ``+`` or ``*`` matches as little as it can (as in pexpect). The tty
    echoes what is sent, and ends lines with ``\\r\\n``."""

    #: Default seconds an :meth:`expect` or :meth:`read_line` waits.
    timeout: Optional[float] = 30.0

    def __init__(self, native: "_native.Chat", args: Command):
        self._native = native
        self.args = args
        self.result: Optional[CompletedProcess] = None

    @property
    def xid(self) -> int:
        return self._native.xid

    def expect(self, *patterns: Union[Pattern, Sequence[Pattern]], timeout: Optional[float] = -1.0) -> ExpectMatch:
        """Waits for one of ``patterns`` (str or bytes: literal text; :func:`re.compile`
        patterns: regular expressions) and consumes the output through the match.

        ``timeout`` seconds (default :attr:`timeout`; None: no deadline). Raises
        :class:`ExpectTimeout` at the deadline, :class:`EndOfOutput` if the command ends
        first, :class:`BufferFull` if the buffer filled without a match; the output stays
        buffered in each case."""
        flat: List[Any] = []
        for p in patterns:
            if isinstance(p, (list, tuple)):
                flat.extend(p)
            else:
                flat.append(p)
        if timeout is not None and timeout < 0:
            timeout = self.timeout
        index, consumed, start = self._native.expect([_pattern_spec(p) for p in flat], timeout)
        return ExpectMatch(index, flat[index], consumed, start)

    def send(self, data: Union[str, bytes]) -> None:
        """Sends ``data`` (str as UTF-8), no newline added."""
        self._native.send(_b(data))

    def send_line(self, line: Union[str, bytes] = b"") -> None:
        """Sends ``line`` and a newline (what Enter sends)."""
        self._native.send(_b(line) + b"\n")

    def read_line(self, timeout: Optional[float] = -1.0) -> Optional[bytes]:
        """The next line without its ``\\r\\n``; a last partial line when the output
        ends, then None."""
        if timeout is not None and timeout < 0:
            timeout = self.timeout
        return self._native.read_line(timeout)

    def wait(self, timeout: Optional[float] = None) -> CompletedProcess:
        """Waits for the command's end; ``stdout`` of the result is the output nobody
        consumed."""
        if self.result is None:
            kind, value, text, rest = self._native.wait(timeout)
            self.result = _returncode(kind, value, text, self.args, None, rest, b"")
        return self.result

    def close_stdin(self) -> None:
        """Sends the end of input (the tty's EOF character)."""
        self._native.close_stdin()

    def interrupt(self, signal: str = "INT") -> None:
        self._native.interrupt(signal)

    @property
    def buffered(self) -> bytes:
        """The output received and not consumed yet."""
        return self._native.buffered()

    def take_buffered(self) -> bytes:
        """Takes (consumes) the output received so far."""
        return self._native.take_buffered()

    def __enter__(self) -> "Chat":
        return self

    def __exit__(self, *exc) -> None:
        if self.result is None and self._native.outcome() is None:
            try:
                self._native.interrupt("KILL")
            except Error:
                pass


class Monitor:
    """A subscription to an event source (:meth:`Session.monitor`). Iterating yields
    each event's bytes until the subscription ends; leaving the ``with`` block ends it."""

    def __init__(self, native: "_native.Monitor"):
        self._native = native
        self._seq = 0
        self._ended = False

    def next(self, timeout: Optional[float] = None) -> Optional[bytes]:
        """The next event's data; None on timeout or after the end."""
        while not self._ended:
            ev = self._native.next_event(timeout)
            if ev is None:
                return None
            if ev[0] == "data":
                return ev[1]
            if ev[0] == "end":
                self._ended = True
        return None

    def __iter__(self) -> Iterator[bytes]:
        while True:
            data = self.next()
            if data is None:
                return
            yield data

    def settle(self, timeout: float = 10.0) -> List[bytes]:
        """Asks the source to deliver what it has pending and returns the events that
        came before it confirmed (so an event caused before the call is in the list)."""
        self._seq += 1
        seq = self._seq
        self._native.settle(seq)
        deadline = time.monotonic() + timeout
        events: List[bytes] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the event source did not settle within {timeout} s")
            ev = self._native.next_event(left)
            if ev is None:
                continue
            if ev[0] == "data":
                events.append(ev[1])
            elif ev[0] == "settled" and ev[1] == seq:
                return events
            elif ev[0] == "end":
                self._ended = True
                return events

    def close(self) -> None:
        """Ends the subscription."""
        if not self._ended:
            try:
                self._native.end()
                while self.next(5.0) is not None:
                    pass
            except Error:
                pass
            self._ended = True

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
