"""Ctrl-C: a SIGINT to a Python process waiting in tuppence raises KeyboardInterrupt
there and stops the remote operation (the command gets SIGINT; a transfer is aborted and
its partial file removed)."""

import os
import signal
import time

from conftest import python_proc

RUN = """
import sys, tuppence
s = tuppence.connect(sys.argv[1])
try:
    s.run(sys.argv[2])
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
    sys.exit(3)
"""

INJECT = """
import os, sys, tuppence
s = tuppence.connect(sys.argv[1])
r, w = os.pipe()
os.write(w, b"x" * 1000)          # some data, then nothing: the inject waits for more
open(sys.argv[3], "w").close()    # tell the test we are about to wait
try:
    s.inject(os.fdopen(r, "rb", buffering=0), sys.argv[2])
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
    sys.exit(3)
"""


def wait_for(path, seconds=30):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_ctrl_c_interrupts_the_remote_command(target, tmp_path):
    started, got_int = tmp_path / "started", tmp_path / "got-int"
    cmd = f"trap 'touch {got_int}; exit 1' INT; touch {started}; while :; do sleep 0.1; done"
    proc = python_proc(RUN, target, cmd)
    wait_for(started)
    t = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err.decode()
    assert b"KeyboardInterrupt" in out
    assert time.monotonic() - t < 10
    if target.startswith("legacy+"):
        # Protocol 3.0 can only send KILL: no trap runs, but the command is gone.
        return
    wait_for(got_int, 10)


def test_ctrl_c_aborts_an_inject(target, tmp_path):
    dest, ready = tmp_path / "dest", tmp_path / "ready"
    proc = python_proc(INJECT, target, str(dest), str(ready))
    wait_for(ready)
    time.sleep(0.3)  # let the inject start waiting on its source
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err.decode()
    assert b"KeyboardInterrupt" in out
    # Nothing was put in place and no temporary is left beside the destination.
    deadline = time.monotonic() + 10
    while os.listdir(tmp_path) != ["ready"]:
        assert time.monotonic() < deadline, os.listdir(tmp_path)
        time.sleep(0.05)
