"""Who am I in the job, and where do the ranks meet.

`dist_env()` is framework-neutral (no torch import): rank, world size, local rank and
host from OpenMPI's `OMPI_COMM_WORLD_*` (mpirun, the mpi-operator's launcher), else
torchrun's `RANK`/`WORLD_SIZE`/`LOCAL_RANK`, else a single process.

`rendezvous(env, ...)` finds the address where rank 0 listens, in this order:
1. `MASTER_ADDR` + `MASTER_PORT` (torchrun, the training-operator's PyTorchJob);
2. `$KJOB_RENDEZVOUS_HOST`: rank 0's host, which the MPIJob launcher's wrapper
   (`kjob_trainer.launch`) reads from mpi-operator's hostfile and hands every rank with
   `mpirun -x`. mpi-operator mounts the hostfile in the launcher pod only, so the ranks
   on the workers never see it; port `$KJOB_MASTER_PORT` or 29500;
3. the hostfile itself (`/etc/mpi/hostfile`, or `$KJOB_HOSTFILE`) when this rank can read
   it: its first host runs rank 0 (mpirun maps ranks by slot);
4. with every rank on this host, rank 0 listens on a free port and writes `host port` to a
   file under the output path; the others read it. The file is named after the mpirun job
   (PMIX_NAMESPACE) so runs never mix. Ranks on several hosts never meet through a file:
   with none of 1-3 they stop with an error that says so.
A rank that cannot reach rank 0 within `timeout` raises DistributedError naming itself.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from kjob_trainer.common.errors import DistributedError

DEFAULT_HOSTFILE = "/etc/mpi/hostfile"
# Rank 0's host, set for every rank by the MPIJob launcher's wrapper (mpirun -x) from the
# hostfile, which mpi-operator mounts in the launcher pod only (newLauncherPodTemplate).
RENDEZVOUS_VARIABLE = "KJOB_RENDEZVOUS_HOST"
# torch's conventional rendezvous port; pods have their own network namespace, so a fixed
# port does not collide with other jobs.
DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job. `launcher` is mpi, torchrun or single."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    host: str = "localhost"
    launcher: str = "single"
    job_id: str = "single"  # unique per launch (names the rendezvous file)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def where(self) -> str:
        return f"rank {self.rank}/{self.world_size} on host {self.host}"


def _int_env(environ: dict[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError as e:
        raise DistributedError(f"environment variable {name}={environ[name]!r} is not an integer") from e


def dist_env(environ: dict[str, str] | None = None) -> DistEnv:
    """Read the launcher's variables. Raises DistributedError if they are malformed."""
    env = dict(os.environ if environ is None else environ)
    host = socket.gethostname()
    if "OMPI_COMM_WORLD_RANK" in env:
        size = _int_env(env, "OMPI_COMM_WORLD_SIZE")
        job = env.get("PMIX_NAMESPACE") or env.get("OMPI_MCA_ess_base_jobid") or f"ompi-{os.getppid()}"
        return DistEnv(
            rank=_int_env(env, "OMPI_COMM_WORLD_RANK"), world_size=size,
            local_rank=_int_env(env, "OMPI_COMM_WORLD_LOCAL_RANK") if "OMPI_COMM_WORLD_LOCAL_RANK" in env else 0,
            local_world_size=_int_env(env, "OMPI_COMM_WORLD_LOCAL_SIZE") if "OMPI_COMM_WORLD_LOCAL_SIZE" in env else size,
            host=host, launcher="mpi", job_id=job.replace("/", "_").replace("@", "_"))
    if "RANK" in env and "WORLD_SIZE" in env:
        size = _int_env(env, "WORLD_SIZE")
        return DistEnv(
            rank=_int_env(env, "RANK"), world_size=size,
            local_rank=_int_env(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            local_world_size=_int_env(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else size,
            host=host, launcher="torchrun", job_id=env.get("TORCHELASTIC_RUN_ID", "torchrun"))
    return DistEnv(host=host)


def hostfile_first_host(path: str) -> str | None:
    """First host named in an OpenMPI hostfile (`host slots=N` lines), or None."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            return line.split()[0]
    return None


def rendezvous_file(output_path: str, env: DistEnv) -> Path:
    # At the top of the output path, never in checkpoints/ (only checkpoints go there).
    return Path(output_path) / f".rendezvous-{env.job_id}"


def rendezvous_host(environ: dict[str, str] | None = None) -> str | None:
    """Rank 0's host as the launcher gave it ($RENDEZVOUS_VARIABLE), else as this rank's own
    hostfile says, else None."""
    e = os.environ if environ is None else environ
    return e.get(RENDEZVOUS_VARIABLE) or hostfile_first_host(e.get("KJOB_HOSTFILE", DEFAULT_HOSTFILE))


def static_address(env: DistEnv, environ: dict[str, str] | None = None) -> tuple[str, int] | None:
    """(addr, port) known without talking to rank 0, or None if rank 0 must publish one.
    Raises DistributedError when ranks span several hosts and nothing names rank 0's:
    a file on a shared volume is no way to meet there (it needs a volume every rank can
    write, and NFS caching delays it)."""
    e = os.environ if environ is None else environ
    if e.get("MASTER_ADDR") and e.get("MASTER_PORT"):
        return e["MASTER_ADDR"], int(e["MASTER_PORT"])
    host = rendezvous_host(e)
    if host:
        return host, int(e.get("KJOB_MASTER_PORT", DEFAULT_MASTER_PORT))
    if env.local_world_size != env.world_size:
        raise DistributedError(
            f"{env.where()}: ranks span several hosts but nothing names rank 0's host: run mpirun under "
            f"`python -m kjob_trainer.launch` with --hostfile (it passes {RENDEZVOUS_VARIABLE}), or set "
            f"{RENDEZVOUS_VARIABLE} or MASTER_ADDR/MASTER_PORT")
    return None


def publish_address(path: Path, host: str, port: int) -> None:
    """Rank 0: write `host port` atomically, so a reader never sees half a line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{host} {port}\n", encoding="utf-8")
    os.replace(tmp, path)


def wait_for_address(path: Path, env: DistEnv, timeout: float) -> tuple[str, int]:
    """Other ranks: poll for rank 0's `host port`. Raises DistributedError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            host, port = path.read_text(encoding="utf-8").split()
            return host, int(port)
        except (OSError, ValueError):
            time.sleep(0.05)
    raise DistributedError(
        f"{env.where()} could not join the job: rank 0 did not publish its address in {path} "
        f"within {timeout:.0f} s (set MASTER_ADDR/MASTER_PORT or provide a hostfile if ranks do not share that folder)")


def local_address(env: DistEnv) -> str:
    """The address rank 0 advertises: loopback when every rank is on this host."""
    if env.local_world_size == env.world_size:
        return "127.0.0.1"
    try:
        return socket.gethostbyname(env.host)
    except OSError:
        return env.host
