"""Acceptance 1 of issue 12 on the real control plane: kjob's CLI drives the examples'
MPIJob and PyTorchJob through the real API server, the real mpi-operator and
training-operator, the real scheduler and kwok nodes; logs and exec go through the API
server to kwok. The test plays only the containers: what they print and how they end."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time

import pytest
import yaml

from ckpt_helpers import write_checkpoints
from waiting import time_scale, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300 * time_scale())]

MPI = "kubeflow.org/v2beta1"


def open_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _contains(stored, rendered, where: str = "") -> list[str]:
    """Where `stored` lacks or changed what `rendered` has (extra fields in `stored`, such as
    the schema's defaults, are fine)."""
    if isinstance(rendered, dict):
        if not isinstance(stored, dict):
            return [where]
        return [m for k, v in rendered.items() for m in _contains(stored.get(k), v, f"{where}.{k}")]
    if isinstance(rendered, list):
        if not isinstance(stored, list) or len(stored) != len(rendered):
            return [where]
        return [m for i, (a, b) in enumerate(zip(stored, rendered)) for m in _contains(a, b, f"{where}[{i}]")]
    return [] if stored == rendered else [where]


def assert_kept_as_rendered(real, run_kjob, spec: str, plural: str, version: str) -> None:
    """The real API server keeps every field kjob renders: the CRD's structural schema
    prunes unknown fields silently, which no fake does."""
    rendered = yaml.safe_load(run_kjob("render", spec).out)
    stored = real.job(plural, rendered["metadata"]["name"], version)
    assert _contains(stored["spec"], rendered["spec"]) == [], "pruned or changed by the API server"
    assert _contains(stored["metadata"], {k: v for k, v in rendered["metadata"].items() if k != "namespace"}) == []


def _later(fn, *args):
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


def test_mpijob_submit_status_logs_replicas_and_success(real, run_kjob):
    r = run_kjob("submit", "examples/smoke.yaml")
    assert (r.code, r.out) == (0, f"MPIJob {real.ns}/smoke created\n"), r
    assert_kept_as_rendered(real, run_kjob, "examples/smoke.yaml", "mpijobs", "v2beta1")
    running = [p["metadata"]["name"] for p in real.wait_pods("smoke", 3)]  # the launcher and 2 workers
    assert running[1:] == ["smoke-worker-0", "smoke-worker-1"] and running[0].startswith("smoke-launcher-"), running
    launcher = real.pod("smoke", "launcher")
    # What mpi-operator made besides the pods: the launcher Job, Service, ConfigMap, Secret.
    assert real.api.get(real.path("jobs", "smoke-launcher", group="batch/v1"))
    assert real.api.get(real.path("services", "smoke"))
    hostfile = real.api.get(real.path("configmaps", "smoke-config"))["data"]["hostfile"]
    assert "smoke-worker-0.smoke" in hostfile and "smoke-worker-1.smoke" in hostfile
    assert real.api.get(real.path("secrets", "smoke-ssh"))["type"] == "kubernetes.io/ssh-auth"

    real.wait_job_condition("mpijobs", "smoke", "v2beta1", "Running")
    st = run_kjob("status", "smoke")
    assert st.code == 0 and "State:     Running" in st.out, st
    for replica in ("launcher", "worker-0", "worker-1"):
        assert f"  {replica} " in st.out, st

    real.append_log(launcher, ["epoch 1 top1 12.5", "epoch 2 top1 25.0"])
    real.append_log("smoke-worker-1", ["rank 1 ready"])
    r = run_kjob("logs", "smoke", "--replica", "worker-1")
    assert (r.code, r.out) == (0, "rank 1 ready\n"), r
    r = run_kjob("logs", "smoke", "--all")
    assert r.code == 0 and "[launcher] epoch 2 top1 25.0\n" in r.out and "[worker-1] rank 1 ready\n" in r.out, r

    def finish():
        time.sleep(1.0)
        real.append_log(launcher, ["done"])
        real.end_pod(launcher, 0)

    _later(finish)
    r = run_kjob("logs", "smoke", "-f")
    assert (r.code, r.out) == (0, "epoch 1 top1 12.5\nepoch 2 top1 25.0\ndone\n"), r
    assert r.err.splitlines()[-1] == "job smoke Succeeded", r
    assert "State:     Succeeded" in run_kjob("status", "smoke").out
    r = run_kjob("list")
    assert r.code == 0 and "smoke" in r.out and "Succeeded" in r.out, r
    r = run_kjob("delete", "smoke", "--wait")
    assert r.code == 0 and r.out.startswith(f"deleted MPIJob {real.ns}/smoke"), r
    assert real.job("mpijobs", "smoke", "v2beta1") is None and real.pods("smoke") == []


def test_pytorchjob_submit_status_and_follow_to_failure(real, run_kjob):
    r = run_kjob("submit", "examples/resnext50-torchrun.yaml")
    name = "resnext50-torchrun"
    assert (r.code, r.out) == (0, f"PyTorchJob {real.ns}/{name} created\n"), r
    assert_kept_as_rendered(real, run_kjob, "examples/resnext50-torchrun.yaml", "pytorchjobs", "v1")
    pods = real.wait_pods(name, 2)
    assert [p["metadata"]["name"] for p in pods] == [f"{name}-master-0", f"{name}-worker-0"]
    st = run_kjob("status", name)
    assert "  master-0 " in st.out and "  worker-0 " in st.out, st
    real.append_log(f"{name}-master-0", ["step 1 loss 6.9"])

    backoff_limit = yaml.safe_load(open_text("examples/resnext50-torchrun.yaml"))["runPolicy"]["backoffLimit"]

    def fail():
        # restartPolicy OnFailure: the kubelet restarts the master in place after each
        # failure; training-operator fails the job once the restarts reach backoffLimit.
        time.sleep(1.0)
        real.append_log(f"{name}-master-0", ["CUDA error"])
        for _ in range(backoff_limit):
            real.end_pod(f"{name}-master-0", 1)

    _later(fail)
    r = run_kjob("logs", name, "-f")
    assert (r.code, r.out) == (1, "step 1 loss 6.9\nCUDA error\n"), r
    assert r.err.splitlines()[-1] == f"job {name} Failed", r
    st = run_kjob("status", name)
    assert "has failed because it has reached the specified backoff limit" in st.out, st


def test_submit_wait_returns_with_the_job(real, run_kjob):
    def succeed():
        launcher = real.pod("smoke", "launcher")
        real.end_pod(launcher, 0)

    _later(succeed)
    r = run_kjob("submit", "examples/smoke.yaml", "--wait")
    assert r.code == 0 and r.err.splitlines()[-1] == "job smoke Succeeded", r


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_ckpt_then_delete_asks_the_launcher_for_a_checkpoint_through_exec(real, run_kjob, tmp_path):
    shutil.rmtree(real.checkpoints() / "smoke", ignore_errors=True)
    index = write_checkpoints(real.checkpoints() / "smoke" / "checkpoints", [300_000, 200_000, 100_000])
    assert run_kjob("submit", "examples/smoke.yaml").code == 0
    launcher = real.pod("smoke", "launcher")

    r = run_kjob("fetch-ckpt", "smoke", "--all", "--dest", str(tmp_path / "got"))
    assert r.code == 0, r
    for entry in index["checkpoints"]:
        assert _sha256(tmp_path / "got" / entry["file"]) == entry["sha256"]
    r = run_kjob("fetch-ckpt", "smoke", "--list")
    assert r.code == 0 and "epoch-0003.pt" in r.out, r

    before = real.signals().count("SIGUSR1")

    def trainer():  # the launcher's PID 1 answers SIGUSR1 by checkpointing and exiting 143
        wait_for("SIGUSR1 at the launcher's PID 1", lambda: real.signals().count("SIGUSR1") > before, 60, interval=0.05)
        real.end_pod(launcher, 143)

    _later(trainer)
    r = run_kjob("delete", "smoke", "--wait")
    assert r.code == 0, r
    assert f"asked the trainer to checkpoint (SIGUSR1 to mpirun) in pod {launcher}" in r.err + r.out, r
    assert "(exit 143)" in r.out, r
    assert real.job("mpijobs", "smoke", "v2beta1") is None


def test_replace_a_different_spec(real, run_kjob, tmp_path):
    assert run_kjob("submit", "examples/smoke.yaml").code == 0
    real.wait_pods("smoke", 2)
    spec = yaml.safe_load(open_text("examples/smoke.yaml"))
    spec["train"]["epochs"] = 3
    changed = tmp_path / "smoke.yaml"
    changed.write_text(yaml.safe_dump(spec))
    r = run_kjob("submit", str(changed))
    assert r.code == 6, r
    err = " ".join(r.err.split())
    assert err.startswith(f'Error: MPIJob "smoke" already exists in namespace "{real.ns}" with a different spec (on the server: sha256:'), r
    assert "Error: hint: kjob submit --replace deletes it and submits this spec; or give the job another name" in err, r
    old_uid = real.job("mpijobs", "smoke", "v2beta1")["metadata"]["uid"]
    r = run_kjob("submit", str(changed), "--replace")
    assert (r.code, r.out) == (0, f"MPIJob {real.ns}/smoke replaced\n"), r
    new = real.job("mpijobs", "smoke", "v2beta1")
    assert new["metadata"]["uid"] != old_uid
    args = new["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["args"]
    assert "--epochs 3" in " ".join(args), args
    real.wait_pods("smoke", 2)  # the real operator made the new job's workers
