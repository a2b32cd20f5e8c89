"""A rank on an MPIJob worker pod takes that pod's environment.

mpirun on the launcher pod starts the ranks of a worker through ssh, so a rank's
environment is what sshd gives a session plus what mpirun passes (`-x NAME`, its own
OMPI_/PMIX_/PRTE_ variables); the worker container's own variables would not reach it:
not those a device plugin or an admission webhook sets on the worker pods (NCCL_IB_HCA,
UCX_NET_DEVICES, ...), not a Secret's (kjob gives Secrets to the workers only, so that no
value travels through mpirun). At its start the rank therefore adds every variable of the
worker container, read from the environment of the container's PID 1, that it does not
have yet: what mpirun passed wins, and the OMPI_/PMIX_/PRTE_ names are left to mpirun. So a
rank sees the worker pod's environment as a torchrun rank sees its pod's.

It does so only where PID 1 is kjob's worker wrapper (`python -m kjob_trainer.launch
--hold`, which runs sshd): on this machine, in a PyTorchJob or on a launcher it adds
nothing. Standard library only; no value is ever printed.
"""

from __future__ import annotations

import os
import sys
from typing import MutableMapping

# PID 1 of an MPIJob worker as kjob renders it (submitter: render.manifests.WORKER_COMMAND).
WORKER_PID1 = (b"kjob_trainer.launch", b"--hold")
# mpirun's own variables: a rank's place in the job comes from mpirun alone.
MPIRUN_PREFIXES = ("OMPI_", "PMIX_", "PRTE_")


def worker_environment(proc: str = "/proc/1") -> dict[str, str] | None:
    """The environment of the worker container (its PID 1's, from `proc`), or None when
    PID 1 is not kjob's worker wrapper. Raises OSError when it is but cannot be read."""
    try:
        with open(f"{proc}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:  # another PID namespace's init we may not look at: not a kjob worker
        return None
    if not all(word in argv for word in WORKER_PID1):
        return None
    with open(f"{proc}/environ", "rb") as f:
        entries = f.read().split(b"\0")
    out = {}
    for entry in entries:
        name, sep, value = entry.partition(b"=")
        if sep and name:
            out[name.decode(errors="replace")] = value.decode(errors="surrogateescape")
    return out


def adopt_worker_env(environ: MutableMapping[str, str] | None = None, proc: str = "/proc/1") -> list[str]:
    """Add to `environ` (os.environ) the worker container's variables it lacks, except
    mpirun's own; the names added, sorted. Does nothing outside an MPIJob rank. A worker
    environment that cannot be read is said in one line on stderr (names only), not fatal."""
    environ = os.environ if environ is None else environ
    if "OMPI_COMM_WORLD_RANK" not in environ:
        return []
    try:
        worker = worker_environment(proc)
    except OSError as e:
        print(f"kjob: warning: cannot read the worker pod's environment ({e.strerror or e}): variables set only on "
              "the worker pods (Secrets among them) do not reach this rank", file=sys.stderr, flush=True)
        return []
    added = sorted(name for name in (worker or {}) if name not in environ and not name.startswith(MPIRUN_PREFIXES))
    for name in added:
        environ[name] = worker[name]
    return added
