"""The real tiers' process supervision (processes.py, watchdog.py) on plain `sleep`s, no
build needed: a stop ends everything, the watchdog included; an owner that dies without
stopping (SIGKILL, or SIGTERM to its process group as `timeout` sends) leaves nothing
running; a process that exits is named with its log. test_real_watchdog.py does the same
to a real control plane."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from processes import ProcessDied, Processes, running
from waiting import wait_for

HERE = Path(__file__).resolve().parent
OWNER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from processes import Processes
    from waiting import wait_for
    procs = Processes(Path(sys.argv[2]))
    procs.spawn("one", ["sleep", "600"])
    procs.spawn("two", ["sh", "-c", "sleep 600 & sleep 600; wait"])
    found = wait_for("sh's two sleeps", lambda: (lambda p: p if len(p) == 4 else None)(procs.pids()), 10)
    pids = [[p.pid, p.create_time()] for p in found]
    print(json.dumps({"pids": pids, "watchdog": procs.watchdog.pid}), flush=True)
    sys.stdin.read()
""")


@pytest.mark.parametrize("kill", ["SIGKILL to the owner", "SIGTERM to its process group"])
def test_an_owner_that_dies_leaves_nothing_running(kill, tmp_path):
    with subprocess.Popen([sys.executable, "-c", OWNER, str(HERE), str(tmp_path)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, start_new_session=True) as owner:
        pids = []
        try:
            ended(owner, kill, pids)
        finally:
            owner.kill()
            for pid, created in pids:
                if running(pid, created):
                    os.kill(pid, signal.SIGKILL)


def ended(owner: subprocess.Popen, kill: str, pids: list) -> None:
    """Kill the owner as `kill` says; its processes (appended to pids) and watchdog end."""
    got = json.loads(owner.stdout.readline())
    pids += got["pids"]  # sleep; sh and its two sleeps
    if kill == "SIGKILL to the owner":
        owner.kill()
    else:
        os.killpg(owner.pid, signal.SIGTERM)
    owner.wait(10)
    wait_for("every process of the dead owner gone", lambda: not [p for p, c in pids if running(p, c)], 10)
    wait_for("the watchdog gone", lambda: not running(got["watchdog"]), 10)


def test_stop_ends_every_process_and_lets_the_watchdog_go(tmp_path):
    procs = Processes(tmp_path)
    procs.spawn("one", ["sleep", "600"])
    procs.spawn("two", ["sh", "-c", "sleep 600 & wait"])
    everyone, watchdog = procs.pids(), procs.watchdog
    assert len(everyone) == 3 and watchdog.poll() is None
    procs.stop(timeout=10)
    assert [p for p in everyone if running(p.pid, p.create_time() if p.is_running() else None)] == []
    assert watchdog.returncode is not None and procs.watchdog is None
    assert "done" in (tmp_path / "watchdog.log").read_text()


def test_a_process_that_exits_is_named_with_its_log(tmp_path):
    procs = Processes(tmp_path)
    try:
        procs.spawn("flaky", ["sh", "-c", "echo cannot bind 127.0.0.1:53; exit 3"])
        with pytest.raises(ProcessDied, match=r"(?s)^flaky exited with 3; the end of .*flaky\.log:\ncannot bind 127\.0\.0\.1:53\n$"):
            wait_for("flaky to exit", lambda: False, 10, alive=procs.alive)
    finally:
        procs.stop()
