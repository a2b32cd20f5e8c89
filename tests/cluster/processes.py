"""Process supervision for the real tiers: the control plane's components
(controlplane.py), the node's kubelet and CoreDNS (tests/node).

Each process runs in a session of its own (so a signal to the test session's process group
does not reach it half-way through a stop), with its output appended to <logs>/<name>.log.
A watchdog (watchdog.py, a separate process in its own session) learns every pid and ends
them all if the process that started them dies without stopping them; stop() ends them
in the reverse order of their start and lets the watchdog go.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

WATCHDOG = Path(__file__).resolve().parent / "watchdog.py"


class ProcessDied(RuntimeError):
    pass


def running(pid: int, created: float | None = None) -> bool:
    """Whether process `pid` runs (a zombie has ended), and is the one started at
    `created` (psutil's create_time) when that is given: a reused pid is another process."""
    try:
        p = psutil.Process(pid)
        return (created is None or p.create_time() == created) and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Processes:
    """The processes of one owner (a control plane, a kubelet, CoreDNS), started and
    stopped together, under one watchdog started with the first of them."""

    def __init__(self, logs: Path, *, cwd: Path | None = None) -> None:
        self.logs_dir, self.cwd = logs, cwd
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.watchdog: subprocess.Popen | None = None

    def _watch(self, pid: int) -> None:
        if self.watchdog is None:
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            with open(self.logs_dir / "watchdog.log", "ab") as out:
                self.watchdog = subprocess.Popen([sys.executable, str(WATCHDOG), "--owner", str(os.getpid())],
                                                 stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.watchdog.stdin.write(f"{pid}\n".encode())
        self.watchdog.stdin.flush()

    def spawn(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        """Start argv (env added to this process's environment), output to <logs>/<name>.log."""
        path = self.logs_dir / f"{name}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.logs[name] = path
        with open(path, "ab") as out:
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, env={**os.environ, **(env or {})}, cwd=self.cwd)
        self.procs[name] = p
        self._watch(p.pid)
        return p

    def alive(self) -> None:
        """Raise ProcessDied naming the first process that exited, with its log's tail."""
        for name, p in self.procs.items():
            if p.poll() is not None:
                tail = self.logs[name].read_text(errors="replace")[-3000:]
                raise ProcessDied(f"{name} exited with {p.returncode}; the end of {self.logs[name]}:\n{tail}")

    def pids(self) -> list[psutil.Process]:
        """Every live process started here, and their descendants."""
        found = []
        for p in self.procs.values():
            if p.poll() is not None:
                continue  # ended and reaped: its pid may be another process's by now
            try:
                proc = psutil.Process(p.pid)
                found += [proc, *proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return found

    def stop_one(self, name: str, timeout: float = 20.0) -> None:
        """SIGTERM the process group of `name`; SIGKILL it after `timeout` seconds."""
        self._signal(name, signal.SIGTERM)
        self._reap(name, timeout)

    def _signal(self, name: str, sig: int) -> None:
        if self.procs[name].poll() is None:
            try:
                os.killpg(self.procs[name].pid, sig)
            except ProcessLookupError:
                pass

    def _reap(self, name: str, timeout: float) -> None:
        try:
            self.procs[name].wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(name, signal.SIGKILL)
            self.procs[name].wait()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every process group (the last started first), SIGKILL what is left after
        `timeout` seconds, kill any descendant still alive, then let the watchdog go."""
        everyone = self.pids()
        names = list(reversed(self.procs))
        for name in names:
            self._signal(name, signal.SIGTERM)
        for name in names:
            self._reap(name, timeout)
        for proc in everyone:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(everyone, timeout=10)
        if self.watchdog:
            self.watchdog.stdin.close()  # end of file: it finds nothing left and exits
            self.watchdog.wait(30)
            self.watchdog = None
