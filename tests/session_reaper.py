"""The reaper of one test session's leftovers: every process that still carries the
session's mark once the session is gone, however it ended (normally, SIGKILL, `timeout`).

    python session_reaper.py --owner PID --mark TOKEN

tests/conftest.py starts one per pytest session, in a session of its own, and puts
`KJOB_TEST_SESSION=TOKEN` into the session's environment, so every process a test starts
inherits the mark: a detached `kjob submit --local` (its waiter, mpirun and ranks, which
leave the test's process group on purpose), a launch wrapper, an mpirun of the trainer's
tests. The control planes' own watchdog (tests/cluster/watchdog.py) ends their processes
by group; this one finds the rest by their environment, which no `setsid` sheds.

Without it, a killed session's detached local runs (1000 epochs in some tests) trained on
for hours and spoiled every later timing on the machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

MARK = "KJOB_TEST_SESSION"
POLL_S = 0.5
GRACE_S = 2.0


def marked(token: str) -> dict[int, int]:
    """pid -> start time (jiffies) of every process whose environment carries the mark."""
    needle = f"{MARK}={token}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            # field 22 of stat, after the parenthesised command (which may hold spaces)
            stat = (entry / "stat").read_text()
            found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[19])
        except (OSError, ValueError, IndexError):
            continue  # gone, a zombie, or not ours to read
    return found


def signal_marked(token: str, known: dict[int, int], sig: int) -> dict[int, int]:
    """Send `sig` to each marked process (only if it is the one seen: same start time);
    returns what is still marked and running."""
    now = marked(token)
    for pid, started in now.items():
        if known.get(pid, started) != started:
            continue
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    return now


def reap(token: str) -> int:
    """TERM every marked process, then KILL what remains after GRACE_S; returns how many
    there were."""
    first = marked(token)
    if not first:
        return 0
    signal_marked(token, first, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while marked(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    signal_marked(token, first, signal.SIGKILL)
    return len(first)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--owner", type=int, required=True, help="the test session's pid")
    ap.add_argument("--mark", required=True, help=f"the value of {MARK} in that session")
    args = ap.parse_args()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the session, not this
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while os.getppid() == args.owner:
        time.sleep(POLL_S)
    count = reap(args.mark)
    if count:
        print(f"session reaper of {args.owner}: ended {count} process(es) the session left running",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
