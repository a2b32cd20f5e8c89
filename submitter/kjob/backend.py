"""What every backend (a Kubernetes cluster, or this machine under mpirun) offers, and
the shapes it answers in.

The CLI talks only to this interface, so `kjob submit`, `status`, `list`, `logs`,
`delete` and `fetch-ckpt` behave and print alike for a cluster job and a local run. The
implementations are kjob.cluster.backend and kjob.local.backend.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from kjob.errors import Conflict

# One state per job, the same words on both backends.
STATES = ("Created", "Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended", "Unknown")
FINAL_STATES = ("Succeeded", "Failed")


def finished_conflict(job: str, state: str, when: str | None, *, replace: str = "--replace") -> Conflict:
    """The error of a submit over a job that has ended: the same spec would be a no-op
    that never runs it again, so it is a conflict (exit 6) on both backends. `job` names
    it as the backend does ("job smoke", "local run smoke")."""
    at = f" at {when}" if when else ""
    return Conflict(f"{job} {state}{at}; `{replace}` runs it again (resuming from its latest checkpoint)",
                    hint=f"kjob submit {replace} deletes the finished job and submits this spec; kjob status shows how it ended")


@dataclass
class PodInfo:
    """One pod (or local process group) of a job, as `kjob status` shows it."""

    name: str
    replica: str  # "launcher", "worker-0", "master-0", ...
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    ready: bool = False
    restarts: int = 0
    node: str | None = None
    reason: str | None = None  # one line: why it is pending or failing, None when healthy


@dataclass
class JobStatus:
    """One job's state, explained. `to_dict()` is what `-o json|yaml` prints."""

    name: str
    namespace: str | None  # None for local runs
    kind: str  # MPIJob | PyTorchJob | LocalRun
    state: str  # one of STATES
    message: str | None = None  # the condition's message or the reason in one line
    workers: int = 0
    gpus_per_worker: int = 0
    image: str | None = None
    created: str | None = None  # RFC 3339
    started: str | None = None
    finished: str | None = None
    exit_code: int | None = None
    replicas: dict[str, dict[str, int]] = field(default_factory=dict)  # {"Worker": {"active": 1, ...}}
    pods: list[PodInfo] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cause: str | None = None  # a Failed job: the first failure in time ("worker-1 (gone): preempted by ...")
    managed_by: str | None = None  # the GitOps tool that applied the job: 'Argo CD (Application "x")'

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LogOptions:
    replica: str | None = None  # None: launcher (MPIJob) / master (PyTorchJob) / the run's log
    all_replicas: bool = False
    follow: bool = False
    since_seconds: int | None = None
    tail: int | None = None
    timestamps: bool = False
    previous: bool = False
    save_dir: Path | None = None
    color: bool = False


@dataclass
class FetchOptions:
    dest: Path
    which: str = "latest"  # latest | all | best | epoch
    epoch: int | None = None
    list_only: bool = False
    overwrite: bool = False
    progress: bool = False


class Backend(Protocol):
    """Raises only kjob.errors.KjobError subclasses."""

    def submit(self, plan, *, replace: bool = False, follow: bool = False, wait: bool = False,
               write: Callable[[str], None] = print) -> int:
        """Carry out `plan` (the kjob.plan.ClusterPlan or LocalPlan of this backend) and
        say what was done through `write`; with `follow`, stream the job's log until it
        ends; with `wait`, return when it ended. Returns the exit code for the CLI."""
        ...

    def status(self, name: str) -> JobStatus: ...

    def list_jobs(self, all_namespaces: bool = False) -> list[JobStatus]: ...

    def delete(self, name: str, wait: bool = False, grace: float | None = None, now: bool = False) -> str:
        """Delete one job; returns a line saying what happens to its pods/processes.
        A running trainer is first asked for a checkpoint (SIGUSR1 to mpirun) and given
        `grace` seconds (None: the backend's default) to write it; `now` skips that."""
        ...

    def logs(self, name: str, options: LogOptions, write: Callable[[str], None]) -> str | None:
        """Write log lines (no trailing newline) through `write`; return the job's final
        state when following ended with the job, else None."""
        ...

    def fetch_checkpoints(self, name: str, options: FetchOptions) -> list[dict]:
        """Fetch (or with list_only, list) checkpoints; returns the index entries handled."""
        ...
