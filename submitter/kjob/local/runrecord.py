"""The record of a local run: RUN_DIR/run.json (command, pid/pgid/sid, host, started,
finished, exit code, spec hash), written by `kjob submit --local` and by the waiter.

An flock on RUN_DIR/.run.lock keeps their updates from mixing; every write replaces the
file whole, so a reader never sees half of it.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

RUN_FILE = "run.json"
LOCK_FILE = ".run.lock"
LOG_FILE = "train.log"  # where the run's stdout and stderr go (all ranks, and mpirun)
RECORD_FORMAT = "kjob-local-run/v1"


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextmanager
def _locked(run_dir: Path):
    with open(run_dir / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_run(run_dir: Path) -> dict | None:
    """run.json as a dict; None when the folder has none. Raises ValueError when unreadable."""
    try:
        text = (run_dir / RUN_FILE).read_text()
    except FileNotFoundError:
        return None
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("run.json is not a JSON object")
    return data


def write_run(run_dir: Path, record: dict) -> None:
    """Write run.json whole (temp file + fsync + rename: a reader never sees half of it)."""
    tmp = run_dir / f".tmp-{RUN_FILE}.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run_dir / RUN_FILE)


def update_run(run_dir: Path, **fields) -> dict:
    """Merge `fields` into run.json under the lock; returns the new record.

    Raises FileNotFoundError when the run folder is gone (the run was deleted).
    """
    with _locked(run_dir):
        record = read_run(run_dir) or {}
        record.update(fields)
        write_run(run_dir, record)
        return record
