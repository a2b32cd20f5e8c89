"""The hosts of mpirun's hostfile, as the MPIJob launcher's wrapper uses them: wait for
their ssh, and tell every rank which one runs rank 0.

mpi-operator gates only the launcher's first creation on the workers being ready
(`launcherCreationPolicy: WaitForWorkersReady`). When the launcher restarts (restartPolicy
OnFailure) after a worker was evicted, the replacement worker's sshd may not listen yet:
ssh gives up, mpirun fails, and a few quick retries use up the job's backoffLimit. So the
launcher wrapper first waits, bounded and logged, until every host of mpirun's
`--hostfile` accepts a TCP connection on the port its ssh would use.

mpi-operator mounts the hostfile (`/etc/mpi`) in the launcher pod only, while the ranks run
on the workers: `with_rendezvous_host` adds `-x KJOB_RENDEZVOUS_HOST=<first host>` to
mpirun's command, so every rank knows rank 0's host without a file on the workers or a
shared volume (mpirun maps ranks by slot: rank 0 runs on the first host).

Standard library only: it runs in both trainer images.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

# How long the launcher waits for the workers' sshd at most before it runs mpirun anyway
# (mpirun's own error then names the host). A replacement worker may be pulling its image.
WAIT_LIMIT_S = 600.0
# Between two rounds of connection attempts, and at most between two progress lines.
RETRY_S = 1.0
SAY_EVERY_S = 15.0
# One connection attempt; a worker that is not there yet usually refuses at once.
CONNECT_TIMEOUT_S = 3.0
DEFAULT_SSH_PORT = 22


def hostfile_of(command: Sequence[str]) -> Path | None:
    """The file given to mpirun's --hostfile (or --machinefile), if the command is mpirun."""
    if not command or Path(command[0]).name not in ("mpirun", "mpiexec", "prterun"):
        return None
    for i, arg in enumerate(command[:-1]):
        if arg in ("--hostfile", "-hostfile", "--machinefile", "-machinefile"):
            return Path(command[i + 1])
    return None


def with_rendezvous_host(command: list[str], variable: str) -> list[str]:
    """`command` with `-x VARIABLE=<the hostfile's first host>` after mpirun, when it is
    `mpirun --hostfile FILE` and FILE names a host; otherwise unchanged."""
    hostfile = hostfile_of(command)
    hosts = read_hosts(hostfile) if hostfile is not None and hostfile.is_file() else []
    if not hosts:
        return command
    return [command[0], "-x", f"{variable}={hosts[0]}", *command[1:]]


def read_hosts(path: Path) -> list[str]:
    """The host names of an OpenMPI hostfile ("host slots=N" lines; comments and blank lines
    skipped), each once, in order."""
    hosts: list[str] = []
    for line in path.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if words and words[0] not in hosts:
            hosts.append(words[0])
    return hosts


def ssh_port(host: str) -> int:
    """The port ssh would connect to for `host`: `ssh -G` applies the same config files
    (the image sets 2222 for every host); 22 without an ssh client."""
    ssh = shutil.which("ssh")
    if ssh is None:
        return DEFAULT_SSH_PORT
    try:
        out = subprocess.run([ssh, "-G", host], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_SSH_PORT
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key == "port" and value.strip().isdigit():
            return int(value)
    return DEFAULT_SSH_PORT


def accepts(host: str, port: int) -> bool:
    """True when host:port accepts a TCP connection now (a name that does not resolve yet,
    as a new pod's headless-Service name, counts as not accepting)."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def wait_for_hosts(hosts: Sequence[str], say: Callable[[str], None], stop: Callable[[], bool],
                   limit: float = WAIT_LIMIT_S) -> bool:
    """Wait until every host accepts ssh connections, at most `limit` seconds or until
    stop() is true; say() reports progress. True when all accept."""
    # mpirun starts the ranks of this host itself, without ssh (the launcher is in its own
    # hostfile when it runs as a worker too, and a local test names localhost).
    # A hostfile may name this pod by its DNS name, <hostname>.<subdomain> (Trainer v2's MPI
    # plugin writes <name>-node-0-<i>.<name>), whose first label is this pod's hostname.
    here = _this_host()
    hosts = [h for h in hosts if h not in here and h.split(".")[0] not in here]
    ports = {host: ssh_port(host) for host in hosts}
    start = last_said = time.monotonic()
    waiting = list(hosts)
    while True:
        waiting = [h for h in waiting if not accepts(h, ports[h])]
        waited = time.monotonic() - start
        if not waiting:
            if waited >= RETRY_S:
                say(f"all {len(hosts)} host(s) accept ssh after {waited:.0f} s")
            return True
        if stop():
            return False
        if waited >= limit:
            say(f"{_names(waiting, ports)} still not accepting ssh after {waited:.0f} s; starting anyway")
            return False
        if time.monotonic() - last_said >= SAY_EVERY_S or last_said == start:
            say(f"waiting for ssh on {_names(waiting, ports)} ({len(waiting)} of {len(hosts)} host(s))")
            last_said = time.monotonic()
        time.sleep(RETRY_S)


def _this_host() -> set[str]:
    name = socket.gethostname()
    return {"localhost", "127.0.0.1", "::1", name, name.split(".")[0]}


def _names(hosts: Sequence[str], ports: dict[str, int]) -> str:
    shown = ", ".join(f"{h}:{ports[h]}" for h in hosts[:3])
    return shown + (f" and {len(hosts) - 3} more" if len(hosts) > 3 else "")
