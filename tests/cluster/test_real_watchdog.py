"""Nothing is left running when a test session dies without stopping its control plane
(marker `cluster`): a child process holding a real ControlPlane (etcd, kube-apiserver,
controller-manager, scheduler, kwok; no operators, to keep it cheap) is killed the two ways
a session dies unasked, and within 10 s every process it recorded is gone, its watchdog
(watchdog.py) too. The same with Trainer v2 and JobSet started into the plane
(start_trainer), and with Kueue (kueue.py): they were started later, by the same
supervision, and go the same way."""

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
    for extra in sys.argv[4:]:  # trainer=FOLDER, kueue=FOLDER: build.sh's folders of those sets
        what, _, built = extra.partition("=")
        if what == "trainer":
            plane.start_trainer(Path(built))
        else:
            from kueue import Kueue
            Kueue(plane, Path(built)).start()
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
    killed_session_leaves_nothing(kill, [str(cluster_build)], set(), tmp_path)


def test_a_killed_session_leaves_no_trainer_or_jobset(cluster_build, trainer_build, tmp_path):
    killed_session_leaves_nothing(kill_the_process, [str(cluster_build), f"trainer={trainer_build}"],
                                  {"jobset", "trainer-controller-manager"}, tmp_path)


def test_a_killed_session_leaves_no_kueue(cluster_build, kueue_build, tmp_path):
    # Kueue runs under unshare (its fixed metrics certificate path): the wrapper and Kueue both go.
    killed_session_leaves_nothing(kill_the_process, [str(cluster_build), f"kueue={kueue_build}"], {"kueue"}, tmp_path)


def killed_session_leaves_nothing(kill, builds: list[str], more: set[str], tmp_path: Path) -> None:
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
            assert names >= {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", *more}
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
