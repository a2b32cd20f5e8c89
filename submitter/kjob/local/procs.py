"""The processes of one local run, found by their session id.

A local run starts in a session of its own (the waiter is the session leader). OpenMPI's
launcher puts every rank in a process group of its own, so the process group of the
waiter does not hold the ranks, but the session does: `setpgid` cannot leave a session.
"Is the run alive?" and "stop the run" therefore look at every process of the session.
On systems without /proc (macOS) the process group of the leader stands in for it.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from kjob.names import MPI_LAUNCHERS

PROC = Path("/proc")


@dataclass
class Proc:
    pid: int
    sid: int
    state: str  # one letter from /proc/<pid>/stat: R, S, D, Z (zombie), ...
    cmdline: list[str]


def _read_stat(pid_dir: Path) -> tuple[str, int] | None:
    """(state, session id) of one process, or None when it vanished meanwhile."""
    try:
        raw = (pid_dir / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[3])


def session_processes(sid: int) -> list[Proc]:
    """Every live (non-zombie) process of session `sid`; empty when none is left."""
    if not PROC.is_dir():
        return _group_fallback(sid)
    found = []
    for pid_dir in PROC.iterdir():
        if not pid_dir.name.isdigit():
            continue
        stat = _read_stat(pid_dir)
        # A zombie has finished; counting it would keep a dead run "Running" when its
        # parent (e.g. a container's PID 1) never reaps it.
        if stat is None or stat[1] != sid or stat[0] == "Z":
            continue
        try:
            cmdline = (pid_dir / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        found.append(Proc(int(pid_dir.name), sid, stat[0], [c for c in cmdline if c]))
    return sorted(found, key=lambda p: p.pid)


def _group_fallback(pgid: int) -> list[Proc]:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return []
    return [Proc(pgid, pgid, "?", [])]


def process_env(pid: int, key: str) -> str | None:
    """One environment variable of a process of ours (e.g. OMPI_COMM_WORLD_RANK), if readable."""
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    prefix = key.encode() + b"="
    for item in raw.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors="replace")
    return None


def signal_session(sid: int, sig: int) -> int:
    """Send `sig` to every process of the session; returns how many were signalled."""
    procs = session_processes(sid)
    if not PROC.is_dir():
        try:
            os.killpg(sid, sig)
        except ProcessLookupError:
            return 0
        return len(procs)
    sent = 0
    for proc in procs:
        try:
            os.kill(proc.pid, sig)
            sent += 1
        except ProcessLookupError:
            pass
    return sent


# After the launcher's grace: how long the SIGTERM phase waits before SIGKILL.
TERM_GRACE_S = 5.0


def stop_session(sid: int, grace: float, *, checkpoint: bool = True) -> int:
    """Stop every process of the session: SIGUSR1 to mpirun (the ranks checkpoint and
    stop) and up to `grace` seconds for that, then SIGTERM to all, then SIGKILL.
    Without `checkpoint`: SIGTERM at once, SIGKILL after TERM_GRACE_S.

    Returns how many processes were running when the stop began; returns only when none
    is left (or after a further 10 s when something ignores even SIGKILL, e.g. stuck in
    the kernel).
    """
    procs = session_processes(sid)
    if not procs:
        return 0
    launchers = [p.pid for p in procs if p.cmdline and os.path.basename(p.cmdline[0]) in MPI_LAUNCHERS] if checkpoint else []
    for pid in launchers:
        try:
            os.kill(pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass
    if launchers and _wait_gone(sid, grace):
        return len(procs)
    signal_session(sid, signal.SIGTERM)
    # No mpirun to ask: SIGTERM is the ranks' checkpoint signal, so it gets the grace.
    if _wait_gone(sid, grace if checkpoint and not launchers else TERM_GRACE_S):
        return len(procs)
    signal_session(sid, signal.SIGKILL)
    _wait_gone(sid, 10.0)
    return len(procs)


def _wait_gone(sid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while session_processes(sid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True
