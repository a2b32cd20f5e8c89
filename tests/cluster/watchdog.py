"""The watchdog of one group of processes (processes.py starts one per `Processes`): when
the process that started them is gone without stopping them (a test session killed with
SIGKILL, by `timeout`, by the OOM killer), it ends them, so that no etcd, API server,
controller, kwok, kubelet or CoreDNS is left running.

    python watchdog.py --owner PID     # stdin: one pid per line, each a process group leader

It runs in a session of its own, so what kills its owner's process group does not kill it.
It learns each process the owner starts on stdin, the write end of which only the owner
holds: end of file means the owner has stopped its processes (`Processes.stop` closes it)
or has died. Either way it ends every recorded process group and every process seen
below one (a descendant that left the group too), then exits. A process is only ever
signalled if it is still the one that was recorded (pid and start time), so a reused pid
is never hit.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import time

import psutil

# How often the tree below the recorded processes is looked at again, and the owner checked.
POLL_S = 0.5
# How long the processes get between SIGTERM and SIGKILL: nobody is left to want a graceful
# stop, so only long enough for etcd and the API server to let go of their files.
GRACE_S = 2.0


class Watched:
    """The recorded group leaders and everything seen below them, by pid and start time."""

    def __init__(self) -> None:
        self.leaders: dict[int, float] = {}
        self.seen: dict[int, float] = {}

    def add_leader(self, pid: int) -> None:
        try:
            self.leaders[pid] = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            pass

    def refresh(self) -> None:
        for pid in list(self.leaders):
            try:
                leader = psutil.Process(pid)
                for p in [leader, *leader.children(recursive=True)]:
                    self.seen[p.pid] = p.create_time()
            except psutil.NoSuchProcess:
                pass

    def alive(self) -> list[psutil.Process]:
        """Every recorded or seen process that still runs (zombies count as ended)."""
        found = []
        for pid, started in {**self.seen, **self.leaders}.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except psutil.NoSuchProcess:
                pass
        return found

    def signal_all(self, sig: int) -> None:
        for p in self.alive():
            if p.pid in self.leaders:
                try:
                    os.killpg(p.pid, sig)  # the leader's whole group, members not yet seen included
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass


def wait_ended(watched: Watched, timeout: float) -> None:
    """Until every watched process has ended or `timeout` passed. (Not psutil.wait_procs:
    an orphan's zombie lasts until init reaps it, which here can take a second or two.)"""
    deadline = time.monotonic() + timeout
    while watched.alive() and time.monotonic() < deadline:
        time.sleep(0.05)


def end_all(watched: Watched) -> None:
    watched.refresh()
    if not watched.alive():
        return
    watched.signal_all(signal.SIGTERM)
    wait_ended(watched, GRACE_S)
    watched.refresh()
    watched.signal_all(signal.SIGKILL)
    wait_ended(watched, 5)


def watch(owner: int, stream) -> None:
    watched = Watched()
    fd = stream.fileno()
    pending = b""
    while True:
        readable, _, _ = select.select([fd], [], [], POLL_S)
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                break  # the owner closed it: stopped, or dead
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    watched.add_leader(int(line))
        if os.getppid() != owner or not psutil.pid_exists(owner):
            break  # the owner is gone though something else holds the pipe open
        watched.refresh()
    end_all(watched)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--owner", type=int, required=True, help="the pid whose end means: stop everything recorded")
    args = ap.parse_args()
    # Ctrl-C in a terminal reaches the owner's process group, not this session; should a
    # signal still come, the cleanup runs all the same.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    t0 = time.monotonic()
    watch(args.owner, sys.stdin)
    print(f"watchdog of {args.owner}: done after {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
