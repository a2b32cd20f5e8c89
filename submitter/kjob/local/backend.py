"""The local backend: a LocalPlan (the job's own mpirun command) run on this machine.

`kjob submit SPEC --local` starts the plan's command (kjob.plan.local_plan, built from
the same functions that write the cluster manifests) detached, in a session of its own,
under a small waiter (kjob.local.waiter), and records the run in ./kjob-runs/<name>/:

    run.json       command, pid/pgid/sid, host, started, finished, exit_code, spec hash
    train.log      everything mpirun wrote (stdout and stderr of every rank)
    checkpoints/   the trainer's checkpoints (the run folder is its --output-path)
    mpi-session/   mpirun's session files (its own, not /tmp: see kjob.local.waiter)

status/list/logs/delete/fetch-ckpt answer from that folder with the same shapes as
the cluster backend. Decisions (README "Local runs"):
- Ctrl-C during `--follow` (or `logs -f`) detaches; the run goes on.
- `delete` stops every process of the run (SIGUSR1 to mpirun: a checkpoint; then SIGTERM,
  then SIGKILL) and
  removes the run folder but keeps checkpoints/ - as a cluster keeps its checkpoint PVC,
  so a later submit of the same spec resumes from them (`--resume auto`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from kjob.backend import FINAL_STATES, FetchOptions, JobStatus, LogOptions, PodInfo, finished_conflict
from kjob.errors import ClusterUnavailable, Conflict, InvalidInput, JobFailed, NotFound
from kjob.local import procs
from kjob.local.runrecord import LOG_FILE, RECORD_FORMAT, now_rfc3339, read_run, write_run
from kjob.names import LOCAL_STOP_GRACE_S, TRAINER_MODULE
from kjob.plan import LocalPlan, runs_root
from kjob.transfer.index import verify_and_copy_local

# Spec names are DNS-1123 labels; anything else is refused before it becomes a path.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# How often following checks for new log bytes / the end of the run.
POLL_S = 0.25


class LocalBackend:
    """Backend for runs of this machine under ./kjob-runs (or `root`)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = runs_root(root)

    # -- submitting --------------------------------------------------------------

    def submit(self, plan: LocalPlan, *, replace: bool = False, follow: bool = False, wait: bool = False,
               write: Callable[[str], None] = print) -> int:
        """Start the plan's command on this machine under mpirun, detached; with `follow`,
        stream its log to the end. Returns the CLI's exit code: 0, or 130 when Ctrl-C
        detached from following. `wait` has no meaning here (a local run is watched by
        following it).

        The same spec submitted again while it runs is a no-op that says so.
        Raises Conflict (a finished run or one with a different spec holds the name;
        `replace` stops and replaces it), JobFailed (a followed run failed),
        ClusterUnavailable (the run could not be started).
        """
        name, run_dir = plan.name, self.run_dir(plan.name)
        if run_dir != plan.run_dir:
            raise InvalidInput(f"the plan of local run {name} is for {plan.run_dir}, not {run_dir}")
        try:
            existing = read_run(run_dir)
        except (ValueError, OSError):
            existing = {"spec_hash": None, "exit_code": -1}  # unreadable: a run we cannot judge
        if existing is not None:
            current = self._status(name, existing)
            state = current.state
            if state in FINAL_STATES and not replace:
                raise finished_conflict(f"local run {name}", state, current.finished, replace="--local --replace")
            running = state in ("Created", "Running")
            if running and existing.get("spec_hash") == plan.spec_hash and not replace:
                write(f"local run {name} is already running with this spec (session {existing.get('sid')}); nothing to do")
                return _follow(self, name, write) if follow else 0
            if not replace:
                why = "is running with a different spec" if running else (
                    f"exists ({state})" + ("" if existing.get("spec_hash") == plan.spec_hash else " with a different spec"))
                raise Conflict(f"local run {name} {why} in {_show(run_dir)}",
                               hint=f"--replace stops and replaces it (checkpoints are kept and resumed from), "
                                    f"or: kjob delete {name} --local")
            self.delete(name)
        _start(plan)
        write(f"started local run {name}: {plan.processes} processes, log {_show(run_dir / LOG_FILE)}")
        if not follow:
            write(f"follow it: kjob logs {name} --local -f    stop it: kjob delete {name} --local")
            return 0
        return _follow(self, name, write)

    # -- reading a run -------------------------------------------------------------

    def run_dir(self, name: str) -> Path:
        """The folder of run `name`. Raises InvalidInput for a name that is not a job
        name (a path like '../x' must never reach rmtree)."""
        if not _NAME.fullmatch(name):
            raise InvalidInput(f"{name!r} is not a job name (lowercase letters, digits and '-')")
        return self.root / name

    def _record(self, name: str) -> dict:
        """run.json of a run; raises NotFound when there is no such run."""
        try:
            record = read_run(self.run_dir(name))
        except (ValueError, OSError) as e:
            raise InvalidInput(f"{self.run_dir(name) / 'run.json'}: unreadable ({e})") from e
        if record is None:
            raise NotFound(f"local run {name!r} not found in {self.root}", hint="kjob list --local shows the local runs")
        return record

    def status(self, name: str) -> JobStatus:
        """The run's state from run.json and its processes. Raises NotFound."""
        return self._status(name, self._record(name))

    def _status(self, name: str, record: dict) -> JobStatus:
        state, message = _state(record, self.run_dir(name))
        return JobStatus(
            name=name,
            namespace=None,
            kind="LocalRun",
            state=state,
            message=message,
            workers=int(record.get("processes") or 0),
            gpus_per_worker=int(record.get("gpus_per_process") or 0),
            image=None,
            created=record.get("started"),
            started=record.get("started"),
            finished=record.get("finished"),
            exit_code=record.get("exit_code"),
            pods=_pods(record, state),
        )

    def list_jobs(self, all_namespaces: bool = False) -> list[JobStatus]:
        """Every run under the runs folder, by name (namespaces do not apply locally)."""
        if not self.root.is_dir():
            return []
        out = []
        for run_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            try:
                record = read_run(run_dir)
            except (ValueError, OSError):
                continue
            if record is not None:
                out.append(self._status(run_dir.name, record))
        return out

    # -- acting on a run -----------------------------------------------------------

    def delete(self, name: str, wait: bool = False, grace: float | None = None, now: bool = False) -> str:
        """Stop every process of the run and remove its folder, keeping checkpoints/.

        Always waits for the processes to end: SIGUSR1 to mpirun and `grace` seconds
        (default names.LOCAL_STOP_GRACE_S) for a checkpoint, unless `now`; then SIGTERM, SIGKILL.
        Nothing runs on after the folder is gone. Raises NotFound.
        """
        record = self._record(name)
        stopped = 0
        # Also after an exit code: a rank that outlived mpirun would hold the session.
        if record.get("sid") and _same_host(record):
            stopped = procs.stop_session(int(record["sid"]), LOCAL_STOP_GRACE_S if grace is None else grace, checkpoint=not now)
        kept = _remove_run_folder(self.run_dir(name))
        what = f"stopped {stopped} process(es)" if stopped else "no process was running"
        if kept:
            return (f"deleted local run {name} ({what}); its checkpoints stay in {_show(kept)} "
                    f"(rm -r {_show(kept.parent)} removes them)")
        return f"deleted local run {name} ({what})"

    def logs(self, name: str, options: LogOptions, write: Callable[[str], None]) -> str | None:
        """Write train.log's lines; with follow, until the run ends (returns its state).

        Raises NotFound, InvalidInput for options a local run has no meaning for.
        """
        self._record(name)
        _check_log_options(options)
        log = self.run_dir(name) / "train.log"
        offset = _write_tail(log, options.tail, write)
        if options.save_dir is not None and log.is_file():
            options.save_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, options.save_dir / f"{name}.log")
        if not options.follow:
            return None
        return self.follow(name, write, offset)

    def follow(self, name: str, write: Callable[[str], None], offset: int = 0) -> str:
        """Stream train.log from byte `offset` until the run ends; returns the final state."""
        log = self.run_dir(name) / "train.log"
        pending = b""
        while True:
            chunk = _read_from(log, offset)
            offset += len(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                write(line.decode(errors="replace"))
            if chunk:
                continue
            state = self.status(name).state
            if state in FINAL_STATES or state == "Unknown":
                # The waiter records the end only after mpirun exited: the log is complete.
                rest = _read_from(log, offset)
                for line in (pending + rest).decode(errors="replace").splitlines():
                    write(line)
                return state
            time.sleep(POLL_S)

    def fetch_checkpoints(self, name: str, options: FetchOptions) -> list[dict]:
        """Copy (or list) the run's checkpoints, sha256-verified. Raises NotFound,
        VerificationFailed (nothing left at the final path of a file that failed),
        InvalidInput (a differing file in dest without --overwrite)."""
        ckpt_dir = self.run_dir(name) / "checkpoints"
        if not ckpt_dir.is_dir():
            self._record(name)  # NotFound for an unknown run, before "no checkpoints"
        return verify_and_copy_local(ckpt_dir, options)


# -- state of a run ----------------------------------------------------------------


def _same_host(record: dict) -> bool:
    return record.get("host") in (None, socket.gethostname())


def _state(record: dict, run_dir: Path) -> tuple[str, str | None]:
    code = record.get("exit_code")
    if code is not None:
        if code == 0:
            return "Succeeded", None
        if record.get("stopped_by"):
            return "Failed", f"stopped by {record['stopped_by']} (exit code {code})"
        return "Failed", _failure_message(f"exit code {code}", run_dir)
    if not _same_host(record):
        return "Unknown", f"the run was started on host {record.get('host')}, this is {socket.gethostname()}"
    if not record.get("sid"):
        return "Created", "starting"
    alive = procs.session_processes(int(record["sid"]))
    if alive:
        return "Running", f"{len(alive)} process(es) in session {record['sid']}"
    # Never "Running forever": no process left and no exit code means it was killed
    # (SIGKILL of the whole run, OOM killer, reboot) before the waiter could record it.
    return "Failed", _failure_message("the processes ended without recording an exit code (killed?)", run_dir)


def _failure_message(head: str, run_dir: Path) -> str:
    last = _last_line(run_dir / "train.log")
    return f"{head}; last log line: {last}" if last else head


def _last_line(log: Path, limit: int = 200) -> str | None:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    # mpirun closes a failed job with a box of its own text; the rank's error line above
    # it says more, so prefer the last line that names an error.
    lines = [ln for ln in lines if any(c.isalnum() for c in ln)]
    errors = [ln for ln in lines if "error" in ln.lower()]
    pick = errors or lines
    return pick[-1][:limit] if pick else None


def _pods(record: dict, state: str) -> list[PodInfo]:
    """The launcher, and while running each trainer rank (from OMPI_COMM_WORLD_RANK)."""
    host = record.get("host")
    phase = {"Succeeded": "Succeeded", "Failed": "Failed", "Running": "Running"}.get(state, "Pending")
    pods = [PodInfo(name=f"mpirun (pid {record.get('launcher_pid') or record.get('pid')})", replica="launcher",
                    phase=phase, ready=state == "Running", node=host)]
    if state != "Running":
        return pods
    for proc in procs.session_processes(int(record["sid"])):
        # mpirun's own command line names the trainer too; only a rank has a rank.
        rank = procs.process_env(proc.pid, "OMPI_COMM_WORLD_RANK")
        if rank is not None and TRAINER_MODULE in proc.cmdline:
            pods.append(PodInfo(name=f"rank {rank} (pid {proc.pid})", replica=f"rank-{rank}", phase="Running", ready=True, node=host))
    return pods


# -- logs ----------------------------------------------------------------------------


def _check_log_options(options: LogOptions) -> None:
    if options.replica not in (None, "launcher"):
        raise InvalidInput(f"--replica {options.replica}: a local run has one log (mpirun's, all ranks); leave --replica out")
    if options.previous:
        raise InvalidInput("--previous: a local run has no previous container; its log is train.log")
    if options.since_seconds is not None or options.timestamps:
        raise InvalidInput("--since/--timestamps: the lines of a local run carry no timestamps; use --tail")


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(1 << 20)
    except FileNotFoundError:
        return b""


def _write_tail(log: Path, tail: int | None, write: Callable[[str], None]) -> int:
    """Write the whole log (or its last `tail` lines) up to its last newline; returns
    the offset where following goes on."""
    try:
        data = log.read_bytes()
    except FileNotFoundError:
        return 0
    end = data.rfind(b"\n") + 1
    lines = data[:end].decode(errors="replace").splitlines()
    if tail is not None:
        lines = lines[-tail:] if tail > 0 else []
    for line in lines:
        write(line)
    return end


def _remove_run_folder(run_dir: Path) -> Path | None:
    """Remove the run folder except a non-empty checkpoints/; returns that folder if kept."""
    ckpt = run_dir / "checkpoints"
    keep = ckpt.is_dir() and any(ckpt.iterdir())
    if not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
        return None
    for child in run_dir.iterdir():
        if child == ckpt:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    return ckpt


# -- submit --------------------------------------------------------------------------


def _start(plan: LocalPlan) -> None:
    """Record the run, then start the waiter detached (it forks into the background and
    its first process exits at once, so the run is nobody's child). Raises
    ClusterUnavailable (exit 3: this machine could not start the run) and leaves no
    record behind then."""
    run_dir = plan.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "format": RECORD_FORMAT, "name": plan.name, "spec_hash": plan.spec_hash, "command": plan.argv,
        "cwd": str(Path.cwd()), "host": socket.gethostname(), "processes": plan.processes,
        "gpus_per_process": plan.gpus_per_process, "started": now_rfc3339(),
        "finished": None, "exit_code": None, "stopped_by": None, "pid": None, "pgid": None, "sid": None,
    }
    write_run(run_dir, record)
    env = dict(os.environ, **plan.env)
    try:
        with open(run_dir / LOG_FILE, "ab") as log:
            subprocess.run(
                [sys.executable, "-m", "kjob.local.waiter", "--detach", str(run_dir.resolve()), "--", *plan.argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, timeout=60, check=True,
            )
    except (OSError, subprocess.SubprocessError) as e:
        for leftover in ("run.json", LOG_FILE, ".run.lock"):
            (run_dir / leftover).unlink(missing_ok=True)
        raise ClusterUnavailable(f"cannot start the local run {plan.name}: {e}") from e


def _follow(backend: LocalBackend, name: str, write: Callable[[str], None]) -> int:
    """Stream the run's log until it ends; Ctrl-C detaches and leaves the run going."""
    try:
        state = backend.follow(name, write)
    except KeyboardInterrupt:
        print(f"detached from local run {name}; it keeps running: kjob logs {name} --local -f  |  "
              f"kjob delete {name} --local", file=sys.stderr)
        return 130
    status = backend.status(name)
    if state != "Succeeded":
        raise JobFailed(f"local run {name} {state}: {status.message}", hint=f"the whole log: {_show(backend.run_dir(name) / 'train.log')}")
    for line in _outputs(backend.run_dir(name)):
        write(line)
    return 0


def _outputs(run_dir: Path) -> list[str]:
    """Where a finished run put its results: the latest checkpoint and the curves."""
    lines = [f"local run {run_dir.name} Succeeded"]
    try:
        index = json.loads((run_dir / "checkpoints" / "index.json").read_text())
        latest = index.get("latest")
    except (OSError, ValueError, AttributeError):
        latest = None
    if latest:
        lines.append(f"  checkpoint: {_show(run_dir / 'checkpoints' / latest)}")
    for png in sorted(run_dir.rglob("*.png")):
        lines.append(f"  curves:     {_show(png)}")
    lines.append(f"  log:        {_show(run_dir / 'train.log')}")
    return lines


def _show(path: Path) -> str:
    """A path as the user would type it: relative to the current folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
