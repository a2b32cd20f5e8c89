"""Nothing is left running when a test session dies without stopping its control plane
(marker `cluster`): a child process holding a real ControlPlane (etcd, kube-apiserver,
controller-manager, scheduler, kwok; no operators, to keep it cheap) is killed the two ways
a session dies unasked, and within 10 s every process it recorded is gone, its watchdog
(watchdog.py) too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from builds import build_dir
from processes import running
from waiting import time_scale, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300 * time_scale())]

HERE = Path(__file__).resolve().parent
# A stand-in for a test session: starts a plane, prints what it started, waits to be killed.
SESSION = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from controlplane import ControlPlane
    plane = ControlPlane(Path(sys.argv[2]), Path(sys.argv[3]), with_operators=False, kwok_nodes=1).start()
    if len(sys.argv) > 4:  # and Kueue, from the kueue set's build folder
        from kueue import Kueue
        Kueue(plane, Path(sys.argv[4])).start()
    started = [[p.pid, p.create_time()] for p in plane.pids()]
    print(json.dumps({"started": started, "watchdog": plane.processes.watchdog.pid}), flush=True)
    sys.stdin.read()
""")


def kill_the_process(session: subprocess.Popen) -> None:
    session.kill()


def kill_its_process_group_as_timeout_does(session: subprocess.Popen) -> None:
    # `timeout` runs its command in a process group of its own and, when time is up,
    # sends SIGTERM to the whole group: the watchdog must not be in it.
    os.killpg(session.pid, signal.SIGTERM)


@pytest.mark.parametrize("kill", [kill_the_process, kill_its_process_group_as_timeout_does])
def test_a_killed_session_leaves_no_process(kill, cluster_build, tmp_path):
    killed_session_leaves_nothing(kill, [str(cluster_build)], tmp_path)


def test_a_killed_session_leaves_no_kueue(cluster_build, tmp_path):
    # Kueue runs under unshare (its fixed metrics certificate path): the wrapper and Kueue both go.
    names = killed_session_leaves_nothing(kill_the_process, [str(cluster_build), str(build_dir("kueue"))], tmp_path)
    assert "kueue" in names, names


def killed_session_leaves_nothing(kill, builds: list[str], tmp_path) -> set[str]:
    """Start a stand-in session on `builds`, kill it with `kill`, and fail unless every
    process it started is gone within 10 s; returns the names of those processes."""
    errors = tmp_path / "session.err"
    with open(errors, "w") as err, subprocess.Popen(
            [sys.executable, "-c", SESSION, str(HERE), str(tmp_path / "plane"), *builds],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True) as session:
        started = []
        try:
            line = session.stdout.readline()
            assert line, f"the session's plane did not start: {errors.read_text()[-3000:]}"
            got = json.loads(line)
            started += [tuple(p) for p in got["started"]]
            names = {psutil.Process(pid).name() for pid, _ in started}
            assert names >= {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
            assert running(got["watchdog"])

            kill(session)
            session.wait(10)
            left = lambda: [pid for pid, created in started if running(pid, created)]  # noqa: E731
            try:
                wait_for("every process of the killed session's plane gone", lambda: not left(), 10)
            except TimeoutError as e:
                pytest.fail(f"{e}; still running: {[psutil.Process(pid).name() for pid in left()]}")
            wait_for("the watchdog gone after its cleanup", lambda: not running(got["watchdog"]), 10)
        finally:
            session.kill()
            for pid, created in started:  # a failure must not leave them either
                if running(pid, created):
                    psutil.Process(pid).kill()
    return names
