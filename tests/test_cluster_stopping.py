"""`kjob delete` of a running MPIJob asks the trainer for a checkpoint first (kjob.cluster.stopping):
`kill -USR1 1` in the launcher container, then it waits for the launcher to stop (or
--grace), then deletes; the exact line it prints, and every way of not asking."""

from __future__ import annotations

import re
import threading
import time

import pytest

from kjob.cluster.backend import ClusterBackend
from kjob.render.manifests import render_objects
from kjob.spec.load import load_spec

from kubefake.exec import ExecReply

pytestmark = pytest.mark.timeout(180)  # a bound against hangs, scaled by KJOB_TEST_TIME_SCALE

PODS_GO = "its 3 pod(s) are deleted with it (they are owned by the job)"
ASKED = "asked the trainer to checkpoint (SIGUSR1 to mpirun)"
# The launcher's command as kjob renders it: mpirun, in its args, under the SIGTERM wrapper.
WRAPPER = ["python", "-m", "kjob_trainer.launch", "--"]


def running_mpijob(kube, run_kjob) -> str:
    """examples/smoke.yaml submitted and Running; returns the launcher pod's name."""
    assert run_kjob("submit", "examples/smoke.yaml").code == 0
    return kube.run_job("smoke")[0]


def mpirun_in(kube, launcher: str, *, exits_after: float | None, restarted: bool = False):
    """Play mpirun in the launcher: `kill -USR1 1` succeeds and, like mpirun once its ranks
    have saved and exited 143, the container stops `exits_after` seconds later (None:
    never); `restarted`: the kubelet starts it again at once (restartPolicy OnFailure).
    Returns a list that gets whether the job still existed when it stopped."""
    job_was_there: list[bool] = []

    def stop_later():
        time.sleep(exits_after)
        job_was_there.append(kube.get("MPIJob", "smoke") is not None)
        try:
            if restarted:
                kube.restart_container(launcher, exit_code=143)
            else:
                kube.pod_terminated(launcher, 143, "Error")
        except KeyError:
            pass  # already deleted: kjob did not wait (the assertion on job_was_there says so)

    def kill(argv):
        if exits_after is not None:
            threading.Thread(target=stop_later, daemon=True).start()
        return ExecReply()

    kube.exec.serve("default", launcher, kill)
    return job_was_there


@pytest.mark.parametrize("restarted", [False, True], ids=["terminated", "restarted"])
def test_delete_signals_mpirun_waits_for_the_launcher_then_deletes(kube, run_kjob, restarted):
    launcher = running_mpijob(kube, run_kjob)
    job_was_there = mpirun_in(kube, launcher, exits_after=0.3, restarted=restarted)
    r = run_kjob("delete", "smoke")
    assert r.code == 0, r
    assert [(c.pod, c.container, c.command) for c in kube.exec.calls] == [(launcher, "launcher", ["kill", "-USR1", "1"])]
    assert job_was_there == [True]
    assert re.fullmatch(rf"deleted MPIJob default/smoke: {re.escape(ASKED)}; the launcher stopped (within a second|after \d+ s) "
                        rf"\(exit 143\); {re.escape(PODS_GO)}\n", r.out), r.out
    assert r.err == f"{ASKED} in pod {launcher}; waiting up to 120 s for the launcher to stop\n"
    assert kube.get("MPIJob", "smoke") is None


def test_a_launcher_that_does_not_stop_within_the_grace_is_deleted_anyway(kube, run_kjob):
    launcher = running_mpijob(kube, run_kjob)
    mpirun_in(kube, launcher, exits_after=None)
    start = time.monotonic()
    r = run_kjob("delete", "smoke", "--grace", "1s")
    assert time.monotonic() - start >= 1
    assert (r.code, r.out) == (0, f"deleted MPIJob default/smoke: {ASKED}; the launcher did not stop within 1 s; "
                                  f"deleted anyway (resume uses the last checkpoint); {PODS_GO}\n")
    assert kube.get("MPIJob", "smoke") is None


@pytest.mark.parametrize("why", ["forbidden", "no-kill", "pod-gone"])
def test_a_failed_exec_deletes_without_a_checkpoint_and_says_why(kube, run_kjob, why):
    launcher = running_mpijob(kube, run_kjob)
    if why == "forbidden":
        kube.deny("get", "pods/exec")
        reason = (f'forbidden: cannot get pods/exec "{launcher}" in namespace "default" (context "kubefake"): pods is forbidden: '
                  'User "kjob-test" cannot get resource "pods/exec" in API group "" in the namespace "default"')
    elif why == "no-kill":
        # What containerd answers for a command the image does not have.
        oci = 'OCI runtime exec failed: exec failed: unable to start container process: exec: "kill": executable file not found in $PATH: unknown'
        kube.exec.serve("default", launcher, lambda argv: ExecReply(stderr=oci.encode() + b"\r\n", exit_code=126))
        reason = f"exit code 126: {oci}"
    else:
        kube.fault("get", "pods/exec", status=404)
        reason = f'pods/exec "{launcher}" not found in namespace "default" on {kube.server} (context "kubefake")'
    r = run_kjob("delete", "smoke")
    assert (r.code, r.out) == (0, f"deleted MPIJob default/smoke: no checkpoint requested: `kill -USR1 1` in the launcher failed ({reason}); {PODS_GO}\n")
    assert kube.get("MPIJob", "smoke") is None


def test_now_deletes_without_asking(kube, run_kjob):
    launcher = running_mpijob(kube, run_kjob)
    mpirun_in(kube, launcher, exits_after=0.1)
    r = run_kjob("delete", "smoke", "--now")
    assert (r.code, r.out, r.err) == (0, f"deleted MPIJob default/smoke: {PODS_GO}\n", "")
    assert kube.exec.calls == []


def test_a_pytorchjob_is_deleted_without_an_exec(kube, run_kjob):
    """torchrun is PID 1 of its pods: the deletion's SIGTERM is the trainer's signal."""
    assert run_kjob("submit", "examples/resnext50-torchrun.yaml").code == 0
    pods = kube.run_job("resnext50-torchrun")
    r = run_kjob("delete", "resnext50-torchrun")
    assert (r.code, r.out) == (0, f"deleted PyTorchJob default/resnext50-torchrun: its {len(pods)} pod(s) are deleted with it (they are owned by the job)\n")
    assert kube.exec.calls == []


@pytest.mark.parametrize("phase", ["Pending", "Succeeded", "Failed", "CrashLoopBackOff"])
def test_a_launcher_that_is_not_running_gets_no_exec(kube, run_kjob, phase):
    assert run_kjob("submit", "examples/smoke.yaml").code == 0
    launcher = kube.start_job("smoke")[0]
    if phase == "CrashLoopBackOff":
        kube.run_job("smoke")
        kube.crash_loop(launcher)
    elif phase != "Pending":
        kube.run_job("smoke")
        kube.pod_terminated(launcher, 0 if phase == "Succeeded" else 1, "Completed" if phase == "Succeeded" else "Error")
    kube.exec.serve("default", launcher, lambda argv: ExecReply())
    r = run_kjob("delete", "smoke")
    assert (r.code, r.out) == (0, f"deleted MPIJob default/smoke: launcher not running ({phase}): nothing to checkpoint; {PODS_GO}\n")
    assert kube.exec.calls == []


def smoke_launcher_running(kube, argv: list[str] | None = None, command_len: int = 0) -> str:
    """examples/smoke.yaml submitted, Running, its launcher container running `argv` (its
    first `command_len` words as the command, the rest as args) instead of what kjob
    renders. Returns the launcher pod's name."""
    (job,) = render_objects(load_spec("examples/smoke.yaml"))
    container = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    assert container["command"] == WRAPPER and container["args"][0] == "mpirun"
    if argv is not None:
        container["command"], container["args"] = argv[:command_len], argv[command_len:]
    ClusterBackend().create_job([job])
    return kube.run_job("smoke")[0]


MPIRUN_ARGS = ["mpirun", "-np", "2", "python", "-m", "kjob_trainer.train"]


@pytest.mark.parametrize("argv, command_len", [
    (None, 0),
    (["/opt/venv/bin/python3", "-m", "kjob_trainer.launch", "--", *MPIRUN_ARGS], 4),
    (["python", "-m", "kjob_trainer.launch", "--", *MPIRUN_ARGS], 1),
    (MPIRUN_ARGS, 1),
], ids=["as-rendered", "python-by-path", "module-in-args", "mpirun-itself"])
def test_a_launcher_under_the_wrapper_or_mpirun_itself_is_signalled(kube, run_kjob, argv, command_len):
    """kjob_trainer.launch (PID 1 as kjob renders it) forwards SIGUSR1 to mpirun; jobs
    rendered before it existed run mpirun as PID 1."""
    launcher = smoke_launcher_running(kube, argv, command_len)
    mpirun_in(kube, launcher, exits_after=0.1)
    r = run_kjob("delete", "smoke")
    assert (r.code, r.err) == (0, f"{ASKED} in pod {launcher}; waiting up to 120 s for the launcher to stop\n"), r
    assert [(c.pod, c.command) for c in kube.exec.calls] == [(launcher, ["kill", "-USR1", "1"])]
    assert kube.get("MPIJob", "smoke") is None


def test_a_launcher_that_runs_something_else_than_mpirun_gets_no_exec(kube, run_kjob):
    """Started through a shell, PID 1 would ignore SIGUSR1: no exec, no pointless wait."""
    (job,) = render_objects(load_spec("examples/smoke.yaml"))
    args = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["args"]
    launcher = smoke_launcher_running(kube, ["/bin/sh", "-c", " ".join(args)], command_len=2)
    kube.exec.serve("default", launcher, lambda argv: ExecReply())
    r = run_kjob("delete", "smoke")
    assert (r.code, r.out) == (0, f"deleted MPIJob default/smoke: no checkpoint requested: the launcher runs /bin/sh, not mpirun; {PODS_GO}\n")
    assert kube.exec.calls == []


@pytest.mark.parametrize("grace", ["-1", "soon", "infs"])
def test_a_bad_grace_is_exit_2(kube, run_kjob, grace):
    r = run_kjob("delete", "smoke", "--grace", grace)
    assert (r.code, r.err.splitlines()[-1]) == (2, f"Error: Invalid value for --grace: {grace!r} is not a duration like 30s, 5m, 2h")
