"""`python -m kjob.local.waiter RUN_DIR -- COMMAND...`: run a local job, record how it ended.

`kjob submit --local` detaches: it starts this waiter in a new session and returns. The
waiter starts the job's mpirun as its child, waits, and writes `finished` and
`exit_code` into RUN_DIR/run.json (kjob.local.runrecord), so the result is recorded even
after kjob has exited.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from kjob.local.runrecord import LOG_FILE, now_rfc3339, update_run

# mpirun (OpenMPI 5) keeps its session files in <base>/ompi.<its pid>; one killed by a signal
# leaves that folder behind, and a later mpirun that gets the same pid fails before starting
# any rank with the message below (exit 213). With the machine's default base, /tmp, every
# mpirun ever killed there is such a trap. Each attempt of a run gets its own base, emptied
# first, so no other mpirun's leftovers can reach it.
SESSION_DIR = "mpi-session"
SESSION_BASE_VAR = "PRTE_MCA_prte_tmpdir_base"
# The same message has been reported elsewhere with other causes (an interface whose address
# cannot be read, macOS). Nothing has run then, so the waiter starts the command once more.
TRANSIENT_START_FAILURE = "The PMIx server's listener thread failed to start"
START_ATTEMPTS = 2


def exit_status(returncode: int) -> int:
    """A shell-style exit code: a process killed by signal N reads 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _detach(run_dir: Path) -> None:
    """Fork; the parent exits at once (its caller waits for it), the child goes on as
    nobody's child. The session (its id recorded first) holds every process of the run."""
    update_run(run_dir, sid=os.getsid(0), pgid=os.getpgid(0))
    if os.fork() > 0:
        os._exit(0)
    update_run(run_dir, pid=os.getpid())


def _run(run_dir: Path, command: list[str]) -> int:
    """Run `command` to its end, with RUN_DIR/mpi-session (emptied) as mpirun's session
    base; its exit status (127 when it cannot be started)."""
    session = run_dir / SESSION_DIR
    shutil.rmtree(session, ignore_errors=True)
    try:
        session.mkdir()  # not parents=True: a run folder deleted meanwhile stays deleted
        proc = subprocess.Popen(command, env={**os.environ, SESSION_BASE_VAR: str(session)})
    except OSError as e:
        print(f"kjob: cannot start {command[0]}: {e}", flush=True)
        return 127
    update_run(run_dir, launcher_pid=proc.pid)
    return exit_status(proc.wait())


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _failed_to_start(run_dir: Path, log_offset: int) -> bool:
    """True when what the last attempt wrote to the log says mpirun could not start."""
    try:
        with open(run_dir / LOG_FILE, "rb") as f:
            f.seek(log_offset)
            return TRANSIENT_START_FAILURE.encode() in f.read()
    except OSError:
        return False


def main(argv: list[str]) -> int:
    detach = bool(argv) and argv[0] == "--detach"
    argv = argv[1:] if detach else argv
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m kjob.local.waiter [--detach] RUN_DIR -- COMMAND...", file=sys.stderr)
        return 2
    run_dir, command = Path(argv[0]), argv[2:]
    if detach:
        _detach(run_dir)
    stop = {"signal": None}

    def note(signum, _frame):
        # `kjob delete` signals the whole session, mpirun included; the waiter stays to
        # record how mpirun ended. A Python handler (not SIG_IGN) so the child, after
        # exec, still gets the default action.
        stop["signal"] = signal.Signals(signum).name

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, note)
    for attempt in range(1, START_ATTEMPTS + 1):
        log_size = _size(run_dir / LOG_FILE)
        code = _run(run_dir, command)
        if code == 0 or stop["signal"] or attempt == START_ATTEMPTS or not _failed_to_start(run_dir, log_size):
            break
        print(f"kjob: {command[0]} failed before starting any rank (PMIx listener); starting it again", flush=True)
    try:
        update_run(run_dir, finished=now_rfc3339(), exit_code=code, stopped_by=stop["signal"])
    except FileNotFoundError:
        pass  # the run folder was removed while the job ran: nothing left to record into
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
