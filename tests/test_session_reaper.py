"""A test session leaves nothing running (tests/session_reaper.py): a process that left the
session's process group, as a detached `kjob submit --local` does, is ended once the
session is gone, whether it was killed with SIGKILL or ended normally."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from timing import wait_until

TESTS = Path(__file__).resolve().parent

# The inner session's one test: a detached child (a session of its own, as kjob's local
# waiter), its pid written down, then either a wait to be killed or a normal end.
INNER = '''
import os, subprocess, sys, time
def test_leaves_a_detached_child():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    open(os.environ["PID_FILE"], "w").write(str(child.pid))
    if os.environ["HOW"] == "kill":
        time.sleep(600)
'''


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("how", ["kill", "normal end"])
def test_a_finished_session_leaves_no_detached_process(tmp_path, how):
    (tmp_path / "test_inner.py").write_text(INNER)
    pid_file = tmp_path / "child.pid"
    env = {**os.environ, "PID_FILE": str(pid_file), "HOW": how.split()[0],
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("KJOB_TEST_SESSION")  # the inner session marks its own processes
    inner = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                              "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(pid_file.exists, "the inner test to start its detached child", timeout=60, interval=0.05)
        wait_until(lambda: pid_file.read_text().strip(), "the pid to be written", timeout=10)
        child = int(pid_file.read_text())
        assert running(child)
        if how == "kill":
            inner.send_signal(signal.SIGKILL)
        out, _ = inner.communicate(timeout=60)
        if how != "kill":
            assert inner.returncode == 0, out.decode()[-2000:]
        wait_until(lambda: not running(child), "the reaper to end the detached child", timeout=10, interval=0.05)
    finally:
        inner.kill()
        if pid_file.exists() and pid_file.read_text().strip():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
