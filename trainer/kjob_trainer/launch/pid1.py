"""`python -m kjob_trainer.launch [--hold] -- COMMAND`: PID 1 of an MPIJob pod, so that a SIGTERM checkpoints.

In an MPIJob the launcher container's PID 1 gets the pod's SIGTERM (kubectl delete, Kueue
preemption, a node drain). OpenMPI's mpirun answers SIGTERM by killing the ranks within
about a second, before the trainer can save; SIGUSR1 it forwards to every rank, and the
trainer takes that as "finish the step, rank 0 saves a checkpoint, exit 143". So there
(`-- mpirun ...`) this wrapper starts the command as its child and:

- on the first SIGTERM or SIGINT sends SIGUSR1 to the child, and says so on stderr;
- on a later one passes that signal on (an impatient stop: mpirun's own quick kill);
- on SIGUSR1 passes it on (what `kjob delete` sends to PID 1);
- exits with the child's exit code (killed by signal N: 128+N).

A worker's PID 1 is sshd, and mpirun's daemon and the ranks run in its ssh sessions. When
the whole job goes (kubectl delete, Kueue preemption) every pod gets SIGTERM at once: sshd
would exit at once and, as PID 1, take the ranks with it before rank 0 has saved. With
`--hold` (`-- /usr/sbin/sshd -De ...`) the wrapper keeps the first SIGTERM or SIGINT from
the child until no process runs under it any more (the sessions end once mpirun on the
launcher has stopped, after the checkpoint) or `--hold-limit` seconds have passed, then
passes it on; with nothing running under the child, or on a second stop signal, at once.
When it starts holding it also sends SIGUSR1 to the MPI ranks under it: a worker may be
stopped alone (a drain, an eviction), and the job cannot go on without it, so its ranks ask
for the checkpoint themselves (the trainer agrees on a stop across all ranks). It says on
stderr when it starts holding and when it lets go. SIGUSR1 to the wrapper is not passed on.

In front of `mpirun --hostfile FILE ...` (the launcher) it first waits, bounded and logged,
until every host of FILE accepts ssh (ssh_hosts.py): a restarted launcher must not spend the
job's retries on a replacement worker whose sshd is not up yet. It also hands every rank
rank 0's host, FILE's first (`mpirun -x KJOB_RENDEZVOUS_HOST=...`): only the launcher pod
has the hostfile.

As PID 1 it also reaps every process that ends under it: a session process whose parent
exited is re-parented to PID 1, and nothing else would collect it.

Usage errors (no command, a command that cannot be started) are one `Error: ...` line and
exit 2. Standard library only: it runs in both the PyTorch and the MindSpore images.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from typing import Sequence

from kjob_trainer.common.errors import BadInput
from kjob_trainer.common.distributed import RENDEZVOUS_VARIABLE
from kjob_trainer.launch.ssh_hosts import hostfile_of, read_hosts, wait_for_hosts, with_rendezvous_host

USAGE = "usage: python -m kjob_trainer.launch [--hold [--hold-limit SECONDS]] -- COMMAND [ARG...]"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The worker pods get 120 s from SIGTERM to SIGKILL (terminationGracePeriodSeconds, the
# submitter's render.TERMINATION_GRACE_S, which passes TERMINATION_GRACE_S - 10 as
# --hold-limit): letting go 10 s before leaves sshd time to stop.
HOLD_LIMIT_S = 110.0
# How often the main loop looks at the held child's processes.
POLL_S = 0.2
# The exit code of a job stopped before its command started: 128 + SIGTERM, as a stopped
# trainer's.
STOPPED_CODE = 143
# What OpenMPI puts in the environment of every rank it starts (and what the processes
# a rank starts inherit): how a rank is told from the daemons and shells above it.
RANK_VARIABLE = b"OMPI_COMM_WORLD_RANK="


class Relay:
    """Signal handler that turns the first stop signal into SIGUSR1 for the child. Signals
    that arrive before the child exists are kept and sent once it does."""

    def __init__(self, name: str):
        self.name = name  # the command's name, for the stderr line
        self.child: subprocess.Popen | None = None
        self.pending: list[int] = []
        self.stopping = False

    def on_signal(self, signum: int, frame=None) -> None:
        sig = signal.Signals(signum)
        if sig in STOP_SIGNALS and not self.stopping:
            self.stopping = True
            self._say(f"{sig.name} -> SIGUSR1 to {self.name} (checkpoint and stop)")
            sig = signal.SIGUSR1
        elif sig in STOP_SIGNALS:
            self._say(f"{sig.name} again -> {sig.name} to {self.name} (stop now, no checkpoint)")
        self._send(sig)

    def started(self, child: subprocess.Popen) -> None:
        self.child = child
        while self.pending:
            self._send(self.pending.pop(0))

    def poll(self) -> None:
        """Called by the main loop every POLL_S: nothing to do between signals."""

    def _send(self, sig: int) -> None:
        if self.child is None:
            self.pending.append(sig)
        else:
            self.child.send_signal(sig)  # a no-op once the child has exited

    def _say(self, text: str) -> None:
        print(f"kjob launch: {text}", file=sys.stderr, flush=True)


class Hold(Relay):
    """Signal handler for --hold: keeps the first stop signal from the child while processes
    run under it, for at most `limit` seconds. The handler only queues; poll() decides, in
    the main loop, so that a second signal cannot interrupt a decision half made."""

    def __init__(self, name: str, limit: float):
        super().__init__(name)
        self.limit = limit
        self.queued: list[signal.Signals] = []
        self.held: signal.Signals | None = None  # the first stop signal, from `since`
        self.since = 0.0
        self.holding = False  # said so on stderr

    def on_signal(self, signum: int, frame=None) -> None:
        # SIGUSR1 is dropped: sshd has no handler and would die of it (as PID 1, the
        # kernel dropped it too).
        if signum in STOP_SIGNALS:
            self.queued.append(signal.Signals(signum))

    def poll(self) -> None:
        while self.queued:
            sig = self.queued.pop(0)
            if self.held is None:
                self.held, self.since = sig, time.monotonic()
            elif not self.stopping:
                self._let_go(f"{sig.name} again after {time.monotonic() - self.since:.0f} s", sig)
        if self.held is None or self.stopping:
            return
        parents = process_parents()
        running = len(processes_under(os.getpid(), parents) - {self.child.pid})
        waited = time.monotonic() - self.since
        if not running:
            self._let_go(f"sessions ended after {waited:.0f} s" if self.holding else f"{self.held.name}, no sessions")
        elif waited >= self.limit:
            self._let_go(f"hold limit of {self.limit:g} s reached ({_processes(running)} left)")
        elif not self.holding:
            self.holding = True
            self._say(f"{self.held.name} -> kept from {self.name} until nothing runs under it "
                      f"({_processes(running)} now, at most {self.limit:g} s)")
            self._ask_ranks_to_stop(parents)

    def _ask_ranks_to_stop(self, parents: dict[int, int]) -> None:
        """SIGUSR1 to the MPI ranks under this wrapper (the trainer): checkpoint and stop."""
        ranks = trainer_ranks(processes_under(os.getpid(), parents), parents)
        for pid in ranks:
            try:
                os.kill(pid, signal.SIGUSR1)
            except OSError:  # it ended meanwhile
                continue
        if ranks:
            self._say(f"SIGUSR1 to the {len(ranks)} trainer rank(s) under it (checkpoint and stop)")

    def _let_go(self, why: str, sig: signal.Signals | None = None) -> None:
        sig = self.held if sig is None else sig
        self.stopping = True
        self._say(f"{why} -> {sig.name} to {self.name}")
        self._send(sig)


def processes_under(pid: int, parents: dict[int, int] | None = None) -> set[int]:
    """The live processes descended from `pid`, from `parents` (process_parents() when not
    given). Counted from this wrapper rather than its child because in a pod the wrapper is
    PID 1: a session process whose parent exited is re-parented to it."""
    parents = process_parents() if parents is None else parents
    under, level = set(), {pid}
    while level:
        level = {p for p, parent in parents.items() if parent in level}
        under |= level
    return under


def process_parents() -> dict[int, int]:
    """{pid: parent pid} of the live processes (zombies left out), from /proc/PID/stat,
    which works inside a pod's PID namespace."""
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:  # it ended meanwhile
                continue
            state, ppid = stat[stat.rindex(")") + 2:].split()[:2]  # the name in (...) may hold anything
            if state not in ("Z", "X"):
                parents[int(name)] = int(ppid)
    return parents


def trainer_ranks(pids: set[int], parents: dict[int, int]) -> list[int]:
    """The MPI ranks among `pids`: processes OpenMPI started (RANK_VARIABLE in their
    environment) whose parent it did not start, which leaves out what a rank starts itself
    (data-loader workers, MindSpore's scheduler): they inherit the variable."""
    def in_job(pid: int | None) -> bool:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                return any(v.startswith(RANK_VARIABLE) for v in f.read().split(b"\0"))
        except OSError:  # ended meanwhile, or not ours to read
            return False

    return sorted(p for p in pids if in_job(p) and not in_job(parents.get(p)))


def _processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def parse_args(argv: Sequence[str]) -> tuple[list[str], float | None]:
    """(the command after `--`, the hold limit in seconds or None without --hold). Raises
    BadInput when there is no command or an option is unknown or malformed."""
    at = list(argv).index("--") if "--" in argv else len(argv)
    options, command, hold, limit = list(argv[:at]), list(argv[at + 1:]), False, None
    if not command:
        raise BadInput(f"no command to run ({USAGE})")
    while options:
        option = options.pop(0)
        if option == "--hold":
            hold = True
        elif option == "--hold-limit":
            limit = _seconds(options.pop(0) if options else None)
        else:
            raise BadInput(f"unknown option {option} ({USAGE})")
    if limit is not None and not hold:
        raise BadInput("--hold-limit needs --hold")
    if not hold:
        return command, None
    return command, HOLD_LIMIT_S if limit is None else limit


def _seconds(text: str | None) -> float:
    """--hold-limit's value. Raises BadInput unless it is a finite number, 0 or more."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        given = "" if text is None else f", not {text!r}"
        raise BadInput(f"--hold-limit takes a number of seconds (0 or more){given}")
    return value


def reap(child: subprocess.Popen) -> int | None:
    """Collect every process that has ended under this one (as PID 1, orphans too); the
    child's exit code once it has ended (killed by signal N: 128+N), else None."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # nothing left under it
            pid = 0
        if pid == 0:
            return child.returncode
        if pid == child.pid:
            code = os.waitstatus_to_exitcode(status)
            # Recorded on the Popen too, so a late send_signal() cannot reach a reused pid.
            child.returncode = 128 - code if code < 0 else code


def wait_for_ssh(command: list[str], relay: Relay) -> bool:
    """Before `mpirun --hostfile FILE`: wait until FILE's hosts accept ssh. False when a stop
    signal came meanwhile (nothing has started, nothing to checkpoint)."""
    hostfile = hostfile_of(command)
    if hostfile is None or not hostfile.is_file():
        return True
    wait_for_hosts(read_hosts(hostfile), relay._say, stop=lambda: relay.stopping)
    return not relay.stopping


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if list(argv[:1]) in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    try:
        command, hold_limit = parse_args(argv)
        name = os.path.basename(command[0])
        relay = Relay(name) if hold_limit is None else Hold(name, hold_limit)
        # Set before the child starts: a signal that comes before it exists is kept for it
        # instead of killing this process (or, as PID 1, being ignored).
        for sig in (*STOP_SIGNALS, signal.SIGUSR1):
            signal.signal(sig, relay.on_signal)
        if not wait_for_ssh(command, relay):
            relay._say(f"stopped before {name} started")
            return STOPPED_CODE
        try:
            child = subprocess.Popen(with_rendezvous_host(command, RENDEZVOUS_VARIABLE))
        except OSError as e:  # not found, not executable
            raise BadInput(f"cannot run {command[0]}: {e.strerror or e}") from e
    except BadInput as e:
        print(f"Error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    relay.started(child)
    while (code := reap(child)) is None:
        relay.poll()
        time.sleep(POLL_S)
    return code


if __name__ == "__main__":
    sys.exit(main())
