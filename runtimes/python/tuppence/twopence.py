"""The API of the Python 2 ``twopence`` module, on Python 3, over tuppence.

An existing twopence test script runs with one changed line::

    import tuppence.twopence as twopence

Same classes (``Target``, ``Command``, ``Transfer``, ``Status``, ``Chat``, ``Timer``),
methods, attributes, keywords and error constants, with the same semantics -- except
where the old module had a bug, which is fixed here. The differences:

* **Targets.** ``virtio:PATH``, ``serial:DEV`` and ``tcp:HOST[:PORT]`` (port 64123 by
  default) speak protocol 3.0 as the C library did, so they work with the C twopence
  agent and with ``tuppence serve`` alike; ``local`` is an agent embedded in this
  process; any other tuppence target (``unix:``, ``vsock:``, ``legacy+...``) is used as
  it is. ``ssh:HOST[:PORT]`` and ``chroot:DIR`` are tuppence's targets of the same
  names: unlike the old ssh plugin, which ran commands through sshd itself, ``ssh:``
  starts ``tuppence serve --stdio`` on HOST over the system's OpenSSH, so HOST needs the
  ``tuppence`` binary; ``chroot:`` runs ``tuppence serve --stdio --root-directory DIR``
  (as root, with ``tuppence`` on ``PATH`` or named by ``?agent=PATH``). ``Target.type``
  of ``local`` is ``"local"`` (was ``"chroot"``). A key of ``attrs`` no longer hides a method of the same name.
* **Output.** Captured output is never truncated (was 64 KiB, silently); output is
  appended to the buffers also when a local error is raised; ``waitAll()`` appends every
  reaped command's output (was only the first one's). The display goes to
  ``sys.stdout``/``sys.stderr`` (was the C-level fds 1 and 2, which a redirected
  ``sys.stdout`` missed); so do ``waitAll``'s dots.
* **stdin.** A command given no ``stdin`` (or ``stdin=None``) reads end of file at once;
  the old module left stdin open on pipe targets, so a command reading it hung until its
  timeout, and dup'ed the interpreter's stdin for foreground commands. Pass
  ``stdin=sys.stdin.buffer`` to forward it. Any binary file object works (was Python 2
  ``file`` only).
* **Command and Transfer attributes.** ``stdin`` is readable and settable; the
  ``stdout``/``stderr`` setters accept file objects; ``user`` and ``localfile`` can be
  reset to None; ``useTty`` is also a constructor keyword. Passing a ``Command`` together
  with keyword arguments to ``run()``/``chat()`` applies the keywords to it (they were
  silently ignored). ``Command.environ`` keeps every ``setenv`` (duplicates included);
  the last value of a name is the one sent.
* **Environment.** ``Target.setenv`` replaces an earlier value (the first one used to
  win); a command's own variables still win over the target's.
* **Status.** ``code`` for a local error is ``512 + error`` as the man page says (was the
  negative error code); ``Status(signal=...)`` works (it crashed the interpreter).
* **Files.** ``inject()`` creates the remote file with ``mode`` (was always 0660);
  ``extract()`` takes the remote path first and the local path second when called
  positionally, as before, but the keywords ``local=``/``remote=`` now mean what they
  say. ``recvfile`` to a new local file with the default ``permissions=0`` creates it
  with 0666 & ~umask as ``cp`` does (was mode 0000). ``recvfile`` without ``data``
  returns a new buffer each call (the old one accumulated across calls on one
  ``Transfer``). ``Transfer.timeout`` is honoured (an overdue transfer is aborted with
  ``COMMAND_TIMEOUT_ERROR``). A local file that cannot be opened raises ``SystemError``
  with a message and ``LOCAL_FILE_ERROR`` (was a message-less ``SystemError``).
* **Chat.** The ``timeout`` of ``expect()``/``recvline()`` is enforced (it was ignored on
  every pipe target); ``expect()`` still returns ``True`` or ``None``, and the new
  attributes ``chat.eof`` and ``chat.timedOut`` tell the two failures apart. The
  16-pattern and 511-byte-line limits are gone; the receive buffer is compacted (the old
  one capped a chat's whole output at 64 KiB). A second ``Chat.wait()`` returns the same
  Status (was a ``TypeError``).
* **Background commands.** A failure while ``waitAll()`` reaps a command drops its
  record (it used to stay pending forever, its ``pid`` stuck). ``cancel_transactions()``
  and ``disconnect()`` also kill the remote commands (they used to keep running).
* **Timer.** Deleting a Timer cancels it, as the man page says; ``remaining`` of a paused
  timer is the time it will have when unpaused (was 0.0); ``Timer(0)`` raises
  ``ValueError`` (was a message-less ``SystemError``); an exception raised by a callback
  propagates from the twopence call that ran it (it used to surface at some later,
  unrelated call).
* **Errors.** Failures raise :class:`TwopenceError`, a subclass of ``SystemError`` (so
  ``except SystemError`` still works) carrying ``localError``, with the same message
  prefixes (``"command execution failed: ..."``). ``disconnect()`` and
  ``cancel_transactions()`` still return None.
* ``setDebugLevel(n)`` logs this module's activity through :mod:`logging` (logger
  ``tuppence.twopence``) on stderr instead of the C library's trace.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import weakref
from typing import Any, Dict, List, Optional, Tuple, Union

import tuppence as _tp
from tuppence import _native

__all__ = [
    "Target",
    "Command",
    "Transfer",
    "Status",
    "Chat",
    "Timer",
    "TwopenceError",
    "setDebugLevel",
]

PARAMETER_ERROR = 1
OPEN_SESSION_ERROR = 2
SEND_COMMAND_ERROR = 3
FORWARD_INPUT_ERROR = 4
RECEIVE_RESULTS_ERROR = 5
COMMAND_TIMEOUT_ERROR = 6
LOCAL_FILE_ERROR = 7
SEND_FILE_ERROR = 8
REMOTE_FILE_ERROR = 9
RECEIVE_FILE_ERROR = 10
INTERRUPT_COMMAND_ERROR = 11
INVALID_TARGET_ERROR = 12
UNKNOWN_PLUGIN_ERROR = 13
INCOMPATIBLE_PLUGIN_ERROR = 14
UNSUPPORTED_FUNCTION_ERROR = 15
PROTOCOL_ERROR = 16
INTERNAL_ERROR = 17
TRANSPORT_ERROR = 18
INCOMPATIBLE_PROTOCOL_ERROR = 19
INVALID_TRANSACTION = 20
COMMAND_CANCELED_ERROR = 21

_ERROR_TEXT = {
    PARAMETER_ERROR: "Invalid command parameter",
    OPEN_SESSION_ERROR: "Error opening the communication with the system under test",
    SEND_COMMAND_ERROR: "Error sending command to the system under test",
    FORWARD_INPUT_ERROR: "Error forwarding keyboard input",
    RECEIVE_RESULTS_ERROR: "Error receiving the results of action",
    COMMAND_TIMEOUT_ERROR: "Remote command took too long to execute",
    LOCAL_FILE_ERROR: "Local error while transferring file",
    SEND_FILE_ERROR: "Error sending file to the system under test",
    REMOTE_FILE_ERROR: "Remote error while transferring file",
    RECEIVE_FILE_ERROR: "Error receiving file from the system under test",
    INTERRUPT_COMMAND_ERROR: "Failed to interrupt command",
    INVALID_TARGET_ERROR: "Invalid target specification",
    UNKNOWN_PLUGIN_ERROR: "Unknown plugin",
    INCOMPATIBLE_PLUGIN_ERROR: "Incompatible plugin",
    UNSUPPORTED_FUNCTION_ERROR: "Operation not supported by the plugin",
    PROTOCOL_ERROR: "Protocol error",
    INTERNAL_ERROR: "Internal error",
    TRANSPORT_ERROR: "Error sending command to the transport",
    INCOMPATIBLE_PROTOCOL_ERROR: "Incompatible protocol",
    INVALID_TRANSACTION: "Invalid transaction",
    COMMAND_CANCELED_ERROR: "Command canceled by user",
}

_SIGNAMES = {
    1: "HUP", 2: "INT", 3: "QUIT", 4: "ILL", 6: "ABRT", 7: "BUS", 8: "FPE", 9: "KILL",
    10: "USR1", 11: "SEGV", 12: "USR2", 13: "PIPE", 14: "ALRM", 15: "TERM", 17: "CHLD",
}

_log = logging.getLogger("tuppence.twopence")
_debug_level = 0
#: How often a blocking call looks at timers while it waits (seconds).
_TICK = 0.05


class TwopenceError(SystemError):
    """A twopence failure: ``SystemError("<context>: <text>")`` as the old module raised,
    with the twopence error code as ``localError``."""

    def __init__(self, message: str, localError: int = 0):
        SystemError.__init__(self, message)
        self.localError = localError


def _fail(context: str, code: int, detail: Optional[str] = None) -> TwopenceError:
    text = _ERROR_TEXT.get(code, "error")
    if detail:
        text = f"{text} ({detail})"
    return TwopenceError(f"{context}: {text}", code)


def setDebugLevel(level: int) -> None:
    """0 = off, 1 = debug, 2 = more: this module's activity on stderr (logging)."""
    global _debug_level
    if not isinstance(level, int) or isinstance(level, bool):
        raise TypeError("setDebugLevel() takes an int")
    _debug_level = level
    if level > 0:
        if not _log.handlers:
            h = logging.StreamHandler(sys.stderr)
            h.setFormatter(logging.Formatter("twopence: %(message)s"))
            _log.addHandler(h)
        _log.setLevel(logging.DEBUG)
    else:
        _log.setLevel(logging.WARNING)


# --- Timer ------------------------------------------------------------------------------

_timers: List["weakref.ref[Timer]"] = []
_timer_ids = 0


class Timer:
    """``Timer(timeout, callback=None)``: a global timer, active at once; its callback
    runs (with no arguments) inside the next blocking twopence call after it expires."""

    __slots__ = ("_id", "_state", "_expires", "_left", "_callback", "__weakref__")

    def __init__(self, timeout: float, callback=None):
        global _timer_ids
        timeout = float(timeout)
        if not timeout > 0:
            raise ValueError("Timer timeout must be > 0")
        _timer_ids += 1
        self._id = _timer_ids
        self._state = "active"
        self._expires = time.monotonic() + round(timeout * 1000) / 1000
        self._left = 0.0
        self._callback = callback
        _timers.append(weakref.ref(self))

    @property
    def id(self) -> int:
        return self._id

    @property
    def state(self) -> str:
        return self._state

    @property
    def remaining(self) -> float:
        if self._state == "active":
            return round(max(0.0, self._expires - time.monotonic()), 3)
        if self._state == "paused":
            return round(self._left, 3)
        return 0.0

    @property
    def callback(self):
        return self._callback

    @callback.setter
    def callback(self, value) -> None:
        if self._state not in ("active", "paused"):
            raise AttributeError(f"Cannot set attribute: callback in {self._state} timer")
        self._callback = value

    def pause(self) -> None:
        if self._state == "active":
            self._left = max(0.0, self._expires - time.monotonic())
            self._state = "paused"

    def unpause(self) -> None:
        if self._state == "paused":
            self._expires = time.monotonic() + self._left
            self._state = "active"

    def cancel(self) -> None:
        if self._state in ("active", "paused"):
            self._state = "cancelled"

    def __del__(self) -> None:
        # Deleting a timer cancels it (the man page's promise).
        try:
            self.cancel()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<twopence.Timer id={self._id} state={self._state} remaining={self.remaining}>"


def _live_timers() -> List[Timer]:
    alive = []
    for ref in list(_timers):
        t = ref()
        if t is None or t._state in ("cancelled", "expired"):
            _timers.remove(ref)
        else:
            alive.append(t)
    return alive


def _timer_wait(limit: Optional[float]) -> Optional[float]:
    """How long a blocking call may wait before looking at timers again."""
    wait = limit
    for t in _live_timers():
        if t._state == "active":
            left = max(0.0, t._expires - time.monotonic())
            wait = left if wait is None else min(wait, left)
    return wait


def _run_timers() -> None:
    """Expires due timers and runs their callbacks; a callback's exception propagates."""
    now = time.monotonic()
    error: Optional[BaseException] = None
    for t in _live_timers():
        if t._state == "active" and t._expires <= now:
            t._state = "expired"
            cb = t._callback
            if cb is not None:
                try:
                    cb()
                except Exception as e:  # raised after every due timer ran
                    if error is None:
                        error = e
    if error is not None:
        raise error


# --- Status -----------------------------------------------------------------------------


class Status:
    """How a command or transfer ended. True iff it exited with 0, without a signal and
    without a local error."""

    __slots__ = ("_status", "_signal", "_error", "_stdout", "_stderr", "_command", "_buffer", "_detail")

    def __init__(self, status: int = 0, stdout=None, stderr=None, error: int = 0, signal=None):
        self._status = int(status)
        if isinstance(signal, str):
            names = {v: k for k, v in _SIGNAMES.items()}
            name = signal[3:] if signal.startswith("SIG") else signal
            signal = names.get(name, 0) or (int(name) if name.isdigit() else 0)
        self._signal = int(signal) if signal else 0
        self._error = abs(int(error))
        self._stdout = stdout
        self._stderr = stderr
        self._command = None
        self._buffer = None
        self._detail: Optional[str] = None

    def __bool__(self) -> bool:
        return self._status == 0 and not self._signal and not self._error

    @property
    def exitStatus(self) -> int:
        return 0 if (self._signal or self._error) else self._status

    @property
    def exitSignal(self) -> Optional[str]:
        if not self._signal:
            return None
        return _SIGNAMES.get(self._signal, f"SIG{self._signal}")

    @property
    def localError(self) -> int:
        return self._error

    @property
    def code(self) -> int:
        if self._signal:
            return 256 + self._signal
        if self._error:
            return 512 | self._error
        return self._status

    @property
    def message(self) -> str:
        if self._signal:
            return f"crashed (received signal {self.exitSignal})"
        if self._error:
            text = _ERROR_TEXT.get(self._error, "error")
            return f"local error: {text}" + (f" ({self._detail})" if self._detail else "")
        if self._status:
            return f"status {self._status}"
        return "success"

    @property
    def command(self):
        return self._command

    @property
    def stdout(self):
        return self._stdout

    @property
    def stderr(self):
        return self._stderr

    @property
    def buffer(self):
        return self._buffer

    def __repr__(self) -> str:
        return f"<twopence.Status {self.message}>"


# --- Command ----------------------------------------------------------------------------

_UNSET: Any = object()


def _truth(v) -> bool:
    return bool(v)


class Command:
    """``Command(command, user=None, timeout=0, stdin=, stdout=, stderr=,
    suppressOutput=0, quiet=0, background=0, softfail=0, useTty=0)``."""

    _SETTABLE = {"user", "timeout", "stdin", "stdout", "stderr", "quiet", "background", "softfail", "useTty"}

    def __init__(
        self,
        command: str,
        user: Optional[str] = None,
        timeout: int = 0,
        stdin=_UNSET,
        stdout=_UNSET,
        stderr=_UNSET,
        suppressOutput=0,
        quiet=_UNSET,
        background=0,
        softfail=0,
        useTty=0,
    ):
        if not isinstance(command, (str, bytes)):
            raise TypeError("command must be a str")
        if isinstance(timeout, float) or not isinstance(timeout, int):
            raise TypeError("timeout must be an int")
        d = self.__dict__
        d["_commandline"] = command if isinstance(command, str) else command.decode()
        d["_pid"] = 0
        d["_env"] = []
        d["user"] = user
        d["timeout"] = timeout if timeout else 60
        d["stdin"] = None if stdin is _UNSET else stdin
        if stdout is _UNSET:
            stdout = bytearray()
        d["stdout"] = stdout
        d["stderr"] = (stdout if stdout is not None else None) if stderr is _UNSET else stderr
        d["quiet"] = _truth(quiet) if quiet is not _UNSET else _truth(suppressOutput)
        d["background"] = _truth(background)
        d["softfail"] = _truth(softfail)
        d["useTty"] = _truth(useTty)

    def __setattr__(self, name: str, value) -> None:
        if name not in self._SETTABLE:
            raise AttributeError(f"Unknown attribute: {name}")
        if name in ("quiet", "background", "softfail", "useTty"):
            value = _truth(value)
        elif name == "timeout":
            if isinstance(value, float) or not isinstance(value, int):
                raise AttributeError("Incompatible value for attribute timeout")
        elif name == "user" and value is not None and not isinstance(value, str):
            raise AttributeError("Incompatible value for attribute user")
        elif name in ("stdout", "stderr") and not (
            value is None or isinstance(value, bytearray) or hasattr(value, "write")
        ):
            raise AttributeError(f"Incompatible value for attribute {name}")
        self.__dict__[name] = value

    @property
    def commandline(self) -> str:
        return self._commandline

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def environ(self) -> Tuple[Tuple[str, str], ...]:
        return tuple(self._env)

    def setenv(self, name: str, value: str) -> None:
        self._env.append((str(name), str(value)))

    def unsetenv(self, name: str) -> None:
        self.__dict__["_env"] = [(k, v) for k, v in self._env if k != name]

    def suppressOutput(self) -> None:
        self.__dict__["quiet"] = True

    def __repr__(self) -> str:
        return f"<twopence.Command {self._commandline!r} pid={self._pid}>"


def _sink_write(sink, data: bytes) -> None:
    if sink is None:
        return
    if isinstance(sink, bytearray):
        sink.extend(data)
        return
    try:
        sink.write(data)
    except TypeError:
        sink.write(data.decode("utf-8", "replace"))


def _display(stream, data: bytes) -> None:
    out = getattr(stream, "buffer", None)
    if out is not None:
        out.write(data)
    else:
        stream.write(data.decode("utf-8", "replace"))
    stream.flush()


# --- Transfer ---------------------------------------------------------------------------


class Transfer:
    """``Transfer(remotefile, user=None, localfile=None, permissions=0, timeout=0,
    data=None)``."""

    def __init__(self, remotefile: str, user: Optional[str] = None, localfile: Optional[str] = None,
                 permissions: int = 0, timeout: int = 0, data=None):
        self.remotefile = remotefile
        self.user = user
        self.localfile = localfile
        self.permissions = permissions
        self.timeout = timeout
        self.data = data

    def __setattr__(self, name: str, value) -> None:
        if name not in ("remotefile", "user", "localfile", "permissions", "timeout", "data"):
            raise AttributeError(f"Unknown attribute: {name}")
        if name == "remotefile" and not isinstance(value, str):
            raise AttributeError("Incompatible value for attribute remotefile")
        if name in ("user", "localfile") and value is not None and not isinstance(value, (str, os.PathLike)):
            raise AttributeError(f"Incompatible value for attribute {name}")
        if name in ("permissions", "timeout") and (isinstance(value, float) or not isinstance(value, int)):
            raise AttributeError(f"Incompatible value for attribute {name}")
        if name == "data" and value is not None and not isinstance(value, (bytearray, bytes)):
            raise AttributeError("Incompatible value for attribute data")
        object.__setattr__(self, name, value)


# --- Target -----------------------------------------------------------------------------


class _Job:
    """A command the target runs: its Command and its tuppence process (or chat)."""

    def __init__(self, cmd: Command, proc=None, chat=None):
        self.cmd = cmd
        self.proc = proc
        self.chat = chat
        self.error = 0  # a local error decided here (cancel, disconnect)
        self.end: Optional[Tuple[str, int, str]] = None


def _twopence_to_tuppence(spec: str) -> Tuple[str, str]:
    """A twopence target spec as a tuppence target and its plugin name."""
    if not isinstance(spec, str):
        raise TypeError("target must be a str")
    plugin, _, arg = spec.partition(":")
    if plugin == "local" and arg == "":
        return "local", "local"
    if plugin in ("virtio", "serial") and arg:
        return f"legacy+{plugin}:{arg}", plugin
    if plugin == "tcp" and arg:
        host_port = arg
        if host_port.startswith("["):
            if "]:" not in host_port:
                host_port += ":64123"
        elif host_port.count(":") == 0:
            host_port += ":64123"
        return f"legacy+tcp:{host_port}", "tcp"
    try:
        canonical, kind = _native.parse_target(spec)
    except _tp.Error as e:
        raise _fail("Target initialization", INVALID_TARGET_ERROR, str(e)) from None
    return canonical, kind


class Target:
    """``Target(target, attrs=None, name=None)``: a system under test. Constructing it
    does not contact the system; the link opens on first use."""

    def __init__(self, target: str, attrs=None, name: Optional[str] = None):
        self._spec, self._type = _twopence_to_tuppence(target)
        self._attrs = attrs
        self._name = name
        self._session: Optional[_tp.Session] = None
        self._disconnected = False
        self._env: Dict[str, str] = {}
        self._jobs: Dict[int, _Job] = {}

    # -- attributes --------------------------------------------------------------------

    @property
    def name(self) -> Optional[str]:
        return self._name

    @property
    def type(self) -> str:
        return self._type

    def __getattr__(self, key: str):
        attrs = self.__dict__.get("_attrs")
        if isinstance(attrs, dict) and key in attrs:
            return attrs[key]
        raise AttributeError(key)

    def property(self, name: str):
        if isinstance(self._attrs, dict):
            return self._attrs.get(name)
        return None

    def setenv(self, name: str, value: str) -> None:
        if value is None:
            raise TypeError("setenv() value must be a str")
        self._env[str(name)] = str(value)

    def unsetenv(self, name: str) -> None:
        self._env.pop(name, None)

    # -- the link ----------------------------------------------------------------------

    def _sess(self, context: str) -> _tp.Session:
        if self._disconnected:
            raise _fail(context, OPEN_SESSION_ERROR, "the target was disconnected")
        if self._session is None or self._session.closed:
            try:
                self._session = _tp.connect(self._spec)
            except _tp.Error as e:
                raise _fail(context, OPEN_SESSION_ERROR, str(e)) from None
            _log.debug("connected to %s", self._spec)
        return self._session

    def disconnect(self) -> None:
        for job in list(self._jobs.values()):
            self._kill(job, TRANSPORT_ERROR)
        if self._session is not None:
            self._session.close()
        self._disconnected = True

    def cancel_transactions(self) -> None:
        for job in list(self._jobs.values()):
            self._kill(job, COMMAND_CANCELED_ERROR)

    def _kill(self, job: _Job, code: int) -> None:
        if job.end is not None or job.error:
            return
        job.error = code
        try:
            if job.proc is not None:
                job.proc.kill()
            elif job.chat is not None:
                job.chat.interrupt("KILL")
        except _tp.Error:
            pass

    # -- commands ----------------------------------------------------------------------

    def _command(self, args, kw) -> Command:
        if len(args) == 1 and isinstance(args[0], Command):
            cmd = args[0]
            for k, v in kw.items():
                setattr(cmd, k, v)
            return cmd
        return Command(*args, **kw)

    def _environment(self, cmd: Command) -> Dict[str, str]:
        env = dict(self._env)
        for k, v in cmd._env:
            env[k] = v
        return env

    def _start(self, cmd: Command, context: str) -> _Job:
        sess = self._sess(context)
        user = cmd.user if cmd.user is not None else "root"
        timeout = cmd.timeout if cmd.timeout else 60
        stdin = cmd.stdin
        if isinstance(stdin, str):
            try:
                stdin = open(stdin, "rb")
            except OSError as e:
                raise IOError(e.errno, e.strerror, cmd.stdin) from None
        try:
            # Without stdin the request carries its end: one write, not two.
            proc = sess._start(cmd.commandline, user, timeout, self._environment(cmd), cmd.useTty, stdin is not None)
        except _tp.Error as e:
            raise _fail(context, SEND_COMMAND_ERROR, str(e)) from None
        try:
            if stdin is not None:
                proc._feed(bytes(stdin) if isinstance(stdin, bytearray) else stdin)
        except _tp.Error as e:
            raise _fail(context, FORWARD_INPUT_ERROR, str(e)) from None
        job = _Job(cmd, proc=proc)
        self._jobs[proc.xid] = job
        cmd.__dict__["_pid"] = proc.xid
        _log.debug("started %r as %s (xid %d)", cmd.commandline, user, proc.xid)
        return job

    def _pump(self, job: Optional[_Job], wait: Optional[float]) -> None:
        """Moves every running command's output to its buffers (nothing may stall the
        link), waits up to ``wait`` on ``job``, and runs due timers."""
        for other in list(self._jobs.values()):
            if other.proc is not None and other is not job:
                self._drain(other, 0)
        if job is not None and job.proc is not None and job.end is None:
            self._drain(job, _timer_wait(wait))
        elif wait:
            time.sleep(min(wait, _timer_wait(wait) or wait))
        _run_timers()

    def _drain(self, job: _Job, wait: Optional[float]) -> None:
        cmd = job.cmd
        first = True
        while job.end is None:
            try:
                ev = job.proc._native.next_event(wait if first else 0)
            except _tp.Error as e:
                job.end = ("lost", 0, str(e))
                return
            first = False
            if ev is None:
                return
            if ev[0] == "end":
                job.end = (ev[1], ev[2], ev[3])
                return
            stream, data = ev
            sink = cmd.stdout if stream == "stdout" else cmd.stderr
            if not cmd.quiet and sink is not None:
                _display(sys.stdout if stream == "stdout" else sys.stderr, data)
            _sink_write(sink, data)

    def _status(self, job: _Job, context: str) -> Status:
        """The Status of a finished job (or raises, unless softfail)."""
        cmd = job.cmd
        kind, value, text = job.end or ("lost", 0, "")
        error = job.error
        if not error:
            error = {
                "timeout": COMMAND_TIMEOUT_ERROR,
                "failed": SEND_COMMAND_ERROR,
                "lost": RECEIVE_RESULTS_ERROR,
            }.get(kind, 0)
        st = Status(
            value if kind == "exit" else 0,
            cmd.stdout,
            cmd.stderr,
            error=error,
            signal=value if (kind == "signal" and not error) else None,
        )
        st._command = cmd
        if kind == "failed":
            st._detail = text
        self._forget(job)
        if error and not cmd.softfail:
            raise _fail(context, error, text if kind in ("failed", "lost") else None)
        return st

    def _forget(self, job: _Job) -> None:
        self._jobs.pop(job.cmd._pid, None)
        job.cmd.__dict__["_pid"] = 0

    def run(self, *args, **kw):
        cmd = self._command(args, kw)
        if cmd.pid != 0:
            raise TwopenceError("Command already executing", PARAMETER_ERROR)
        if cmd.background:
            self._start(cmd, "run(background)")
            return True
        job = self._start(cmd, "command execution failed")
        try:
            while job.end is None:
                self._pump(job, _TICK * 4)
                if job.error and job.end is None:
                    self._drain(job, 2.0)
        except KeyboardInterrupt:
            job.proc._cancel()
            self._forget(job)
            raise
        return self._status(job, "command execution failed")

    def wait(self, command=None):
        if command is None:
            pid = 0
        elif isinstance(command, Command):
            if command.pid == 0:
                raise ValueError("wait(): command is not running")
            pid = command.pid
        elif isinstance(command, int) and not isinstance(command, bool):
            if command < 0:
                raise ValueError("wait(): pid must be >= 0")
            pid = command
        else:
            raise TypeError("wait() takes a Command or a pid")
        while True:
            pending = [j for j in self._jobs.values() if j.cmd.background or j.chat is not None]
            if pid:
                pending = [j for j in pending if j.cmd.pid == pid]
            if not pending:
                return None
            for j in pending:
                if j.chat is not None and j.end is None:
                    self._chat_end(j, 0)
                if j.end is not None or j.error:
                    if j.end is None and j.proc is not None:
                        self._drain(j, 2.0)
                    return self._status(j, "command execution failed")
            self._pump(pending[0] if pending[0].proc is not None else None, _TICK)

    def _chat_end(self, job: _Job, wait: float) -> None:
        try:
            outcome = job.chat._native.outcome()
            if outcome is None:
                kind, value, text, rest = job.chat._native.wait(wait)
                job.end = (kind, value, text)
                _sink_write(job.cmd.stdout, rest)
            else:
                job.end = outcome
        except _tp.ExpectTimeout:
            pass
        except _tp.Error as e:
            job.end = ("lost", 0, str(e))

    def waitAll(self, print_dots=0):
        reaped = 0
        status = 0
        signal = 0
        while True:
            st = self.wait()
            if st is None:
                break
            reaped += 1
            if print_dots:
                sys.stdout.write(".")
                sys.stdout.flush()
            if st._status and not status:
                status = st._status
            if st._signal:
                signal = st._signal
        if print_dots and reaped:
            sys.stdout.write("\n")
            sys.stdout.flush()
        if not reaped:
            return None
        return Status(status, None, None, 0, signal or None)

    def chat(self, *args, **kw) -> "Chat":
        cmd = self._command(args, kw)
        if cmd.pid != 0:
            raise TwopenceError("Command already executing", PARAMETER_ERROR)
        sess = self._sess("chat()")
        user = cmd.user if cmd.user is not None else "root"
        try:
            chat = sess.chat(cmd.commandline, user=user, timeout=cmd.timeout or 60, env=self._environment(cmd))
        except _tp.Error as e:
            raise _fail("chat()", SEND_COMMAND_ERROR, str(e)) from None
        job = _Job(cmd, chat=chat)
        self._jobs[chat.xid] = job
        cmd.__dict__["_pid"] = chat.xid
        return Chat(self, job)

    # -- files -------------------------------------------------------------------------

    def _transfer(self, args, kw) -> Transfer:
        if len(args) == 1 and isinstance(args[0], Transfer):
            xfer = args[0]
            for k, v in kw.items():
                setattr(xfer, k, v)
            return xfer
        return Transfer(*args, **kw)

    def sendfile(self, *args, **kw) -> Status:
        xfer = self._transfer(args, kw)
        if xfer.localfile is not None:
            try:
                src: Any = open(xfer.localfile, "rb")
            except OSError as e:
                raise _fail("sendfile", LOCAL_FILE_ERROR, str(e)) from None
        elif isinstance(xfer.data, (bytearray, bytes)):
            src = bytes(xfer.data)
        else:
            raise TypeError("Transfer object specifies neither localfile nor buffer")
        sess = self._sess("sendfile")
        try:
            sess.inject(src, xfer.remotefile, user=xfer.user or "root", mode=xfer.permissions or 0o644,
                        timeout=xfer.timeout or None)
        except _tp.TransferTimeout as e:
            raise _fail("sendfile", COMMAND_TIMEOUT_ERROR, str(e)) from None
        except _tp.LocalError as e:
            raise _fail("sendfile", LOCAL_FILE_ERROR, str(e)) from None
        except _tp.RemoteError as e:
            raise _fail("sendfile", REMOTE_FILE_ERROR, str(e)) from None
        except _tp.Error as e:
            raise _fail("sendfile", SEND_FILE_ERROR, str(e)) from None
        finally:
            if hasattr(src, "close"):
                src.close()
        _run_timers()
        return Status(0)

    def recvfile(self, *args, **kw) -> Status:
        xfer = self._transfer(args, kw)
        sess = self._sess("recvfile")
        try:
            if xfer.localfile is not None:
                existed = os.path.exists(xfer.localfile)
                sess.extract(xfer.remotefile, os.fspath(xfer.localfile), user=xfer.user or "root",
                             timeout=xfer.timeout or None)
                if xfer.permissions and not existed:
                    umask = os.umask(0)
                    os.umask(umask)
                    os.chmod(xfer.localfile, xfer.permissions & ~umask)
                buffer = None
            else:
                data = sess.extract(xfer.remotefile, user=xfer.user or "root", timeout=xfer.timeout or None)
                if isinstance(xfer.data, bytearray):
                    xfer.data.extend(data)
                    buffer = xfer.data
                else:
                    buffer = bytearray(data)
        except _tp.TransferTimeout as e:
            raise _fail("recvfile", COMMAND_TIMEOUT_ERROR, str(e)) from None
        except _tp.LocalError as e:
            raise _fail("recvfile", LOCAL_FILE_ERROR, str(e)) from None
        except _tp.RemoteError as e:
            raise _fail("recvfile", REMOTE_FILE_ERROR, str(e)) from None
        except _tp.Error as e:
            raise _fail("recvfile", RECEIVE_FILE_ERROR, str(e)) from None
        _run_timers()
        st = Status(0)
        st._buffer = buffer
        return st

    def inject(self, local: str, remote: str, user: str = "root", mode: int = 0o644) -> int:
        self.sendfile(remote, user=user, localfile=local, permissions=mode)
        return 0

    def extract(self, *args, user: str = "root", mode: int = 0o644, **kw) -> int:
        """``extract(remote, local)`` positionally (as the old module, whatever its
        keyword names said); ``extract(remote=..., local=...)`` by name."""
        names = ["remote", "local"]
        if "remote" in kw and args:
            names = ["local"]
        if len(args) > len(names):
            if len(args) >= 3:
                user = args[2]
            if len(args) >= 4:
                mode = args[3]
            args = args[:2]
        for name, value in zip(names, args):
            if name in kw:
                raise TypeError(f"extract() got multiple values for argument {name!r}")
            kw[name] = value
        try:
            remote, local = kw.pop("remote"), kw.pop("local")
        except KeyError as e:
            raise TypeError(f"extract() missing argument {e.args[0]!r}") from None
        if kw:
            raise TypeError(f"extract() got unexpected keyword arguments {sorted(kw)}")
        self.recvfile(remote, user=user, localfile=local, permissions=mode)
        return 0


# --- Chat -------------------------------------------------------------------------------


class Chat:
    """An interactive command (``Target.chat``). ``expect()`` returns True or None;
    ``chat.eof`` / ``chat.timedOut`` say which failure a None was."""

    def __init__(self, target: Target, job: _Job):
        self._target = target
        self._job = job
        self._chat = job.chat
        self._found: Optional[str] = None
        self._consumed = b""
        self._status: Optional[Status] = None
        self.eof = False
        self.timedOut = False

    @property
    def found(self) -> Optional[str]:
        return self._found

    @property
    def consumed(self) -> bytearray:
        return bytearray(self._consumed)

    @property
    def commandline(self) -> str:
        return self._job.cmd.commandline

    @property
    def user(self) -> Optional[str]:
        return self._job.cmd.user

    @property
    def timeout(self) -> int:
        return self._job.cmd.timeout

    def _waiting(self, timeout, call):
        """Runs ``call(slice)`` until it is not a slice's timeout, running timers between
        slices; returns its result, or raises ExpectTimeout at ``timeout``."""
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            slice_ = _timer_wait(left if left is not None else 0.25)
            try:
                return call(slice_ if slice_ is not None else 0.25)
            except _tp.ExpectTimeout:
                _run_timers()
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    def expect(self, expect, timeout=-1):
        if isinstance(expect, (str, bytes)):
            strings = [expect]
        else:
            try:
                strings = list(expect)
            except TypeError:
                raise TypeError("expect() takes a str or a sequence of str") from None
        if not strings or any(not isinstance(s, (str, bytes)) or not s for s in strings):
            raise TypeError("expect() takes non-empty strings")
        self._found = None
        self._consumed = b""
        self.eof = self.timedOut = False
        specs = [("literal", s.encode() if isinstance(s, str) else bytes(s)) for s in strings]
        try:
            index, consumed, _ = self._waiting(timeout, lambda t: self._chat._native.expect(specs, t))
        except _tp.ExpectTimeout:
            self.timedOut = True
            return None
        except (_tp.EndOfOutput, _tp.BufferFull, _tp.Error):
            self.eof = True
            return None
        self._consumed = consumed
        found = strings[index]
        self._found = found if isinstance(found, str) else found.decode("utf-8", "replace")
        return True

    def send(self, string) -> None:
        try:
            self._chat.send(string)
        except _tp.Error:
            pass

    def recvline(self, timeout=-1) -> Optional[str]:
        self.eof = self.timedOut = False
        try:
            line = self._waiting(timeout, lambda t: self._chat._native.read_line(t))
        except _tp.ExpectTimeout:
            self.timedOut = True
            return None
        except _tp.Error:
            self.eof = True
            return None
        if line is None:
            self.eof = True
            return None
        return line.decode("utf-8", "replace")

    def wait(self):
        if self._status is not None:
            return self._status
        job = self._job
        if job.cmd.pid == 0 or self._target._jobs.get(job.cmd.pid) is not job:
            return None
        while job.end is None and not job.error:
            self._target._chat_end(job, _timer_wait(0.25) or 0.25)
            _run_timers()
        if job.end is None:
            self._target._chat_end(job, 2.0)
        self._status = self._target._status(job, "command execution failed")
        return self._status
