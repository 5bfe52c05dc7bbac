"""The exceptions of :mod:`tuppence`, one class per fault, under :class:`Error`.

They mirror the Rust client's error types (``tuppence_blocking::Error``,
``tuppence_expect::ChatError``): the native module raises them by name. Where a standard
exception means the same thing, the class derives from it too, so ``except OSError``,
``except TimeoutError`` or ``except subprocess.CalledProcessError`` keep working.
"""

import subprocess
from typing import Optional

__all__ = [
    "Error",
    "ConnectError",
    "TransportError",
    "LinkError",
    "UsageError",
    "RemoteError",
    "LocalError",
    "Aborted",
    "TransferTimeout",
    "TimeoutExpired",
    "CalledProcessError",
    "CommandFailed",
    "PatternError",
    "ExpectTimeout",
    "EndOfOutput",
    "BufferFull",
]


class Error(Exception):
    """Every error of tuppence derives from this."""


class ConnectError(Error):
    """The target could not be opened, or its agent did not answer the hello in time
    (or refused the client, with its reason)."""


class TransportError(Error):
    """The byte link failed (an I/O error on the socket, port or line)."""


class LinkError(Error):
    """The connection failed: the agent closed it, the keepalive expired, the protocol
    versions differ, the byte stream lost its framing. The session is unusable."""


class UsageError(Error, ValueError):
    """The request could not be made: a bad target, a request too large for the 3.0
    protocol, an operation the dialect lacks, a closed session."""


class RemoteError(Error, OSError):
    """The agent could not do it: ``errno`` is the error number on the system under test
    (2: no such file or user, 13: permission denied, ...); ``what`` names the operation."""

    def __init__(self, errno: int, strerror: str, what: Optional[str] = None):
        OSError.__init__(self, errno, strerror)
        self.what = what

    def __str__(self) -> str:
        return f"{self.what or 'the request'} failed on the system under test: {self.strerror}"

    def __reduce__(self):
        return (type(self), (self.errno, self.strerror, self.what))


class LocalError(Error, OSError):
    """A local file or stream used by a transfer failed (``errno`` is local)."""

    def __init__(self, errno: Optional[int], message: str):
        if errno is None:
            OSError.__init__(self, message)
        else:
            OSError.__init__(self, errno, message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return (type(self), (self.errno, self.message))


class Aborted(Error):
    """The transfer was aborted (Ctrl-C, or a timeout): the agent removed what it had
    written."""


class TransferTimeout(Error, TimeoutError):
    """A transfer did not finish within its ``timeout`` and was aborted."""


class TimeoutExpired(Error, subprocess.TimeoutExpired):
    """The command ran out of its ``timeout`` (the agent killed it), or a wait for it
    did. ``output``/``stdout`` and ``stderr`` hold what it printed."""

    def __init__(self, cmd, timeout, output=None, stderr=None):
        subprocess.TimeoutExpired.__init__(self, cmd, timeout, output, stderr)

    def __str__(self) -> str:
        return subprocess.TimeoutExpired.__str__(self)

    def __reduce__(self):
        return (type(self), (self.cmd, self.timeout, self.output, self.stderr))


class CalledProcessError(Error, subprocess.CalledProcessError):
    """``check=True`` and the command did not exit with 0. ``returncode`` is its exit
    status, or ``-N`` for signal N, as with :mod:`subprocess`."""

    def __init__(self, returncode, cmd, output=None, stderr=None):
        subprocess.CalledProcessError.__init__(self, returncode, cmd, output, stderr)

    def __str__(self) -> str:
        return subprocess.CalledProcessError.__str__(self)

    def __reduce__(self):
        return (type(self), (self.returncode, self.cmd, self.output, self.stderr))


class CommandFailed(RemoteError):
    """The agent could not start the command at all (unknown user, no shell):
    ``errno`` says why."""


class PatternError(Error, ValueError):
    """A chat pattern was refused: an invalid regular expression, or one that matches
    empty text (it would match before any output)."""


class ExpectTimeout(Error, TimeoutError):
    """Nothing expected arrived before the deadline. The output stays buffered."""


class EndOfOutput(Error, EOFError):
    """The command ended (and its output with it) before a match."""


class BufferFull(Error):
    """The chat's buffer holds its limit of output without a match: take it
    (``Chat.take_buffered()``) or discard it to go on. Nothing was dropped."""

    def __init__(self, message: str, limit: int = 0):
        Error.__init__(self, message)
        self.limit = limit

