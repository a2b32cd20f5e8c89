"""`python -m kjob_trainer.launch -- COMMAND`, the MPIJob launcher's PID 1, with real
processes: the first SIGTERM reaches the child as SIGUSR1 (mpirun forwards that to the
ranks, which save a checkpoint), a second one as itself, SIGUSR1 passes; the child's exit
code is the wrapper's; bad usage is exit 2 and one line. Then in front of real mpirun."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from timing import scaled, wait_until
from trainer_utils import assert_loadable_step_checkpoint, signal_stop_run


# Whatever a test starts and leaves running is killed after it (conftest.reap_stray_processes).
pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("reap_stray_processes")]

LAUNCH = [sys.executable, "-m", "kjob_trainer.launch", "--"]
PYTHON = Path(sys.executable).name  # the name the wrapper gives its child in its line
ASKED = "kjob launch: {sig} -> SIGUSR1 to {name} (checkpoint and stop)"
USAGE = "Error: no command to run (usage: python -m kjob_trainer.launch [--hold [--hold-limit SECONDS]] -- COMMAND [ARG...])"

# The child: writes down each SIGUSR1/SIGTERM/SIGINT it gets (one name a line) and exits
# with argv[3] once it has had argv[2] of them. `ready` means its handlers are set, and so
# the wrapper's (set before the child starts).
RECORDER = """
import signal, sys, time
from pathlib import Path
folder, stop_after, code = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
got = []
def record(signum, frame):
    got.append(signal.Signals(signum).name)
    (folder / "signals").write_text("".join(name + "\\n" for name in got))
for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, record)
(folder / "ready").touch()
while len(got) < stop_after:
    time.sleep(0.01)
sys.exit(code)
"""


def recorder(tmp_path: Path, *, stop_after: int, code: int) -> subprocess.Popen:
    """The wrapper in front of RECORDER, once the child is ready."""
    proc = subprocess.Popen([*LAUNCH, sys.executable, "-c", RECORDER, str(tmp_path), str(stop_after), str(code)],
                            stderr=subprocess.PIPE, text=True)
    wait_until(lambda: (tmp_path / "ready").exists() or proc.poll() is not None, "the child to be ready")
    return proc


def received(tmp_path: Path) -> list[str]:
    path = tmp_path / "signals"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_reaches_the_child_as_sigusr1_and_its_exit_code_is_kept(tmp_path, stop):
    proc = recorder(tmp_path, stop_after=1, code=143)
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=scaled(20))
    assert (proc.returncode, received(tmp_path), err) == (143, ["SIGUSR1"], ASKED.format(sig=stop.name, name=PYTHON) + "\n")


def test_a_second_sigterm_is_passed_on_as_sigterm(tmp_path):
    proc = recorder(tmp_path, stop_after=2, code=3)
    proc.send_signal(signal.SIGTERM)
    wait_until(lambda: received(tmp_path) == ["SIGUSR1"], "the first signal")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=scaled(20))
    assert (proc.returncode, received(tmp_path)) == (3, ["SIGUSR1", "SIGTERM"])
    assert err.splitlines() == [ASKED.format(sig="SIGTERM", name=PYTHON),
                                f"kjob launch: SIGTERM again -> SIGTERM to {PYTHON} (stop now, no checkpoint)"]


def test_sigusr1_is_passed_on_and_a_later_sigterm_still_asks_for_a_checkpoint(tmp_path):
    """`kjob delete` sends SIGUSR1 to PID 1 and then deletes the job, whose SIGTERM
    must not turn into a quick kill."""
    proc = recorder(tmp_path, stop_after=2, code=143)
    proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: received(tmp_path) == ["SIGUSR1"], "SIGUSR1")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=scaled(20))
    assert (proc.returncode, received(tmp_path), err) == (143, ["SIGUSR1", "SIGUSR1"], ASKED.format(sig="SIGTERM", name=PYTHON) + "\n")


def sleeper() -> tuple[subprocess.Popen, psutil.Process]:
    """The wrapper in front of a child that only sleeps (no handlers), once it runs."""
    proc = subprocess.Popen([*LAUNCH, sys.executable, "-c", "import time; time.sleep(60)"], stderr=subprocess.PIPE, text=True)

    def child():
        kids = psutil.Process(proc.pid).children()
        return kids[0] if kids and "time.sleep(60)" in " ".join(kids[0].cmdline()) else None

    wait_until(lambda: child() is not None, "the child to start")
    return proc, child()


def test_a_child_killed_by_signal_n_is_exit_128_plus_n():
    proc, child = sleeper()
    child.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=scaled(20))
    assert (proc.returncode, err) == (128 + signal.SIGKILL, "")


def test_a_child_without_a_sigusr1_handler_dies_of_it():
    """As a trainer stopped before it set its handlers (nothing to save yet)."""
    proc, _ = sleeper()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=scaled(20))
    assert (proc.returncode, err) == (128 + signal.SIGUSR1, ASKED.format(sig="SIGTERM", name=PYTHON) + "\n")


@pytest.mark.parametrize("argv, line", [
    ([], USAGE),
    (["--"], USAGE),
    (["mpirun", "-np", "2"], USAGE),
    (["--", "kjob-no-such-command"], "Error: cannot run kjob-no-such-command: No such file or directory"),
    (["--hold"], USAGE),
    (["--wait", "--", "sleep", "1"], "Error: unknown option --wait " + USAGE[len("Error: no command to run "):]),
    (["--hold", "--hold-limit", "--", "sleep", "1"], "Error: --hold-limit takes a number of seconds (0 or more)"),
    (["--hold", "--hold-limit", "-1", "--", "sleep", "1"], "Error: --hold-limit takes a number of seconds (0 or more), not '-1'"),
    (["--hold-limit", "5", "--", "sleep", "1"], "Error: --hold-limit needs --hold"),
], ids=["nothing", "nothing-after-dashes", "no-dashes", "not-found", "hold-nothing", "unknown-option", "limit-no-value",
        "limit-negative", "limit-without-hold"])
def test_bad_usage_is_exit_2_and_one_line(argv, line):
    r = subprocess.run([*LAUNCH[:-1], *argv], capture_output=True, text=True, timeout=scaled(30))
    assert (r.returncode, r.stdout, r.stderr) == (2, "", line + "\n")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_to_the_wrapper_in_front_of_mpirun_saves_a_checkpoint(tmp_path):
    """What a launcher pod gets when it is stopped; mpirun itself would kill the ranks."""
    code, text, out = signal_stop_run(tmp_path, lambda wrapper: wrapper.send_signal(signal.SIGTERM), launch=LAUNCH)
    assert code == 143, text[-3000:]
    assert ASKED.format(sig="SIGTERM", name="mpirun") in text and "SIGUSR1: saved a checkpoint at step" in text, text[-3000:]
    assert_loadable_step_checkpoint(out)


# --- PID 1 reaps, and the launcher waits for the workers' sshd ----------------------------

# Inside its own PID namespace the wrapper is PID 1. The child leaves an orphan (sh's
# background sleep) that is re-parented to PID 1, and exits 0 once the orphan has been
# collected, 7 if it stays a zombie.
ORPHAN_MAKER = """
import subprocess, sys, time
sh = subprocess.run(["sh", "-c", "sleep 0.2 & echo $!"], capture_output=True, text=True)
orphan = int(sh.stdout)
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    try:
        with open(f"/proc/{orphan}/stat") as f:
            f.read()
    except FileNotFoundError:
        sys.exit(0)
    time.sleep(0.05)
sys.exit(7)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a PID namespace needs root (CI runs as root)")
def test_as_pid_1_it_reaps_the_orphans_it_adopts():
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", *LAUNCH, sys.executable, "-c", ORPHAN_MAKER, str(scaled(20))],
                       capture_output=True, text=True, timeout=scaled(60))
    assert (r.returncode, r.stderr) == (0, "")


def fake_mpirun(tmp_path: Path, hosts: list[str], port: int) -> tuple[list[str], dict]:
    """A stand-in `mpirun --hostfile FILE` that notes it ran, and an `ssh` that says every
    host's port is `port` (as `ssh -G` does from the image's config)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mpirun").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/mpirun-ran\n")
    (bin_dir / "ssh").write_text(f"#!/bin/sh\necho 'hostname $2'\necho 'port {port}'\n")
    for tool in ("mpirun", "ssh"):
        (bin_dir / tool).chmod(0o755)
    (tmp_path / "hostfile").write_text("".join(f"{h} slots=1\n" for h in hosts))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return [*LAUNCH, str(bin_dir / "mpirun"), "--hostfile", str(tmp_path / "hostfile"), "-np", "1", "true"], env


def free_port(address: str = "127.0.0.2", port: int = 0) -> socket.socket:
    # Not 127.0.0.1: the wrapper does not wait for this host's own names (mpirun needs no
    # ssh to reach them); the whole 127/8 range is this machine's loopback all the same.
    sock = socket.socket()
    sock.bind((address, port))
    return sock


def test_the_launcher_waits_until_every_host_accepts_ssh(tmp_path):
    first = free_port("127.0.0.2")
    port = first.getsockname()[1]
    second = free_port("127.0.0.3", port)
    command, env = fake_mpirun(tmp_path, ["127.0.0.2", "127.0.0.3", "localhost"], port)
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline() == f"kjob launch: waiting for ssh on 127.0.0.2:{port}, 127.0.0.3:{port} (2 of 2 host(s))\n"
    assert not (tmp_path / "mpirun-ran").exists()
    for sock in (first, second):
        sock.listen()  # the workers' sshd is up
    _, err = proc.communicate(timeout=scaled(30))
    first.close()
    second.close()
    assert proc.returncode == 0 and (tmp_path / "mpirun-ran").exists()
    assert re.fullmatch(r"kjob launch: all 2 host\(s\) accept ssh after \d+ s\n", err), err
    # Only the launcher has the hostfile: every rank learns rank 0's host (the first) from mpirun.
    assert (tmp_path / "mpirun-ran").read_text() == f"-x KJOB_RENDEZVOUS_HOST=127.0.0.2 --hostfile {tmp_path}/hostfile -np 1 true\n"


def test_a_stop_while_waiting_for_the_hosts_starts_nothing(tmp_path):
    sock = free_port()  # bound, never listening: refused
    command, env = fake_mpirun(tmp_path, ["127.0.0.2"], sock.getsockname()[1])
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline().startswith("kjob launch: waiting for ssh on 127.0.0.2:")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=scaled(30))
    sock.close()
    assert proc.returncode == 143 and not (tmp_path / "mpirun-ran").exists()
    assert err == "kjob launch: SIGTERM -> SIGUSR1 to mpirun (checkpoint and stop)\nkjob launch: stopped before mpirun started\n"


def test_hostfiles_are_read_as_openmpi_reads_them(tmp_path):
    from kjob_trainer.launch.ssh_hosts import hostfile_of, read_hosts

    (tmp_path / "hostfile").write_text("# the operator's\nw-0.w slots=8\n\nw-1.w slots=8  # two\nw-0.w slots=8\n")
    assert read_hosts(tmp_path / "hostfile") == ["w-0.w", "w-1.w"]
    assert hostfile_of(["/opt/venv/bin/mpirun", "--hostfile", "/etc/mpi/hostfile", "-np", "16", "python"]) == Path("/etc/mpi/hostfile")
    assert hostfile_of(["mpirun", "-np", "2", "python"]) is None
    assert hostfile_of(["/usr/sbin/sshd", "--hostfile", "x"]) is None
