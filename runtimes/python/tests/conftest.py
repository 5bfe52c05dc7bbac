"""Fixtures: a real `tuppence serve --unix` started per test session (built with cargo
from this repository unless $TUPPENCE_BIN names the binary), and the targets that reach
it in both dialects."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def _binary() -> str:
    explicit = os.environ.get("TUPPENCE_BIN")
    if explicit:
        return explicit
    subprocess.run(
        ["cargo", "build", "--quiet", "-p", "tuppence-cli"], cwd=REPO, check=True
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return str(target / "debug" / "tuppence")


@pytest.fixture(scope="session")
def agent_socket():
    tmp = tempfile.mkdtemp(prefix="tuppence-pytest-")
    sock = os.path.join(tmp, "agent.sock")
    proc = subprocess.Popen(
        [_binary(), "serve", "--unix", sock, "--no-quit"],
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    line = b""
    while b"ready on" not in line:
        line = proc.stderr.readline()
        if not line or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"tuppence serve did not start: {line!r}")
    try:
        yield sock
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(params=["unix", "legacy+unix"])
def target(request, agent_socket):
    """The agent over its unix socket, in protocol 4.0 and 3.0."""
    return f"{request.param}:{agent_socket}"


@pytest.fixture
def session(target):
    import tuppence

    with tuppence.connect(target) as s:
        yield s


@pytest.fixture(scope="session")
def other_user():
    """A user other than the one running the tests, when the agent may switch to it."""
    if os.geteuid() != 0:
        pytest.skip("the agent runs as an unprivileged user: cannot act as another user")
    import pwd

    for name in ("tuppence-test", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    pytest.skip("no user tuppence-test or nobody")


def python_proc(code: str, *args, cwd=None, **kw) -> subprocess.Popen:
    """A Python interpreter running ``code``, outside the source tree (so it imports the
    installed package)."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=cwd or tempfile.gettempdir(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )
