"""PID 1 of the PID and mount namespace that kwok runs in (the harness starts it as
`unshare --pid --fork --mount-proc --kill-child -- python pid1.py ...`).

kwok's ClusterExec/Exec runs `kubectl exec` commands as processes on this machine. kjob's
`kill -USR1 1` must not reach the machine's init, so kwok and everything it runs live in
their own PID namespace whose PID 1 is this stand-in for the container's PID 1 (mpirun
under kjob_trainer.launch in a real launcher). It:

- records every SIGUSR1 it gets as one line in --signals (a test reads it), and every
  SIGTERM or SIGINT sent from inside the namespace (an exec'd `kill -TERM 1`: kjob's
  delete of a torch TrainJob) likewise, instead of passing it on: kwok would stop;
- bind-mounts --bind SRC:DST pairs in this mount namespace only, so an exec'd
  `tar -C /checkpoints/job/checkpoints ...` sees the claim's directory at the path the
  pod mounts it (DST is created on this machine when missing, empty, and never written);
- starts the command after `--`, reaps every orphan (an init's duty), passes SIGTERM and
  SIGINT on to the command and exits with its status. When it exits, the kernel kills
  whatever is left in the namespace: nothing outlives the harness.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--signals", required=True)
    ap.add_argument("--bind", action="append", default=[])
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if os.getpid() != 1:
        print("pid1.py: not PID 1 of a new PID namespace; refusing to run", file=sys.stderr)
        return 2
    for pair in args.bind:
        src, dst = pair.split(":", 1)
        os.makedirs(src, exist_ok=True)
        os.makedirs(dst, exist_ok=True)
        subprocess.run(["mount", "--bind", src, dst], check=True)

    def record(signum) -> None:
        with open(args.signals, "a") as f:
            f.write(f"{signal.Signals(signum).name}\n")

    # The signals are taken with sigwaitinfo, which tells who sent each. A handler stays
    # installed for each: the kernel drops a signal sent to a namespace's init from inside
    # it when the init leaves it at SIG_DFL.
    handled = {signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
    for signum in handled:
        signal.signal(signum, lambda *_: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    child = subprocess.Popen(command, preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, handled))
    while True:
        info = signal.sigwaitinfo(handled)
        if info.si_signo == signal.SIGUSR1 or (info.si_signo != signal.SIGCHLD and info.si_pid != 0):
            record(info.si_signo)
        elif info.si_signo != signal.SIGCHLD:
            child.send_signal(info.si_signo)
        while True:  # reap every exited process; SIGCHLDs arriving together are one
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid == 0:
                break
            if pid == child.pid:
                return os.waitstatus_to_exitcode(status) & 0xFF


if __name__ == "__main__":
    sys.exit(main())
