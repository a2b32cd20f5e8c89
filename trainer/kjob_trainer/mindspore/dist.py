"""MindSpore's side of the distributed bootstrap: one dynamic cluster per mpirun job.

MindSpore's ranks meet through a scheduler process (`MS_ROLE=MS_SCHED`), the way its own
`msrun` launches them. Under `mpirun -np N`, rank 0 starts that scheduler as a child
process, and every rank sets `MS_ROLE=MS_WORKER`, `MS_SCHED_HOST`, `MS_SCHED_PORT`,
`MS_WORKER_NUM` and `MS_NODE_ID` (= its MPI rank) before `init()`. The same path serves
CPU (MindSpore's own collective library, mccl), GPU (NCCL) and Ascend (HCCL): `init()`
picks the backend from the device target.

Where the scheduler listens:
- host: `$KJOB_MS_SCHED_HOST`; else 127.0.0.1 when every rank is on this host; else rank
  0's host as the MPIJob launcher's wrapper passes it (`$KJOB_RENDEZVOUS_HOST`, from the
  hostfile that only the launcher pod has), or as this rank's own hostfile says: mpirun
  maps ranks by slot, so rank 0 runs on the first host;
- port: `$KJOB_MS_SCHED_PORT`; else 8118 plus an offset hashed from the mpirun job id, the
  same in every rank, so two local jobs on one machine do not collide.

A rank that has not joined within `cfg.dist_timeout` seconds exits 1 with a line naming its
rank, host and the scheduler address (a watchdog thread: `init()` itself cannot be
interrupted). Run as `python -m kjob_trainer.mindspore.dist --scheduler` it is the
scheduler process itself.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass

from kjob_trainer.common.distributed import RENDEZVOUS_VARIABLE, DistEnv, rendezvous_host
from kjob_trainer.common.errors import BadInput, DistributedError

# MindSpore's documentation uses 8118 for MS_SCHED_PORT; the hashed offset keeps
# concurrent local jobs apart while every rank of one job computes the same port.
BASE_SCHED_PORT = 8118
PORT_SPREAD = 2000
# The scheduler exits by itself a few seconds after the last worker process has exited (it
# waits for the workers' unregistration, which MindSpore sends only at process exit, so
# rank 0 cannot wait for it). If rank 0 dies first, the scheduler gives the other workers
# this long to leave, then exits anyway: it never outlives the job by more.
ORPHAN_GRACE_S = 20.0
# MindSpore's C++ logging at ERROR only: its WARNING level prints dozens of lines per rank.
QUIET_GLOG = "3"


def quiet_mindspore() -> None:
    """ERROR-level MindSpore logging (C++ and Python); must run before `import mindspore`."""
    os.environ.setdefault("GLOG_v", QUIET_GLOG)


@dataclass(frozen=True)
class Cluster:
    """Where this job's ranks meet and what this process is in it."""

    sched_host: str
    sched_port: int
    world_size: int
    rank: int
    host: str

    def address(self) -> str:
        return f"{self.sched_host}:{self.sched_port}"


def _resolve(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host  # MindSpore reports an unreachable name itself; the watchdog bounds the wait.


def cluster_address(dist: DistEnv, environ: dict[str, str] | None = None) -> tuple[str, int]:
    """(host, port) of the scheduler for this job. Raises BadInput for a malformed port."""
    env = os.environ if environ is None else environ
    if env.get("KJOB_MS_SCHED_PORT"):
        try:
            port = int(env["KJOB_MS_SCHED_PORT"])
        except ValueError as e:
            raise BadInput(f"KJOB_MS_SCHED_PORT={env['KJOB_MS_SCHED_PORT']!r} is not a port number") from e
    else:
        port = BASE_SCHED_PORT + zlib.crc32(dist.job_id.encode()) % PORT_SPREAD
    if env.get("KJOB_MS_SCHED_HOST"):
        return _resolve(env["KJOB_MS_SCHED_HOST"]), port
    if dist.local_world_size == dist.world_size:
        return "127.0.0.1", port
    first = rendezvous_host(env)
    if first is None:
        raise DistributedError(
            f"{dist.where()}: ranks span several hosts but nothing names rank 0's host: run mpirun under "
            f"`python -m kjob_trainer.launch` with --hostfile (it passes {RENDEZVOUS_VARIABLE}), or set KJOB_MS_SCHED_HOST")
    return _resolve(first), port


class ClusterMember:
    """Joins the MindSpore cluster; `close()` reaps the scheduler that rank 0 started."""

    def __init__(self, dist: DistEnv, timeout: float, log_path: str | None = None) -> None:
        host, port = cluster_address(dist)
        self.cluster = Cluster(host, port, dist.world_size, dist.rank, dist.host)
        self.timeout = timeout
        self.log_path = log_path
        self.scheduler: subprocess.Popen | None = None
        # init() can fail on its own just as join()'s watchdog fires: whoever takes this lock
        # first says why the join failed, the other stays quiet (one error line, never two).
        self._verdict = threading.Lock()

    def _ms_env(self, role: str) -> dict[str, str]:
        c = self.cluster
        env = {"MS_ROLE": role, "MS_SCHED_HOST": c.sched_host, "MS_SCHED_PORT": str(c.sched_port),
               "MS_WORKER_NUM": str(c.world_size), "MS_TOPO_TIMEOUT": str(int(self.timeout))}
        if role == "MS_WORKER":
            env["MS_NODE_ID"] = str(c.rank)
            if c.sched_host != "127.0.0.1":
                env.setdefault("MS_WORKER_IP", _resolve(c.host))
        return env

    def start_scheduler(self) -> None:
        """Rank 0: start the scheduler process. Raises DistributedError if it cannot start."""
        env = dict(os.environ)
        env.update(self._ms_env("MS_SCHED"))
        env.setdefault("GLOG_v", QUIET_GLOG)
        for key in ("MS_NODE_ID", "MS_WORKER_IP"):
            env.pop(key, None)
        env["KJOB_MS_PARENT_PID"] = str(os.getpid())
        # Its output goes to a file, not to rank 0's stdout: mpirun would otherwise wait for
        # the scheduler to close that pipe before it finishes.
        log = None
        try:
            log = open(self.log_path, "ab") if self.log_path else None
            self.scheduler = subprocess.Popen(
                [sys.executable, "-m", "kjob_trainer.mindspore.dist", "--scheduler"], env=env,
                stdin=subprocess.DEVNULL, stdout=log or subprocess.DEVNULL, stderr=log or subprocess.DEVNULL)
        except OSError as e:
            raise DistributedError(f"{self.where()}: cannot start the MindSpore scheduler ({e})") from e
        finally:
            if log is not None:
                log.close()

    def where(self) -> str:
        c = self.cluster
        return f"rank {c.rank}/{c.world_size} on host {c.host}"

    def join(self) -> None:
        """Set the MS_* variables and run `init()`. Exits the process (code 1) with a one-line
        error if the cluster is not built within the timeout."""
        from mindspore.communication import init

        os.environ.update(self._ms_env("MS_WORKER"))
        if self.cluster.rank == 0:
            self.start_scheduler()
        watchdog = threading.Timer(self.timeout, self._give_up)
        watchdog.daemon = True
        watchdog.start()
        try:
            init()
        except RuntimeError as e:
            watchdog.cancel()
            self._verdict.acquire()  # taken by the watchdog: wait here for its os._exit
            raise DistributedError(f"{self.where()} could not join the MindSpore cluster at "
                                   f"{self.cluster.address()}: {str(e).strip().splitlines()[0]}") from e
        finally:
            watchdog.cancel()

    def _give_up(self) -> None:
        # Runs on the watchdog thread while init() blocks in C++; only a hard exit ends it.
        if not self._verdict.acquire(blocking=False):
            return  # init() has failed by itself and is saying so
        sys.stderr.write(
            f"Error: {self.where()} could not join the MindSpore cluster (scheduler at "
            f"{self.cluster.address()}, {self.cluster.world_size} ranks) within {self.timeout:.0f} s\n")
        sys.stderr.flush()
        self._kill_scheduler()
        os._exit(DistributedError.exit_code)

    def _kill_scheduler(self) -> None:
        if self.scheduler is not None and self.scheduler.poll() is None:
            self.scheduler.kill()
            self.scheduler.wait()

    def close(self) -> None:
        """Rank 0: leave the scheduler to exit after this process (see ORPHAN_GRACE_S); reap
        it if it already has."""
        if self.scheduler is not None and self.scheduler.poll() is not None:
            self.scheduler = None


def _exit_when_orphaned(parent: int) -> None:
    """Scheduler thread: once the rank that started it is gone, allow ORPHAN_GRACE_S for the
    other workers to leave, then end the process."""
    while os.getppid() == parent:
        time.sleep(1.0)
    time.sleep(ORPHAN_GRACE_S)
    os._exit(0)


def run_scheduler() -> int:
    """The scheduler process: `init()` as MS_SCHED returns (or exits) when every worker has left."""
    import mindspore as ms
    from mindspore.communication import init

    parent = int(os.environ.get("KJOB_MS_PARENT_PID", "0"))
    if parent:
        threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    ms.set_device("CPU")
    try:
        init()
    except RuntimeError as e:
        sys.stderr.write(f"Error: MindSpore scheduler at {os.environ.get('MS_SCHED_HOST')}:"
                         f"{os.environ.get('MS_SCHED_PORT')} failed: {str(e).strip().splitlines()[0]}\n")
        return 1
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["--scheduler"]:
        sys.stderr.write("usage: python -m kjob_trainer.mindspore.dist --scheduler (started by rank 0)\n")
        sys.exit(2)
    sys.exit(run_scheduler())
