"""Issue 24 point 1 on the real control plane with the real Kueue (v0.19.2, the `kueue`
fixture): a job over its ClusterQueue's quota stays queued and kjob says Kueue's reason; a
LocalQueue that does not exist stops `submit` (exit 5); a job of higher priority makes
Kueue preempt a running one, `status` says so, and the preempted job is requeued and runs
again while one `kjob logs -f` follows it throughout. Each `kjob status` output is printed
(pytest -rP shows it)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from kueue import API, CLUSTER_QUEUE
from kjob.names import JOBSET_NAME_LABEL
from test_real_rbac import ROLE, as_kjob_user
from test_real_trainjob import apply_runtime, runtime_docs
from test_real_trainjob import spec_file as trainjob_spec
from test_real_why import high_priority, spec_file, status  # noqa: F401 (high_priority: a fixture)
from waiting import time_scale, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300 * time_scale())]


def workload(real, job: str) -> dict | None:
    found = [w for w in real.api.items(f"{API}/namespaces/{real.ns}/workloads")
             if any(ref.get("name") == job for ref in w["metadata"].get("ownerReferences") or [])]
    return found[0] if found else None


def condition(real, job: str, kind: str) -> dict | None:
    w = workload(real, job) or {}
    return next((c for c in w.get("status", {}).get("conditions", []) if c["type"] == kind), None)


def test_a_job_over_the_quota_stays_queued_with_kueues_reason(real, local_queue, kueue, run_kjob, tmp_path):
    # Three workers of 8 GPUs: 24, over the ClusterQueue's 16 (the two kwok nodes' GPUs).
    assert run_kjob("submit", spec_file(tmp_path, "big", workers=3, gpusPerWorker=8, queue=local_queue)).code == 0
    reason = wait_for("Kueue's verdict on big", lambda: (c := condition(real, "big", "QuotaReserved")) and c["status"] == "False"
                      and "nvidia.com/gpu" in c.get("message", "") and c["message"], 60, interval=0.2)
    out = status(run_kjob, "big")
    assert f"State: Pending Message: queued in LocalQueue {local_queue} (ClusterQueue {CLUSTER_QUEUE}): {reason}" in out, out
    assert "insufficient quota for nvidia.com/gpu" in out, out
    assert real.pods("big") == []  # Kueue keeps it suspended: no pods at all
    row = next(line for line in run_kjob("list").out.splitlines() if line.startswith("big "))
    assert row.split()[2] == "Pending", row  # not the operator's Suspended


def test_a_pytorchjob_over_the_quota_is_queued_too(real, local_queue, kueue, run_kjob, tmp_path):
    spec = yaml.safe_load(Path("examples/resnext50-torchrun.yaml").read_text()) | {"workers": 3, "gpusPerWorker": 8, "queue": local_queue}
    (tmp_path / "torch.yaml").write_text(yaml.safe_dump(spec))
    assert run_kjob("submit", str(tmp_path / "torch.yaml")).code == 0
    name = spec["name"]
    wait_for(f"Kueue's verdict on {name}", lambda: (c := condition(real, name, "QuotaReserved")) and c["status"] == "False"
             and "nvidia.com/gpu" in c.get("message", ""), 60, interval=0.2)
    out = status(run_kjob, name)
    assert f"State: Pending Message: queued in LocalQueue {local_queue} (ClusterQueue {CLUSTER_QUEUE}): couldn't assign flavors to pod set" in out, out
    assert real.pods(name) == []


def test_a_local_queue_that_does_not_exist_stops_submit_with_exit_5(real, kueue, run_kjob, tmp_path):
    r = run_kjob("submit", spec_file(tmp_path, "lost", queue="nowhere"))
    assert r.code == 5, r
    assert f'LocalQueue "nowhere" not found in namespace "{real.ns}"' in r.err, r.err
    assert real.job("mpijobs", "lost", "v2beta1") is None


def test_kueue_preempts_for_a_higher_priority_job_and_requeues_the_lower_one(real, local_queue, kueue, run_kjob, tmp_path, high_priority):
    # low takes the whole quota (2 x 8 GPUs) and runs; a `kjob logs -f low` follows it.
    assert run_kjob("submit", spec_file(tmp_path, "low", gpusPerWorker=8, queue=local_queue)).code == 0
    first = real.pod("low", "launcher", timeout=90)
    real.append_log(first, ["low: before the preemption"])
    # kwok never ends the log stream of a deleted pod (a kubelet ends it with the
    # container): the follower finds the pod gone when it reconnects a silent stream.
    env = {**os.environ, "KUBECONFIG": str(real.kubeconfig), "KJOB_LOG_IDLE_SECONDS": "1"}
    follow = subprocess.Popen([sys.executable, "-m", "kjob", "logs", "low", "-f"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, text=True)
    shown: list[str] = []
    err: list[str] = []
    readers = [threading.Thread(target=lambda: shown.extend(follow.stdout), daemon=True),
               threading.Thread(target=lambda: err.extend(follow.stderr), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        wait_for("the follower shows low's line", lambda: "low: before the preemption\n" in shown, 60, interval=0.2)
        # urgent, of higher priority, wants the same 16 GPUs: Kueue evicts low to admit it.
        assert run_kjob("submit", spec_file(tmp_path, "urgent", gpusPerWorker=8, queue=local_queue, priorityClassName=high_priority)).code == 0
        wait_for("low preempted by Kueue", lambda: (c := condition(real, "low", "Preempted")) and c["status"] == "True", 90, interval=0.2)
        real.pod("urgent", "launcher", timeout=90)
        wait_for("low's pods gone", lambda: real.pods("low") == [], 60, interval=0.2)
        out = status(run_kjob, "low")
        assert (f"State: Pending Message: preempted by Kueue at " in out and f"for MPIJob {real.ns}/urgent (prioritization in the ClusterQueue); "
                f"Kueue requeues it, and it runs again when LocalQueue {local_queue} (ClusterQueue {CLUSTER_QUEUE}) admits it; "
                f"queued in LocalQueue {local_queue} (ClusterQueue {CLUSTER_QUEUE}):" in out), out
        real.wait_job_condition("mpijobs", "urgent", "v2beta1", "Running")
        assert "State: Running" in status(run_kjob, "urgent")

        wait_for("the follower says why low waits", lambda: "waiting for the launcher pod of low: preempted by Kueue" in "".join(err), 60, interval=0.2)

        # urgent goes; Kueue admits low again, its pods come back, and the follower reads on.
        assert run_kjob("delete", "urgent", "--now").code == 0
        again = wait_for("low's new launcher Running", lambda: next((p["metadata"]["name"] for p in real.pods("low")
                                                                  if p["metadata"]["name"].startswith("low-launcher") and p["metadata"]["name"] != first
                                                                  and p.get("status", {}).get("phase") == "Running"), None), 90, interval=0.2)
        wait_for("low Running again", lambda: (c := condition(real, "low", "Admitted")) and c["status"] == "True", 60, interval=0.2)
        real.wait_job_condition("mpijobs", "low", "v2beta1", "Running")
        assert "State: Running" in status(run_kjob, "low")
        real.append_log(again, ["low: after the requeue"])
        time.sleep(1.0)
        real.end_pod(again, 0)
        follow.wait(90 * time_scale())
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    for reader in readers:
        reader.join(10)
    follow.stdout.close(), follow.stderr.close()
    out, said = "".join(shown), "".join(err)
    os.write(1, f"$ kjob logs low -f\n{out}(stderr)\n{said}\n".encode())
    assert follow.returncode == 0, said
    assert "low: before the preemption\n" in out and "low: after the requeue\n" in out, out
    assert "waiting for the launcher pod of low: preempted by Kueue" in said, said
    assert said.rstrip().endswith("job low Succeeded"), said


def test_the_shipped_role_reads_kueue_and_without_its_kueue_rule_kjob_warns(real, local_queue, kueue, run_kjob, tmp_path):
    # manifests/rbac/kjob-user.yaml as a ServiceAccount's Role: submit checks the
    # LocalQueue and status gives Kueue's reason.
    kc = ["--kubeconfig", as_kjob_user(real, tmp_path, ROLE["rules"])]
    r = run_kjob("submit", spec_file(tmp_path, "big", workers=3, gpusPerWorker=8, queue=local_queue), *kc)
    assert r.code == 0 and "warning" not in r.err, r
    wait_for("Kueue's verdict on big", lambda: (c := condition(real, "big", "QuotaReserved")) and c["status"] == "False", 60, interval=0.2)
    out = " ".join(run_kjob("status", "big", *kc).out.split())
    assert f"State: Pending Message: queued in LocalQueue {local_queue} (ClusterQueue {CLUSTER_QUEUE}): couldn't assign flavors" in out, out
    # Without it: submit cannot check the LocalQueue, status cannot read the Workload;
    # both still work and say so.
    rules = [rule for rule in ROLE["rules"] if rule["apiGroups"] != ["kueue.x-k8s.io"]]
    assert len(rules) == len(ROLE["rules"]) - 1, "the shipped Role has no Kueue rule"
    kc = ["--kubeconfig", as_kjob_user(real, tmp_path, rules, name="kjob-narrow")]
    r = run_kjob("submit", spec_file(tmp_path, "other", queue=local_queue), *kc)
    assert r.code == 0 and f"warning: forbidden: cannot get localqueues \"{local_queue}\"" in " ".join(r.err.split()), r
    out = " ".join(run_kjob("status", "big", *kc).out.split())
    assert ("Warning: forbidden: cannot list workloads in namespace" in out
            and f"whether Kueue holds the job back (LocalQueue {local_queue}) is not shown" in out), out


def test_a_trainjob_over_the_quota_is_queued_too(real, local_queue, kueue, run_kjob, tmp_path):
    """Kueue's trainer.kubeflow.org/trainjob integration (on: Trainer v2 runs before Kueue
    starts) holds a TrainJob as it does the operators' kinds, and kjob says why."""
    for doc in runtime_docs():
        apply_runtime(real.api, doc)
    assert run_kjob("submit", trainjob_spec(tmp_path, "mpi", "tj-big", workers=3, gpusPerWorker=8, queue=local_queue)).code == 0
    wait_for("Kueue's verdict on tj-big", lambda: (c := condition(real, "tj-big", "QuotaReserved")) and c["status"] == "False"
             and "nvidia.com/gpu" in c.get("message", ""), 60, interval=0.2)
    out = status(run_kjob, "tj-big")
    assert f"State: Pending Message: queued in LocalQueue {local_queue} (ClusterQueue {CLUSTER_QUEUE}): couldn't assign flavors to pod set" in out, out
    assert "insufficient quota for nvidia.com/gpu" in out, out
    assert real.api.items(real.path("pods"), labelSelector=f"{JOBSET_NAME_LABEL}=tj-big") == []
