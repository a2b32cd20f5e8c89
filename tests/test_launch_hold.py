"""`python -m kjob_trainer.launch --hold -- sshd ...`, the MPIJob worker's PID 1, with real
processes: a stop signal reaches the child only once nothing runs under it (its ssh
sessions ended) or the hold limit has passed; at once when it is idle or on a second
signal. Then a whole-job stop end to end: a worker and the launcher get SIGTERM together
and the ranks under the worker still save a checkpoint."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from kjob_trainer.launch.pid1 import processes_under
from timing import scaled, wait_until
from trainer_utils import assert_loadable_step_checkpoint, index_of, signal_stop_run


# Whatever a test starts and leaves running is killed after it (conftest.reap_stray_processes).
pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("reap_stray_processes")]

HOLD = [sys.executable, "-m", "kjob_trainer.launch", "--hold"]
LAUNCH = [sys.executable, "-m", "kjob_trainer.launch", "--"]
PYTHON = Path(sys.executable).name  # the name the wrapper gives its child in its lines
HELD = "kjob launch: SIGTERM -> kept from {name} until nothing runs under it (1 process now, at most {limit} s)"

# A stand-in for sshd: runs argv[2:] (if any) as its one "session" and writes down, with
# the monotonic time, when the session started ("session PID", or "idle"), when it exited
# and which stop signal came. On a stop signal it kills everything under it and exits 0,
# as sshd does: as PID 1 of a pod its exit takes the container's processes with it.
STAND_IN = """
import signal, subprocess, sys, time
from pathlib import Path
import psutil
folder, command = Path(sys.argv[1]), sys.argv[2:]
session = None
def record(event):
    with open(folder / "events", "a") as f:
        f.write(f"{event} {time.monotonic()}\\n")
def check():
    global session
    if session is not None and session.poll() is not None:
        record(f"session-exit {session.returncode}")
        session = None
def stop(signum, frame):
    check()
    record(signal.Signals(signum).name)
    for p in psutil.Process().children(recursive=True):
        p.kill()
    sys.exit(0)
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, stop)
session = subprocess.Popen(command) if command else None
record(f"session {session.pid}" if session else "idle")
while True:
    check()
    time.sleep(0.01)
"""


def sleep(seconds: float) -> list[str]:
    return [sys.executable, "-c", f"import time; time.sleep({seconds})"]


def events(folder: Path) -> list[tuple[str, float]]:
    """(event, monotonic time) as the stand-in wrote them."""
    path = folder / "events"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(line.rsplit(" ", 1)[0], float(line.rsplit(" ", 1)[1])) for line in lines]


def names(folder: Path) -> list[str]:
    """The events without times, and a session's pid as PID."""
    return [re.sub(r"^session \d+$", "session PID", event) for event, _ in events(folder)]


def held(folder: Path, session: list[str], *options: str) -> subprocess.Popen:
    """The wrapper with --hold in front of STAND_IN, once its session runs."""
    proc = subprocess.Popen([*HOLD, *options, "--", sys.executable, "-c", STAND_IN, str(folder), *session],
                            stderr=subprocess.PIPE, text=True)
    wait_until(lambda: events(folder) or proc.poll() is not None, "the stand-in to start")
    return proc


def time_of(folder: Path, name: str) -> float:
    return next(t for event, t in events(folder) if event == name)


def test_sigterm_reaches_the_child_only_after_its_session_ended(tmp_path):
    proc = held(tmp_path, sleep(2))
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=scaled(20))
    assert (proc.returncode, names(tmp_path)) == (0, ["session PID", "session-exit 0", "SIGTERM"])
    # Held until the session ended (not the wrapper's limit). Measured from the session's
    # own exit, not from `sent`: on a loaded machine the session may have slept a while
    # before the test sent the signal.
    assert time_of(tmp_path, "session-exit 0") <= time_of(tmp_path, "SIGTERM") < sent + scaled(60)
    first, second = err.splitlines()
    assert first == HELD.format(name=PYTHON, limit=110)
    assert re.fullmatch(rf"kjob launch: sessions ended after \d+ s -> SIGTERM to {re.escape(PYTHON)}", second), second


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_an_idle_child_is_stopped_at_once(tmp_path, stop):
    proc = held(tmp_path, [])
    sent = time.monotonic()
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=scaled(20))
    assert (proc.returncode, names(tmp_path), err) == (0, ["idle", stop.name], f"kjob launch: {stop.name}, no sessions -> {stop.name} to {PYTHON}\n")
    assert time_of(tmp_path, stop.name) - sent < scaled(10)  # at once, not after the 110 s hold


def test_a_session_that_outlives_the_hold_limit_is_cut_at_the_limit(tmp_path):
    proc = held(tmp_path, sleep(60), "--hold-limit", "1")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=scaled(20))
    assert (proc.returncode, names(tmp_path)) == (0, ["session PID", "SIGTERM"])  # the stand-in killed the session
    assert 1 <= time_of(tmp_path, "SIGTERM") - sent < scaled(20)  # the 1 s limit, not the session's 60 s
    assert err.splitlines() == [HELD.format(name=PYTHON, limit=1),
                                f"kjob launch: hold limit of 1 s reached (1 process left) -> SIGTERM to {PYTHON}"]


def test_a_second_sigterm_stops_the_child_at_once(tmp_path):
    proc = held(tmp_path, sleep(60))
    proc.send_signal(signal.SIGTERM)
    assert proc.stderr.readline() == HELD.format(name=PYTHON, limit=110) + "\n"
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=scaled(20))
    assert (proc.returncode, names(tmp_path)) == (0, ["session PID", "SIGTERM"])
    assert re.fullmatch(rf"kjob launch: SIGTERM again after \d+ s -> SIGTERM to {re.escape(PYTHON)}\n", err), err
    assert time_of(tmp_path, "SIGTERM") - sent < scaled(10)  # at once, not after the session's 60 s


def test_sigusr1_is_not_passed_on():
    """sshd has no handler for it and would die of it, taking its sessions."""
    proc = subprocess.Popen([*HOLD, "--", sys.executable, "-c", "import time; time.sleep(60)"], stderr=subprocess.PIPE, text=True)
    wait_until(lambda: psutil.Process(proc.pid).children(), "the child to start")
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=scaled(20))
    assert (proc.returncode, err) == (128 + signal.SIGTERM, f"kjob launch: SIGTERM, no sessions -> SIGTERM to {PYTHON}\n")


# A stand-in trainer rank (OMPI_COMM_WORLD_RANK in its environment, as OpenMPI starts a
# rank) with a forked stand-in loader worker (which inherits it): each writes down a
# SIGUSR1; the rank then exits 143, as the trainer does after its checkpoint.
RANK = """
import os, signal, sys, time
from pathlib import Path
folder = Path(sys.argv[1])
def on_usr1(signum, frame):
    (folder / ("rank-usr1" if os.getpid() == rank else "worker-usr1")).write_text("")
    if os.getpid() == rank:
        sys.exit(143)
rank = os.getpid()
signal.signal(signal.SIGUSR1, on_usr1)
if os.fork() == 0:
    while os.getppid() == rank:  # a loader worker leaves when its rank is gone
        time.sleep(0.05)
    os._exit(0)
(folder / "ready").write_text("")
time.sleep(60)
"""


def test_a_worker_stopped_alone_asks_its_trainer_ranks_to_checkpoint(tmp_path):
    """A drained worker: SIGUSR1 goes to the rank under it (not to its loader worker), the
    rank's exit ends the session, then sshd (the stand-in) gets the SIGTERM."""
    rank = ["env", "OMPI_COMM_WORLD_RANK=0", sys.executable, "-c", RANK, str(tmp_path)]
    proc = held(tmp_path, rank)
    wait_until(lambda: (tmp_path / "ready").exists(), "the stand-in rank")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=scaled(20))
    assert (tmp_path / "rank-usr1").exists() and not (tmp_path / "worker-usr1").exists()
    assert names(tmp_path) == ["session PID", "session-exit 143", "SIGTERM"]
    held_line, asked, let_go = err.splitlines()
    assert held_line.startswith(f"kjob launch: SIGTERM -> kept from {PYTHON} until nothing runs under it (")
    assert asked == "kjob launch: SIGUSR1 to the 1 trainer rank(s) under it (checkpoint and stop)"
    assert re.fullmatch(rf"kjob launch: sessions ended after \d+ s -> SIGTERM to {re.escape(PYTHON)}", let_go), let_go


def test_a_child_that_exits_on_its_own_gives_its_exit_code():
    r = subprocess.run([*HOLD, "--", sys.executable, "-c", "import sys; sys.exit(5)"], capture_output=True, text=True, timeout=scaled(30))
    assert (r.returncode, r.stderr) == (5, "")


def test_processes_under_finds_grandchildren_and_leaves_zombies_out():
    shell = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    zombie = subprocess.Popen(["true"])  # exits and is not waited for
    try:
        wait_until(lambda: psutil.Process(shell.pid).children(), "the grandchild to start")
        wait_until(lambda: psutil.Process(zombie.pid).status() == psutil.STATUS_ZOMBIE, "the zombie")
        (grandchild,) = psutil.Process(shell.pid).children()
        under = processes_under(os.getpid())
        assert {shell.pid, grandchild.pid} <= under and zombie.pid not in under
        assert processes_under(shell.pid) == {grandchild.pid}
    finally:
        shell.kill()
        shell.wait()
        zombie.wait()


def stop_the_job(folder: Path):
    """For signal_stop_run: SIGTERM to the worker (the process it started) and to the
    launcher wrapper (the stand-in's session) one right after the other, as a job
    deletion sends them."""

    def send(worker: subprocess.Popen) -> None:
        (launcher,) = [int(e.split()[1]) for e, _ in events(folder) if e.startswith("session ")]
        os.kill(worker.pid, signal.SIGTERM)
        os.kill(launcher, signal.SIGTERM)

    return send


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_whole_job_stop_still_saves_a_checkpoint(tmp_path):
    """A worker (the stand-in sshd under --hold, with mpirun and the ranks in its session)
    and the launcher wrapper in front of mpirun get SIGTERM together, as when the job is
    deleted or preempted: the launcher's SIGUSR1 reaches the ranks, rank 0 saves, and only
    then the worker lets its sshd go."""
    folder = tmp_path / "worker"
    folder.mkdir()
    code, text, out = signal_stop_run(tmp_path, stop_the_job(folder), launch=[*HOLD, "--", sys.executable, "-c", STAND_IN, str(folder), *LAUNCH])
    assert (code, names(folder)) == (0, ["session PID", "session-exit 143", "SIGTERM"]), text[-3000:]
    assert "kjob launch: SIGTERM -> SIGUSR1 to mpirun (checkpoint and stop)" in text, text[-3000:]
    assert re.search(rf"kjob launch: SIGTERM -> kept from {re.escape(PYTHON)} until nothing runs under it", text), text[-3000:]
    assert "kjob launch: sessions ended after" in text and "SIGUSR1: saved a checkpoint at step" in text, text[-3000:]
    assert_loadable_step_checkpoint(out)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_worker_drained_alone_still_saves_a_checkpoint(tmp_path):
    """Only the worker gets SIGTERM (a drain or eviction of its node): it sends SIGUSR1 to
    the ranks under it, the ranks agree to stop, rank 0 saves, and then sshd goes."""
    folder = tmp_path / "worker"
    folder.mkdir()
    code, text, out = signal_stop_run(tmp_path, lambda worker: worker.send_signal(signal.SIGTERM),
                                      launch=[*HOLD, "--", sys.executable, "-c", STAND_IN, str(folder)])
    assert (code, names(folder)) == (0, ["session PID", "session-exit 143", "SIGTERM"]), text[-3000:]
    assert "kjob launch: SIGUSR1 to the 2 trainer rank(s) under it (checkpoint and stop)" in text, text[-3000:]
    assert "SIGUSR1: saved a checkpoint at step" in text, text[-3000:]
    assert_loadable_step_checkpoint(out)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_without_the_hold_the_stand_in_takes_the_ranks_with_it(tmp_path):
    """The same stop with the stand-in as PID 1 itself, as sshd was: no checkpoint. (So
    the test above shows what the hold adds, not a lenient stand-in.)"""
    folder = tmp_path / "worker"
    folder.mkdir()
    code, text, out = signal_stop_run(tmp_path, stop_the_job(folder), launch=[sys.executable, "-c", STAND_IN, str(folder), *LAUNCH])
    assert (code, names(folder), index_of(out)) == (0, ["session PID", "SIGTERM"], {}), text[-3000:]
