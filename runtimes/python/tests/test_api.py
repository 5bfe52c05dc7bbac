"""The pythonic API against a real `tuppence serve --unix`, in both dialects (the
`session` fixture), and the embedded `local` target."""

import io
import os
import re
import subprocess
import sys
import threading
import time

import pytest

import tuppence


def test_local_target_needs_nothing_set_up(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", "import tuppence; print(tuppence.connect('local').run('uname -a').stdout)"],
        capture_output=True,
        check=True,
        cwd=tmp_path,  # the installed package, not the source tree
    )
    assert os.uname().sysname.encode() in out.stdout
    with tuppence.connect() as s:
        assert s.local and s.target == "local"
        assert s.run("id -un").stdout.decode().strip() == s.default_user


def test_run_output_status_env_and_user(session, other_user):
    r = session.run("echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"out\n", b"err\n")
    assert session.run("echo $A-$B", env={"A": "1", "B": "two"}).stdout == b"1-two\n"
    assert session.run(["printf", "%s|", "a b", "c"]).stdout == b"a b|c|"
    assert session.run("id -un", user=other_user).stdout.decode().strip() == other_user
    r = session.run("kill -TERM $$")
    assert (r.returncode, r.signal) == (-15, 15)
    info = session.info()
    assert info["server_version"] == ((3, 0) if session.dialect == "3.0" else (4, 0))


def test_run_stdin_kinds(session, tmp_path):
    assert session.run("cat", stdin=b"bytes").stdout == b"bytes"
    assert session.run("cat", stdin="text é").stdout == "text é".encode()
    big = os.urandom(300_000)
    assert session.run("cat", stdin=big).stdout == big
    assert session.run("cat", stdin=io.BytesIO(b"file object")).stdout == b"file object"
    p = tmp_path / "in"
    p.write_bytes(b"from a path")
    assert session.run("cat", stdin=p).stdout == b"from a path"
    # No stdin: the command reads end of file at once.
    assert session.run("cat; echo eof").stdout == b"eof\n"


def test_run_tty(session):
    r = session.run("test -t 0 && test -t 1 && echo tty; echo err >&2", tty=True)
    assert r.stdout.replace(b"\r\n", b"\n") == b"tty\nerr\n" and r.stderr == b""


def test_check_and_timeout(session):
    with pytest.raises(tuppence.CalledProcessError) as e:
        session.run("echo partial; exit 2", check=True)
    assert isinstance(e.value, subprocess.CalledProcessError)
    assert (e.value.returncode, e.value.stdout) == (2, b"partial\n")
    t = time.monotonic()
    with pytest.raises(tuppence.TimeoutExpired) as e:
        session.run("echo before; sleep 30", timeout=1)
    assert time.monotonic() - t < 20
    assert isinstance(e.value, subprocess.TimeoutExpired) and e.value.output == b"before\n"


def test_errors_by_fault(session, agent_socket, tmp_path):
    with pytest.raises(tuppence.CommandFailed) as e:
        session.run("true", user="no-such-user-here")
    assert isinstance(e.value, tuppence.RemoteError) and e.value.errno != 0
    with pytest.raises(tuppence.RemoteError) as e:
        session.extract("/nonexistent/file")
    assert e.value.errno == 2 and isinstance(e.value, OSError)
    with pytest.raises(tuppence.UsageError):
        tuppence.connect("nonsense:target")
    with pytest.raises(tuppence.ConnectError):
        tuppence.connect(f"unix:{tmp_path}/no-agent-here", timeout=2)
    with pytest.raises(tuppence.LocalError):
        session.inject(str(tmp_path / "missing"), "/tmp/x")
    with pytest.raises(tuppence.UsageError):
        session.close()
        session.run("true")


def test_background_streaming_poll_wait_communicate(session):
    p = session.start("for i in 1 2 3; do echo $i; sleep 0.2; done; echo e >&2")
    assert p.returncode is None and p.poll() is None
    events = list(p)
    assert b"".join(d for s, d in events if s == "stdout").endswith(b"3\n")
    r = p.wait()
    assert r.returncode == 0
    with session.start("cat; exit 5") as p:
        out, err = p.communicate(b"piped")
    assert (out, p.returncode) == (b"piped", 5)
    p = session.start("sleep 30")
    with pytest.raises(tuppence.TimeoutExpired):
        p.wait(timeout=0.3)
    p.kill()
    assert p.wait().returncode == -9
    p = session.start("cat")
    p.write(b"a")
    p.write("b")
    p.close_stdin()
    assert p.wait().stdout == b"ab"


def test_interrupt_and_procinfo(session):
    p = session.start("trap 'echo got INT; exit 7' INT; echo ready; while :; do sleep 0.1; done")
    assert next(iter(p)) == ("stdout", b"ready\n")
    if session.dialect == "3.0":
        with pytest.raises(tuppence.UsageError):
            p.procinfo()
        p.interrupt("INT")  # 3.0 always sends KILL
        assert p.wait().returncode == -9
        return
    info = p.procinfo("pid", "state", "comm", "uid")
    assert info["pid"] > 1 and info["uid"] == os.geteuid() and isinstance(info["state"], str)
    with pytest.raises(ValueError):
        p.procinfo("bogus")
    p.interrupt("INT")
    r = p.wait()
    assert (r.returncode, r.stdout) == (7, b"got INT\n")


def test_inject_extract_bytes_paths_and_files(session, tmp_path):
    dest = str(tmp_path / "remote")
    assert session.inject(b"payload", dest, mode=0o600) == 7
    assert (os.stat(dest).st_mode & 0o777) == 0o600
    assert session.extract(dest) == b"payload"
    local = tmp_path / "local"
    local.write_bytes(b"x" * 100_000)
    session.inject(str(local), dest)
    session.inject(local, dest + "2")
    with open(local, "rb") as f:
        session.inject(f, dest + "3")
    session.inject(memoryview(b"mv"), dest + "4")
    assert session.extract(dest + "4") == b"mv"
    copy = tmp_path / "copy"
    assert session.extract(dest + "3", str(copy)) == 100_000
    assert copy.read_bytes() == b"x" * 100_000
    buf = io.BytesIO()
    assert session.extract(dest + "2", buf) == 100_000 and buf.getvalue() == b"x" * 100_000
    session.extract(dest, tmp_path / "copy2")
    assert (tmp_path / "copy2").read_bytes() == b"x" * 100_000  # dest was overwritten from the path


def test_chat(session):
    with session.chat("printf 'name? '; read N; echo \"hi $N\"; printf 'code: '; read C; exit $C") as c:
        m = c.expect("name? ")
        assert (m.index, m.match) == (0, b"name? ")
        c.send_line("ann")
        m = c.expect(re.compile(r"hi (\w+)\r\n"), b"never")
        assert m.index == 0 and m.consumed == b"ann\r\nhi ann\r\n"
        c.expect(["nope", "code: "])
        with pytest.raises(tuppence.ExpectTimeout):
            c.expect("never", timeout=0.3)
        c.send_line("4")
        assert c.read_line() == b"4"
        with pytest.raises(tuppence.EndOfOutput):
            c.expect("never", timeout=30)
        assert c.wait().returncode == 4
        assert c.read_line() is None
    with session.chat("printf '%0100d' 0; sleep 30", limit=50) as c:
        with pytest.raises(tuppence.BufferFull):
            c.expect("END", timeout=30)
        assert c.take_buffered() == b"0" * 100
        c.interrupt("KILL")
        assert c.wait().returncode == -9
    with pytest.raises(tuppence.PatternError):
        with session.chat("true") as c:
            c.expect(re.compile("a*"))


def test_monitor_and_quit(agent_socket):
    with tuppence.connect(f"unix:{agent_socket}") as s:
        with s.monitor("agent") as m:
            m.settle()
            s.run("echo monitored-command")
            seen = b"".join(m.settle())
            assert b"monitored-command" in seen
        # The agent runs with --no-quit: a quit is ignored and the session still works.
        s.quit()
        assert s.run("echo still").stdout == b"still\n"


def test_threads_run_at_once(session):
    """The GIL is released while waiting: two 1-second commands on two threads take
    about one second, not two."""
    results = []

    def work():
        results.append(session.run("sleep 1").returncode)

    threads = [threading.Thread(target=work) for _ in range(2)]
    t = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    took = time.monotonic() - t
    assert results == [0, 0]
    assert took < 1.8, f"two sleeps of 1 s took {took:.2f} s: the GIL was held"
