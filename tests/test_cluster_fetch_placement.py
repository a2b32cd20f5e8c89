"""Where fetch-ckpt's helper pod goes, and what it says while it waits: the claim's access
modes and the pods that hold it (kjob.cluster.claims), the helper's node affinity, a
ReadWriteOncePod claim in use refused at once (exit 6), and an image pull said, not
waited on silently. The same behaviours on the real scheduler: tests/cluster/test_real_fetch.py."""

from __future__ import annotations

import threading
import time

import pytest

from kjob.backend import FetchOptions
from kjob.cluster.backend import ClusterBackend
from kjob.cluster.claims import Placement, place
from kjob.cluster.fetch import helper_pod, locate, pulling
from kjob.errors import ClusterUnavailable, Conflict

from ckpt_helpers import CLAIM, HelperKubelet, create_job, helper_pods, mpijob, write_checkpoints

pytestmark = pytest.mark.timeout(120)

JOB = "ckpt"


def claim(*modes: str, name: str = CLAIM) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"accessModes": list(modes), "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Bound", "accessModes": list(modes)}}


def pod(name: str, node: str | None, phase: str = "Running", claim_name: str = CLAIM) -> dict:
    spec = {"containers": [{"name": "c", "image": "x"}],
            "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim_name}}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec, "status": {"phase": phase}}


# -- claims.place: pure ------------------------------------------------------------------------
def test_a_shared_or_unknown_or_unheld_claim_goes_anywhere():
    assert place(CLAIM, claim("ReadWriteMany"), [pod("a", "n1"), pod("b", "n2")]) == Placement()
    assert place(CLAIM, None, [pod("a", "n1")]) == Placement()
    assert place(CLAIM, claim("ReadWriteOnce"), []) == Placement()
    # Ended pods, unscheduled pods and pods of other claims hold nothing.
    others = [pod("a", "n1", "Succeeded"), pod("b", "n1", "Failed"), pod("c", None, "Pending"), pod("d", "n2", claim_name="other")]
    assert place(CLAIM, claim("ReadWriteOnce"), others) == Placement()
    assert place(CLAIM, claim("ReadWriteOncePod"), others) == Placement()


def test_a_read_write_once_claim_pins_the_helper_to_the_node_that_has_it_mounted():
    got = place(CLAIM, claim("ReadWriteOnce"), [pod("eval", "n2"), pod("old", "n1", "Succeeded")])
    assert got == Placement("n2", f'claim "{CLAIM}" is ReadWriteOnce and pod eval uses it on node n2')
    # A running holder wins over a pending one elsewhere (that one waits on Multi-Attach).
    assert place(CLAIM, claim("ReadWriteOnce"), [pod("a", "n1", "Pending"), pod("b", "n3")]).node == "n3"
    # Pending holders all on one node: that is where it will be attached.
    assert place(CLAIM, claim("ReadWriteOnce"), [pod("a", "n1", "Pending"), pod("b", "n1", "Pending")]).node == "n1"


def test_a_read_write_once_claim_wanted_on_several_nodes_and_mounted_on_none_is_refused():
    with pytest.raises(Conflict) as err:
        place(CLAIM, claim("ReadWriteOnce"), [pod("a", "n1", "Pending"), pod("b", "n2", "Pending")])
    assert err.value.exit_code == 6
    assert err.value.message == (f'claim "{CLAIM}" is ReadWriteOnce and pods on 2 nodes want it (a on n1, b on n2), none of them '
                                 "running: it is attached to at most one of those nodes and a new pod would wait on Multi-Attach too")


def test_a_read_write_once_pod_claim_in_use_is_refused_with_the_pod_that_holds_it():
    with pytest.raises(Conflict) as err:
        place(CLAIM, claim("ReadWriteOncePod"), [pod("tensorboard", "n1")])
    assert err.value.exit_code == 6
    assert err.value.message == (f'claim "{CLAIM}" is ReadWriteOncePod and pod tensorboard on n1 is using it: '
                                 "no other pod can mount it while that pod exists")
    assert "fetch when that pod has ended" in err.value.hint


def attachment(name: str, node: str, volume: str = "pv-1", attached: bool = True) -> dict:
    return {"metadata": {"name": name}, "spec": {"attacher": "csi.example", "nodeName": node,
                                                 "source": {"persistentVolumeName": volume}},
            "status": {"attached": attached}}


def test_a_volume_still_attached_after_its_pods_ended_takes_the_helper_to_that_node():
    bound = claim("ReadWriteOnce") | {"spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv-1"}}
    ended = [pod("train", "n1", "Succeeded")]
    vas = [attachment("va-other", "n3", volume="pv-2"), attachment("va-detached", "n4", attached=False),
           attachment("va-1", "n2")]
    assert place(CLAIM, bound, ended, vas) == Placement(
        "n2", f'claim "{CLAIM}" is ReadWriteOnce and its volume is still attached to node n2 (VolumeAttachment va-1)')
    # Nothing attached (or the attachments unreadable: empty), and no holder: anywhere.
    assert place(CLAIM, bound, ended, vas[:2]) == Placement()
    assert place(CLAIM, bound, ended) == Placement()
    # A pod that holds it decides; shared claims go anywhere whatever is attached.
    assert place(CLAIM, bound, [pod("eval", "n5")], vas).node == "n5"
    assert place(CLAIM, claim("ReadWriteMany") | {"spec": {"volumeName": "pv-1"}}, [], vas) == Placement()


# -- the helper's manifest ---------------------------------------------------------------------
def test_the_helper_is_required_on_the_claims_node_else_prefers_the_jobs_nodes():
    job = mpijob(JOB)
    target = locate(job)
    pinned = helper_pod(job, target, "h", Placement("n2", "why"), ["n1"])
    assert pinned["spec"]["affinity"] == {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]}}}
    loose = helper_pod(job, target, "h", Placement(), ["n3", "n1", "n3"])
    assert loose["spec"]["affinity"] == {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "preference": {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1", "n3"]}]}}]}}
    assert "affinity" not in helper_pod(job, target, "h")["spec"]


def test_pulling_is_read_from_the_newest_pull_event():
    p = {"metadata": {"name": "h"}, "spec": {"nodeName": "n1", "containers": [{"image": "big:1"}]}}

    def ev(reason, ts):
        return {"involvedObject": {"name": "h"}, "reason": reason, "lastTimestamp": ts}

    assert pulling(p, [ev("Scheduled", "t0"), ev("Pulling", "t1")]) == 'pulling image "big:1" on node n1 (since t1)'
    assert pulling(p, [ev("Pulling", "t1"), ev("Pulled", "t2")]) is None
    assert pulling(p, [ev("Pulling", "t1"), ev("BackOff", "t2")]) is None
    assert pulling(p, []) is None


# -- through the fake API server, with the real client ------------------------------------------
def core(kube):
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(kube.kubeconfig))


@pytest.fixture
def job(kube, tmp_path):
    """A job whose claim holds checkpoints; its pods are gone (no pod to exec in)."""
    create_job(kube, mpijob(JOB))
    write_checkpoints(tmp_path / "pvc" / JOB / "checkpoints", [1000, 2000])
    kube.exec.provide_claim("default", CLAIM, tmp_path / "pvc")
    return kube


def fetch(tmp_path, said: list[str]) -> list[dict]:
    backend = ClusterBackend()
    backend.notify = said.append
    return backend.fetch_checkpoints(JOB, FetchOptions(dest=tmp_path / "out", which="all"))


def test_a_read_write_once_pod_claim_held_by_another_pod_fails_at_once_and_makes_no_helper(job, tmp_path):
    api = core(job)
    api.create_namespaced_persistent_volume_claim("default", claim("ReadWriteOncePod"))
    api.create_namespaced_pod("default", pod("tensorboard", "node-2"))
    job.pod_running("tensorboard")
    with HelperKubelet(job, JOB) as kubelet:
        start = time.monotonic()
        with pytest.raises(Conflict, match=f'claim "{CLAIM}" is ReadWriteOncePod and pod tensorboard on node-2 is using it'):
            fetch(tmp_path, [])
        assert time.monotonic() - start < 5
    assert kubelet.seen == set() and job.requests("create", "pods") == 1  # tensorboard's only


def test_a_read_write_once_claim_sends_the_helper_to_its_node_and_says_so(job, tmp_path):
    api = core(job)
    api.create_namespaced_persistent_volume_claim("default", claim("ReadWriteOnce"))
    api.create_namespaced_pod("default", pod("eval", "node-2"))
    job.pod_running("eval")
    said: list[str] = []
    with HelperKubelet(job, JOB) as kubelet:
        got = fetch(tmp_path, said)
    assert len(got) == 2 and helper_pods(job, JOB) == []
    terms = kubelet.manifests[0]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-2"]}]}]
    assert said[0] == f'helper pod goes to node node-2: claim "{CLAIM}" is ReadWriteOnce and pod eval uses it on node node-2'


def test_an_image_pull_is_said_and_a_pull_past_the_timeout_names_the_image(job, tmp_path, monkeypatch):
    monkeypatch.setenv("KJOB_FETCH_POD_TIMEOUT", "1.5")
    said: list[str] = []

    def kubelet():  # schedules the helper and starts a pull that does not end in time
        for _ in range(500):
            pods = helper_pods(job, JOB)
            if pods:
                job.event(pods[0]["metadata"]["name"], "Pulling", 'Pulling image "ghcr.io/example/kjob-trainer:1"', type_="Normal")
                return
            time.sleep(0.01)

    t = threading.Thread(target=kubelet)
    t.start()
    with pytest.raises(ClusterUnavailable, match=r'did not start within 1.5 s: pulling image "ghcr.io/example/kjob-trainer:1"') as err:
        fetch(tmp_path, said)
    t.join()
    assert "KJOB_FETCH_IMAGE" in err.value.hint
    assert any(line.startswith("waiting for helper pod ") and 'pulling image "ghcr.io/example/kjob-trainer:1"' in line for line in said)
    assert helper_pods(job, JOB) == []
