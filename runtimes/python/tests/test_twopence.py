"""tuppence.twopence: an old-style twopence script (tests/fixtures/old_style_script.py,
identical to a Python 2 script ported to Python 3 but for its import line) runs against
the embedded agent and the real agent in both dialects; and a few semantics in detail."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tuppence.twopence as twopence

SCRIPT = Path(__file__).parent / "fixtures" / "old_style_script.py"


@pytest.mark.parametrize("kind", ["local", "unix", "legacy+unix"])
def test_old_style_script_runs_unchanged(kind, agent_socket, other_user, tmp_path):
    spec = "local" if kind == "local" else f"{kind}:{agent_socket}"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), spec, str(tmp_path), other_user],
        capture_output=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert r.stdout.decode().splitlines()[-1] == "script done"
    assert "reply: world" in r.stdout.decode()


def test_the_script_differs_only_in_its_import():
    text = SCRIPT.read_text()
    assert "import tuppence.twopence as twopence" in text
    assert "tuppence" not in text.replace("import tuppence.twopence as twopence", "")


def test_target_specs():
    assert twopence.Target("virtio:/run/vm.sock").type == "virtio"
    assert twopence.Target("tcp:10.0.0.5")._spec == "legacy+tcp:10.0.0.5:64123"
    assert twopence.Target("local:").type == "local"
    # The old module's ssh: and chroot: plugins map to tuppence's targets of those names.
    assert twopence.Target("ssh:root@sut:2222").type == "ssh"
    assert twopence.Target("chroot:/srv/root").type == "chroot"
    for bad in ("bogus:thing", "ssh:"):
        with pytest.raises(SystemError):
            twopence.Target(bad)


def test_status_and_command_attributes():
    st = twopence.Status(0, signal="KILL")
    assert not st and st.exitSignal == "KILL" and st.code == 265
    st = twopence.Status(error=twopence.COMMAND_CANCELED_ERROR)
    assert st.code == 512 + 21 and st.message.startswith("local error")
    cmd = twopence.Command("true")
    assert cmd.timeout == 60 and cmd.stdout is cmd.stderr and isinstance(cmd.stdout, bytearray)
    with pytest.raises(AttributeError):
        cmd.commandline = "x"
    with pytest.raises(AttributeError):
        cmd.bogus = 1
    cmd.user = None
    cmd.setenv("A", "1")
    cmd.setenv("A", "2")
    assert cmd.environ == (("A", "1"), ("A", "2"))


def test_chat_expect_deadline_and_eof(tmp_path):
    sut = twopence.Target("local")
    chat = sut.chat("echo ready; sleep 1; echo late")
    assert chat.expect("ready") is True and chat.found == "ready"
    assert chat.expect("late", timeout=0.2) is None and chat.timedOut and not chat.eof
    assert chat.expect("late", timeout=30) is True
    assert chat.expect("never", timeout=30) is None and chat.eof
    st = chat.wait()
    assert st and chat.wait() is st
