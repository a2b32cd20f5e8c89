"""`python -m kjob_trainer.launch -- mpirun ARGS...`: run mpirun so that a SIGTERM checkpoints.

In an MPIJob the launcher container's PID 1 gets the pod's SIGTERM (kubectl delete, Kueue
preemption, a node drain). OpenMPI's mpirun answers SIGTERM by killing the ranks within
about a second, before the trainer can save; SIGUSR1 it forwards to every rank, and the
trainer takes that as "finish the step, rank 0 saves a checkpoint, exit 143". So this
wrapper starts the command as its child and:

- on the first SIGTERM or SIGINT sends SIGUSR1 to the child, and says so on stderr;
- on a later one passes that signal on (an impatient stop: mpirun's own quick kill);
- on SIGUSR1 passes it on (what `kjob delete` sends to PID 1);
- exits with the child's exit code (killed by signal N: 128+N).

Usage errors (no command, a command that cannot be started) are one `Error: ...` line and
exit 2. Standard library only: it runs in both the PyTorch and the MindSpore images.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Sequence

from kjob_trainer.errors import BadInput

USAGE = "usage: python -m kjob_trainer.launch -- COMMAND [ARG...]"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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

    def _send(self, sig: int) -> None:
        if self.child is None:
            self.pending.append(sig)
        else:
            self.child.send_signal(sig)  # a no-op once the child has exited

    def _say(self, text: str) -> None:
        print(f"kjob launch: {text}", file=sys.stderr, flush=True)


def parse_command(argv: Sequence[str]) -> list[str]:
    """The command after `--`. Raises BadInput when there is none."""
    if not argv or argv[0] != "--" or len(argv) < 2:
        raise BadInput(f"no command to run ({USAGE})")
    return list(argv[1:])


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if list(argv[:1]) in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    try:
        command = parse_command(argv)
        relay = Relay(os.path.basename(command[0]))
        # Set before the child starts: a signal that comes before it exists waits in
        # relay.pending instead of killing this process (or, as PID 1, being ignored).
        for sig in (*STOP_SIGNALS, signal.SIGUSR1):
            signal.signal(sig, relay.on_signal)
        try:
            child = subprocess.Popen(command)
        except OSError as e:  # not found, not executable
            raise BadInput(f"cannot run {command[0]}: {e.strerror or e}") from e
    except BadInput as e:
        print(f"Error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    relay.started(child)
    code = child.wait()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
