"""fetch-ckpt's helper pod on the real control plane (issue 16, item 2): the real scheduler
places it, so where it lands is observed, not assumed. A running job pod that mounts the
claim is exec'd in and no pod is made; a ReadWriteOnce claim held on kwok-node-1 takes
the helper there (the scheduler alone would spread it to kwok-node-0); a ReadWriteOncePod
claim in use is exit 6 at once (the real scheduler would leave a helper Pending); a PV's
nodeAffinity is honoured by the scheduler itself.

The jobs are MPIJobs as `kjob render` makes them with `runPolicy.suspend` (mpi-operator
makes no pods), so the only pods are the ones a test makes: an "eval" pod holding the
claim, and kjob's helper. Exec in any pod sees <root>/checkpoints at /checkpoints."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import yaml

from ckpt_helpers import write_checkpoints
from waiting import time_scale, wait_for
from kjob.render.manifests import render_objects
from kjob.spec.load import load_spec

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240 * time_scale())]

JOB = "fetchme"
NODE_0, NODE_1 = "kwok-node-0", "kwok-node-1"


@pytest.fixture
def volumes(real):
    """make(claim, mode, node=None): a PV (hostPath; nodeAffinity to `node` if given)
    bound to a new claim of access mode `mode`; the PVs are deleted after."""
    made: list[str] = []

    def make(claim: str, mode: str, node: str | None = None) -> None:
        pv = f"{real.ns}-{claim}"[:63]
        spec = {"capacity": {"storage": "1Gi"}, "accessModes": [mode], "storageClassName": "",
                "persistentVolumeReclaimPolicy": "Delete", "hostPath": {"path": f"/nonexistent/{claim}"},
                "claimRef": {"namespace": real.ns, "name": claim}}
        if node:
            spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}
        real.api.create("/api/v1/persistentvolumes", {"metadata": {"name": pv}, "spec": spec})
        made.append(pv)
        real.api.create(real.path("persistentvolumeclaims"), {"metadata": {"name": claim}, "spec": {
            "accessModes": [mode], "storageClassName": "", "volumeName": pv, "resources": {"requests": {"storage": "1Gi"}}}})
        wait_for(f"claim {claim} bound", lambda: (real.api.get(real.path("persistentvolumeclaims", claim)) or {})
                 .get("status", {}).get("phase") == "Bound", 30 * time_scale(), interval=0.2)

    yield make
    for pv in made:
        real.api.delete(f"/api/v1/persistentvolumes/{pv}")


@pytest.fixture(autouse=True)
def _helper_timeout(monkeypatch):
    # A helper the scheduler cannot place fails the test in seconds, not kjob's 180.
    monkeypatch.setenv("KJOB_FETCH_POD_TIMEOUT", str(30 * time_scale()))


def suspended_job(real, claim: str, tmp_path) -> dict:
    """examples/smoke.yaml rendered for `claim`, created suspended; its checkpoints written."""
    spec = yaml.safe_load(Path("examples/smoke.yaml").read_text())
    spec["name"], spec["checkpoints"]["claimName"] = JOB, claim
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    job = next(o for o in render_objects(load_spec(tmp_path / "job.yaml")) if o["kind"] == "MPIJob")
    job["metadata"]["namespace"] = real.ns
    job["spec"]["runPolicy"]["suspend"] = True
    real.api.create(real.path("mpijobs", group="kubeflow.org/v2beta1"), job)
    shutil.rmtree(real.checkpoints() / JOB, ignore_errors=True)
    return write_checkpoints(real.checkpoints() / JOB / "checkpoints", [200_000, 100_000])


def eval_pod(real, claim: str, node: str, *, cpu: str = "32") -> str:
    """A Running pod (not the job's) that holds `claim` on `node`; its CPU request makes
    the scheduler's spreading prefer the other node for anything else."""
    real.api.create(real.path("pods"), {"metadata": {"name": "eval"}, "spec": {
        "nodeName": node, "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "eval", "image": "tensorboard:1", "resources": {"requests": {"cpu": cpu}},
                        "volumeMounts": [{"name": "ckpt", "mountPath": "/checkpoints"}]}],
        "volumes": [{"name": "ckpt", "persistentVolumeClaim": {"claimName": claim}}]}})
    wait_for("eval Running", lambda: (real.api.get(real.path("pods", "eval")) or {}).get("status", {}).get("phase") == "Running",
             60 * time_scale(), interval=0.2)
    return "eval"


def helper_nodes(real) -> list[str]:
    """The node of every helper pod the real scheduler placed (from its Scheduled Events:
    they outlive the helper, which kjob deletes)."""
    events = real.api.items(real.path("events"), fieldSelector="reason=Scheduled")
    return [e["message"].rsplit(" to ", 1)[1] for e in events
            if e["involvedObject"]["name"].startswith(f"{JOB}-fetch-")]


def test_a_running_job_pod_that_mounts_the_claim_is_exec_d_in_and_no_pod_is_made(real, run_kjob, tmp_path):
    shutil.rmtree(real.checkpoints() / "smoke", ignore_errors=True)
    index = write_checkpoints(real.checkpoints() / "smoke" / "checkpoints", [100_000])
    assert run_kjob("submit", "examples/smoke.yaml").code == 0
    real.wait_pods("smoke", 2)
    r = run_kjob("fetch-ckpt", "smoke", "--dest", str(tmp_path / "got"))
    assert r.code == 0, r
    assert (tmp_path / "got" / index["latest"]).stat().st_size == 100_000
    assert "from pod smoke-" in r.err and "-fetch-" not in r.err, r
    assert real.api.items(real.path("pods"), labelSelector="kjob.dev/helper-for=smoke") == []
    events = real.api.items(real.path("events"), fieldSelector="reason=Scheduled")
    assert not [e for e in events if "-fetch-" in e["involvedObject"]["name"]]


def test_a_read_write_once_claim_takes_the_helper_to_the_node_that_holds_it(real, run_kjob, volumes, tmp_path):
    volumes("ckpt-rwo", "ReadWriteOnce")
    index = suspended_job(real, "ckpt-rwo", tmp_path)
    eval_pod(real, "ckpt-rwo", NODE_1)
    r = run_kjob("fetch-ckpt", JOB, "--all", "--dest", str(tmp_path / "got"))
    assert r.code == 0, r
    assert sorted(p.name for p in (tmp_path / "got").iterdir()) == [e["file"] for e in index["checkpoints"]] + ["index.json"]
    assert f'helper pod goes to node {NODE_1}: claim "ckpt-rwo" is ReadWriteOnce and pod eval uses it on node {NODE_1}' in r.err, r
    assert helper_nodes(real) == [NODE_1]  # placed there by the real scheduler
    wait_for("helper pod deleted", lambda: not real.api.items(real.path("pods"), labelSelector=f"kjob.dev/helper-for={JOB}"),
             30 * time_scale(), interval=0.2)


def test_a_read_write_once_pod_claim_in_use_is_exit_6_at_once_and_makes_no_pod(real, run_kjob, volumes, tmp_path):
    volumes("ckpt-rwop", "ReadWriteOncePod")
    suspended_job(real, "ckpt-rwop", tmp_path)
    eval_pod(real, "ckpt-rwop", NODE_0)
    start = time.monotonic()
    r = run_kjob("fetch-ckpt", JOB, "--dest", str(tmp_path / "got"))
    took = time.monotonic() - start
    assert r.code == 6, r
    assert r.err.splitlines()[0] == (f'Error: claim "ckpt-rwop" is ReadWriteOncePod and pod eval on {NODE_0} is using it: '
                                     "no other pod can mount it while that pod exists"), r
    assert took < 10 * time_scale(), took
    assert real.api.items(real.path("pods"), labelSelector=f"kjob.dev/helper-for={JOB}") == []
    assert not (tmp_path / "got").exists()

    # Why kjob refuses instead of trying: the real scheduler leaves any second pod of
    # that claim Pending (it would have been a silent wait into KJOB_FETCH_POD_TIMEOUT).
    second = {"metadata": {"name": "second"}, "spec": {"containers": [{"name": "c", "image": "x"}],
              "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "ckpt-rwop"}}]}}
    real.api.create(real.path("pods"), second)

    def unschedulable():
        conds = (real.api.get(real.path("pods", "second")) or {}).get("status", {}).get("conditions") or []
        return next((c["message"] for c in conds if c["type"] == "PodScheduled" and c["status"] == "False"), None)

    assert "ReadWriteOncePod" in wait_for("second pod unschedulable", unschedulable, 30 * time_scale(), interval=0.2)


def test_a_volume_bound_to_one_node_places_the_helper_there(real, run_kjob, volumes, tmp_path):
    """A local PV's nodeAffinity: nothing to do for kjob, the scheduler honours it."""
    volumes("ckpt-local", "ReadWriteOnce", node=NODE_1)
    suspended_job(real, "ckpt-local", tmp_path)
    r = run_kjob("fetch-ckpt", JOB, "--dest", str(tmp_path / "got"))
    assert r.code == 0, r
    assert helper_nodes(real) == [NODE_1]


def test_a_volume_still_attached_after_its_pods_ended_takes_the_helper_to_that_node(real, run_kjob, volumes, tmp_path):
    """No pod holds the ReadWriteOnce claim, but its volume has not detached from
    kwok-node-1 yet (a VolumeAttachment says so, as the attach-detach controller leaves it
    until the detach completes): the helper goes there rather than wait on Multi-Attach."""
    volumes("ckpt-attached", "ReadWriteOnce")
    pv = real.api.get(real.path("persistentvolumeclaims", "ckpt-attached"))["spec"]["volumeName"]
    suspended_job(real, "ckpt-attached", tmp_path)
    # A pod that does not mount the claim takes most of kwok-node-1's CPU, so the scheduler
    # alone would put the helper on kwok-node-0.
    real.api.create(real.path("pods"), {"metadata": {"name": "busy"}, "spec": {
        "nodeName": NODE_1, "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "busy", "image": "busy:1", "resources": {"requests": {"cpu": "32"}}}]}})
    va = f"{real.ns}-attached"
    real.api.create("/apis/storage.k8s.io/v1/volumeattachments", {"metadata": {"name": va}, "spec": {
        "attacher": "csi.kjob.test", "nodeName": NODE_1, "source": {"persistentVolumeName": pv}}})
    try:
        real.api.merge_patch(f"/apis/storage.k8s.io/v1/volumeattachments/{va}/status", {"status": {"attached": True}})
        r = run_kjob("fetch-ckpt", JOB, "--dest", str(tmp_path / "got"))
        assert r.code == 0, r
        assert (f'helper pod goes to node {NODE_1}: claim "ckpt-attached" is ReadWriteOnce and its volume is still '
                f'attached to node {NODE_1} (VolumeAttachment {va})') in r.err, r
        assert helper_nodes(real) == [NODE_1]
    finally:
        real.api.delete(f"/apis/storage.k8s.io/v1/volumeattachments/{va}")
