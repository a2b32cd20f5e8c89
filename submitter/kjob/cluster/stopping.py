"""`kjob delete` of a running job: ask the trainer for a checkpoint before the job goes.
Which pod is signalled, with what, is the job kind's (kinds.JobKind.checkpoint): an
MPIJob's launcher, or the pod that runs mpirun of a TrainJob on kjob's Open MPI runtime
(its launcher replicated job's, or node-0 where the runtime has nodes only and node-0's
`sh -c` execs mpirun under kjob_trainer.launch), gets SIGUSR1; a TrainJob's node-0 on
kjob's torch runtime gets SIGTERM.

OpenMPI's mpirun answers SIGTERM by killing the ranks within about a second: too soon for
a checkpoint. SIGUSR1, though, mpirun forwards to every rank untouched, and the trainer
takes it as "finish the step, rank 0 saves a step checkpoint, exit 143". The launcher
container's PID 1 is mpirun under kjob_trainer.launch (render.manifests.LAUNCHER_COMMAND), which
forwards SIGUSR1 and turns a SIGTERM into it; in jobs rendered before that wrapper
existed, mpirun itself. Either way delete first execs `kill -USR1 1` in the launcher
container, polls the launcher pod until that container has stopped or the grace period
is over, and only then deletes the job (the local backend does the same to its mpirun:
local.procs.stop_session). Deleting it stops the workers too: their sshd runs under
`kjob_trainer.launch --hold` (render.manifests.WORKER_COMMAND), which keeps the SIGTERM
from it while ranks run, for at most names.WORKER_HOLD_S; in jobs rendered before that, a
worker's sshd (its PID 1) takes that worker's ranks with it, checkpoint or not.

A PyTorchJob needs none of this: torchrun is PID 1 of its pods and passes the
deletion's SIGTERM on to the trainer, which checkpoints on it within the pods'
terminationGracePeriodSeconds (names.TERMINATION_GRACE_S). A torch TrainJob's node-0 is
sent that SIGTERM first, and waited for, before the job goes: the TrainJob's deletion
takes the JobSet, its child Jobs and their pods down at once, and a node that goes first
would end the collective the stop is agreed in before rank 0 has saved.

Nothing here fails a delete: a refused exec (RBAC, no `kill` in the image, the pod went
away) becomes the reason, in delete's line, why no checkpoint was asked for.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from typing import Callable

from kjob.cluster import requests
from kjob.cluster.exec_stream import open_exec
from kjob.cluster.jobs import job_pods, poll_seconds
from kjob.cluster.kinds import Checkpoint, kind_of
from kjob.cluster.pods import container_of, container_status, newest, replica_name
from kjob.errors import ClusterUnavailable, KjobError, NotFound
from kjob.names import LAUNCH_MODULE, LAUNCHER, MPI_LAUNCHERS

# `kill` answers at once; this long without a byte means the exec connection is dead.
EXEC_TIMEOUT_S = 30.0
# torchrun as a container's PID 1: the script, or the module it runs.
TORCHRUN = ("torchrun",)
TORCHRUN_MODULE = "torch.distributed.run"
# Shells whose `-c SCRIPT` PID 1 is read for what it execs.
SHELLS = ("sh", "bash", "dash")


def signal_argv(plan: Checkpoint) -> list[str]:
    return ["kill", f"-{plan.signal}", "1"]


def asked(plan: Checkpoint) -> str:
    return f"asked the trainer to checkpoint (SIG{plan.signal} to {plan.program})"


def checkpoint_before_delete(kube, job: dict, grace: float, say: Callable[[str], None]) -> str | None:
    """For a job whose kind asks for a checkpoint (kinds.JobKind.checkpoint) and whose
    pod to signal runs: `kill -<signal> 1` in it, then wait up to `grace` seconds for
    its container to stop. Returns what happened, as a phrase for delete's line (None
    when the job has no pods at all, or its kind leaves it to the deletion's SIGTERM:
    nothing to say). Raises nothing: a failed exec or poll becomes the phrase."""
    try:
        pods = job_pods(kube, job)
    except KjobError as e:
        return f"no checkpoint requested (cannot list the job's pods: {e.message})"
    plan = kind_of(job).checkpoint(job, lambda: {replica_name(p) for p in pods})
    if not pods or plan is None:
        return None
    who = "the launcher" if plan.replica == LAUNCHER else plan.replica
    pod = newest([p for p in pods if replica_name(p) == plan.replica])
    if pod is None:
        return f"no {plan.replica} pod yet: nothing to checkpoint"
    container = container_of(pod)
    state = container_status(pod, container)
    phase = (pod.get("status") or {}).get("phase") or "Unknown"
    if phase != "Running" or "running" not in (state.get("state") or {}):
        # A Running pod whose container is not: between restarts (CrashLoopBackOff, ...).
        why = phase if phase != "Running" else ((state.get("state") or {}).get("waiting") or {}).get("reason") or "not started"
        return f"{plan.replica} not running ({why}): nothing to checkpoint"
    main = next((c for c in pod["spec"]["containers"] if c.get("name") == container), {})
    command = main.get("command") or []
    if command and not passes_on(plan, command + (main.get("args") or [])):
        return f"no checkpoint requested: {who} runs {command[0]}, not {plan.program}"
    md = pod["metadata"]
    namespace, name = md["namespace"], md["name"]
    restarts = state.get("restartCount", 0)
    argv = signal_argv(plan)
    try:
        _signal(kube, namespace, name, container, argv)
    except KjobError as e:
        return f"no checkpoint requested: `{' '.join(argv)}` in {who} failed ({e.message})"
    say(f"{asked(plan)} in pod {name}; waiting up to {grace:g} s for {who} to stop")
    start = time.monotonic()
    stopped, code, error = _wait_stopped(kube, namespace, name, container, restarts, start + grace)
    if not stopped:
        unseen = f" (cannot read the {plan.replica} pod: {error.message})" if error else ""
        return f"{asked(plan)}; {who} did not stop within {grace:g} s{unseen}; deleted anyway (resume uses the last checkpoint)"
    took = time.monotonic() - start
    when = f"after {took:.0f} s" if took >= 1 else "within a second"
    return f"{asked(plan)}; {who} stopped {when}" + (f" (exit {code})" if code is not None else "")


def passes_on(plan: Checkpoint, argv: list[str]) -> bool:
    """Whether a container's PID 1 (argv: its command, then its args, or what a shell
    script among them execs) passes the plan's signal on to the ranks."""
    check = forwards_sigusr1 if plan.program == "mpirun" else runs_torchrun
    return any(check(command) for command in [argv, *shell_execs(argv)] if command)


def forwards_sigusr1(argv: list[str]) -> bool:
    """Whether a launcher container's PID 1 (argv: its command, then its args) passes
    SIGUSR1 on to the ranks: mpirun itself, or `python -m kjob_trainer.launch -- mpirun ...`
    (any python)."""
    name = os.path.basename(argv[0])
    return name in MPI_LAUNCHERS or (name.startswith("python") and argv[1:3] == ["-m", LAUNCH_MODULE])


def runs_torchrun(argv: list[str]) -> bool:
    """Whether PID 1 is torchrun (which passes SIGTERM on to its workers and waits for
    them): the script, or `python -m torch.distributed.run`."""
    name = os.path.basename(argv[0])
    return name in TORCHRUN or (name.startswith("python") and argv[1:3] == ["-m", TORCHRUN_MODULE])


def shell_execs(argv: list[str]) -> list[list[str]]:
    """What PID 1 becomes when it is `sh -c SCRIPT NAME ARGS...`: the command of each
    `exec` in SCRIPT, "$@" standing for ARGS. kjob's Open MPI runtime starts its nodes so
    (node-0 execs `python -m kjob_trainer.launch -- "$@"`, mpirun and its arguments; the
    other nodes exec sshd under the wrapper). [] for any other argv."""
    if len(argv) < 3 or os.path.basename(argv[0]) not in SHELLS or argv[1] != "-c":
        return []
    out = []
    for m in re.finditer(r"\bexec\s+([^;&|\n]+)", argv[2]):
        try:
            words = shlex.split(m.group(1))
        except ValueError:
            continue
        out.append([w for word in words for w in (argv[4:] if word == "$@" else [word])])
    return out


def _signal(kube, namespace: str, pod: str, container: str, argv: list[str]) -> None:
    """`kill -<signal> 1` in the container. Raises KjobError when it was surely not sent;
    a connection cut before the answer counts as sent (waiting costs at most the grace)."""
    stream = open_exec(kube, namespace, pod, container, argv, EXEC_TIMEOUT_S)
    with stream:
        stream.drain()
    code = stream.exit_code()  # raises ClusterUnavailable when kill could not be started
    if code:
        raise ClusterUnavailable(f"exit code {code}: {stream.stderr_text() or 'no message'}")


def _wait_stopped(kube, namespace: str, pod: str, container: str, restarts: int,
                  deadline: float) -> tuple[bool, int | None, KjobError | None]:
    """Poll the signalled pod until the container has stopped: (True, its exit code or
    None, None); at the deadline (False, None, the last error reading the pod, if any).
    A failed read does not end the wait early: deleting then would cut the checkpoint
    short. A restart counts as a stop: with restartPolicy OnFailure the kubelet starts
    mpirun again at once, which may hide the terminated state between two polls; a pod
    that is gone has stopped too."""
    error = None
    while True:
        try:
            obj = kube.send(requests.get_pod(namespace, pod))
        except NotFound:
            return True, None, None
        except KjobError as e:
            obj, error = None, e
        if obj is not None:
            cs = container_status(obj, container)
            ended = (cs.get("state") or {}).get("terminated")
            if not ended and cs.get("restartCount", 0) > restarts:
                ended = (cs.get("lastState") or {}).get("terminated") or {}
            if ended is not None or (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                return True, (ended or {}).get("exitCode"), None
        left = deadline - time.monotonic()
        if left <= 0:
            return False, None, error
        time.sleep(min(poll_seconds(), left))
