"""Issue 21 point 5: every kjob command on a TrainJob, on the real Trainer v2.3.0 and
JobSet v0.12.0 controllers (with their webhooks), for both of kjob's own runtimes
(manifests/runtimes: kjob-openmpi, whose node 0 runs mpirun and the other nodes sshd;
kjob-torch, torchrun on every node). kwok plays the pods: the test writes what the
containers print and ends them (nodeside.py); exec'd `kill` reaches the stand-in PID 1
(pid1.py), which records the signal.

Not tested: `logs --previous`. Both runtimes run their pods with restartPolicy Never, so a
container never restarts in place; a failure restarts the whole JobSet with new pods,
whose logs `kjob logs` reads as any pod's."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

from ckpt_helpers import write_checkpoints
from waiting import time_scale, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300 * time_scale())]

GROUP = "trainer.kubeflow.org/v1alpha1"
RUNTIMES = Path("manifests/runtimes")
JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
# launcher of the spec -> (kjob's runtime, the signal delete sends to node 0, the program named)
LAUNCHERS = {"mpi": ("kjob-openmpi", "SIGUSR1", "mpirun"), "torchrun": ("kjob-torch", "SIGTERM", "torchrun")}


def runtime_docs() -> list[dict]:
    return [yaml.safe_load(p.read_text()) for p in sorted(RUNTIMES.glob("*.yaml"))]


def apply_runtime(api, doc: dict) -> None:
    """Create the ClusterTrainingRuntime (through the trainer's validating webhook), or
    leave the one there if another test module made it already."""
    api.create(f"/apis/{GROUP}/clustertrainingruntimes", doc, exist_ok=True)


@pytest.fixture(scope="module")
def kjob_runtimes(trainer_v2):
    """kjob's two runtimes on the real cluster, as the README says to install them."""
    for doc in runtime_docs():
        apply_runtime(trainer_v2.api, doc)
    assert {d["metadata"]["name"] for d in runtime_docs()} == {rt for rt, _, _ in LAUNCHERS.values()}
    yield trainer_v2


def spec_file(tmp_path, launcher: str, name: str, **changes) -> str:
    """examples/smoke-trainjob.yaml (two nodes, CPU only) on `launcher`'s runtime."""
    spec = yaml.safe_load(Path("examples/smoke-trainjob.yaml").read_text())
    spec.update(name=name, launcher=launcher, **changes)
    spec.pop("local", None)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def trainjob(real, name: str) -> dict | None:
    return real.api.get(real.path("trainjobs", name, group=GROUP))


def node_pods(real, name: str, count: int, phase: str = "Running") -> list[str]:
    """The names of the TrainJob's node pods in completion-index order, once `count` are in `phase`."""
    def found():
        pods = [p for p in real.api.items(real.path("pods"), labelSelector=f"{JOBSET_NAME}={name}")
                if p.get("status", {}).get("phase") == phase and not p["metadata"].get("deletionTimestamp")]
        pods.sort(key=lambda p: int(p["metadata"]["labels"][COMPLETION_INDEX]))
        return [p["metadata"]["name"] for p in pods] if len(pods) >= count else None
    try:
        return wait_for(f"{count} {phase} pods of TrainJob {name}", found, 90 * time_scale(), interval=0.2)
    except TimeoutError as e:
        raise TimeoutError(f"{e}; {real.describe(name)}; TrainJob status {(trainjob(real, name) or {}).get('status')}") from None


def wait_running(real, name: str, nodes: int) -> None:
    """Until the trainer has copied JobSet's count of ready pods into jobsStatus."""
    def ready():
        st = (trainjob(real, name) or {}).get("status") or {}
        return any(j.get("name") == "node" and j.get("ready") == 1 for j in st.get("jobsStatus") or [])
    wait_for(f"TrainJob {name} node job ready", ready, 60 * time_scale(), interval=0.2)


def _later(fn, *args) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_submit_status_logs_list_fetch_and_delete_with_a_checkpoint(real, kjob_runtimes, run_kjob, tmp_path, launcher):
    runtime, signal_name, program = LAUNCHERS[launcher]
    name = f"tj-{launcher}"
    shutil.rmtree(real.checkpoints() / name, ignore_errors=True)
    index = write_checkpoints(real.checkpoints() / name / "checkpoints", [300_000, 200_000, 100_000])
    spec = spec_file(tmp_path, launcher, name)

    r = run_kjob("submit", spec)
    assert (r.code, r.out) == (0, f"TrainJob {real.ns}/{name} created\n"), r
    stored = trainjob(real, name)
    assert stored["spec"]["runtimeRef"]["name"] == runtime
    r = run_kjob("submit", spec)
    assert r.code == 0 and "is already submitted with this spec" in r.out, r
    assert trainjob(real, name)["metadata"]["uid"] == stored["metadata"]["uid"]

    pods = node_pods(real, name, 2)
    assert [p.rsplit("-", 1)[0] for p in pods] == [f"{name}-node-0-0", f"{name}-node-0-1"], pods
    wait_running(real, name, 2)
    st = run_kjob("status", name)
    assert st.code == 0 and "State:     Running" in st.out, st
    assert "  node-0 " in st.out and "  node-1 " in st.out, st

    real.append_log(pods[0], ["epoch 1 top1 12.5", "epoch 2 top1 25.0"])
    real.append_log(pods[1], ["node 1 up", "node 1 ready"])
    r = run_kjob("logs", name)
    assert (r.code, r.out) == (0, "epoch 1 top1 12.5\nepoch 2 top1 25.0\n"), r
    r = run_kjob("logs", name, "--replica", "node-1")
    assert (r.code, r.out) == (0, "node 1 up\nnode 1 ready\n"), r
    r = run_kjob("logs", name, "--replica", "node-1", "--tail", "1")
    assert (r.code, r.out) == (0, "node 1 ready\n"), r
    r = run_kjob("logs", name, "--replica", "node-1", "--since", "1h")
    assert (r.code, r.out) == (0, "node 1 up\nnode 1 ready\n"), r
    time.sleep(3)
    real.append_log(pods[1], ["node 1 later"])
    r = run_kjob("logs", name, "--replica", "node-1", "--since", "2s")
    assert (r.code, r.out) == (0, "node 1 later\n"), r
    r = run_kjob("logs", name, "--all")
    assert r.code == 0 and "[node-0] epoch 2 top1 25.0\n" in r.out and "[node-1] node 1 ready\n" in r.out, r
    r = run_kjob("logs", name, "--replica", "launcher")
    assert r.code == 5 and "has no pod for launcher (replicas: node-0, node-1)" in r.err, r

    r = run_kjob("fetch-ckpt", name, "--all", "--dest", str(tmp_path / "got"))
    assert r.code == 0, r
    for entry in index["checkpoints"]:
        assert _sha256(tmp_path / "got" / entry["file"]) == entry["sha256"], entry
    r = run_kjob("list")
    assert r.code == 0 and name in r.out and "TrainJob" in r.out, r

    before = real.signals().count(signal_name)

    def trainer():  # node 0's PID 1 answers the signal: rank 0 checkpoints, exits 143
        wait_for(f"{signal_name} at node 0's PID 1", lambda: real.signals().count(signal_name) > before, 60, interval=0.05)
        real.end_pod(pods[0], 143)

    _later(trainer)
    r = run_kjob("delete", name, "--wait")
    assert r.code == 0, r
    said = " ".join((r.err + r.out).split())
    assert f"asked the trainer to checkpoint ({signal_name} to {program}) in pod {pods[0]}" in said, r
    assert "(exit 143)" in r.out, r
    assert trainjob(real, name) is None


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_conflict_follow_to_complete_then_replace_and_wait(real, kjob_runtimes, run_kjob, tmp_path, launcher):
    name = f"done-{launcher}"
    spec = spec_file(tmp_path, launcher, name)
    assert run_kjob("submit", spec).code == 0
    pods = node_pods(real, name, 2)
    changed = spec_file(tmp_path, f"{launcher}", name, train={**yaml.safe_load(Path(spec).read_text())["train"], "epochs": 3})
    r = run_kjob("submit", changed)
    assert r.code == 6, r
    err = " ".join(r.err.split())
    assert f'TrainJob "{name}" already exists in namespace "{real.ns}" with a different spec' in err, r
    real.append_log(pods[0], ["step 1"])

    def finish(pods):
        time.sleep(1.0)
        real.append_log(pods[0], ["done"])
        for pod in pods:  # torch: every node ends; Open MPI: node 0's mpirun (success policy: index 0)
            real.end_pod(pod, 0)

    _later(finish, pods)
    r = run_kjob("logs", name, "-f")
    assert (r.code, r.out) == (0, "step 1\ndone\n"), r
    assert r.err.splitlines()[-1] == f"job {name} Succeeded", r
    st = run_kjob("status", name)
    assert st.code == 0 and "State:     Succeeded" in st.out, st

    # The same spec over the finished job would be a no-op that never runs it again.
    r = run_kjob("submit", spec)
    err = " ".join(r.err.split())
    assert r.code == 6 and f"job {name} Succeeded at " in err and "`--replace` runs it again" in err, r
    old_uid = trainjob(real, name)["metadata"]["uid"]

    def succeed_again():
        new = wait_for("the new TrainJob's pods", lambda: (lambda j: j and j["metadata"]["uid"] != old_uid)(trainjob(real, name)), 60, interval=0.2)
        assert new
        for pod in node_pods(real, name, 2):
            real.end_pod(pod, 0)

    _later(succeed_again)
    r = run_kjob("submit", changed, "--replace", "--wait")
    assert r.code == 0 and r.out.startswith(f"TrainJob {real.ns}/{name} replaced\n"), r
    assert r.err.splitlines()[-1] == f"job {name} Succeeded", r
    new = trainjob(real, name)
    assert new["metadata"]["uid"] != old_uid
    assert "--epochs 3" in " ".join(new["spec"]["trainer"].get("args") or []), new["spec"]["trainer"]


def test_a_pod_that_fits_no_node_is_pending_with_the_schedulers_reason(real, kjob_runtimes, run_kjob, tmp_path):
    spec = spec_file(tmp_path, "mpi", "hog", gpusPerWorker=9)
    assert run_kjob("submit", spec).code == 0
    reason = "Insufficient nvidia.com/gpu."
    wait_for("the scheduler's verdict", lambda: any(reason in (c.get("message") or "")
                                                    for p in real.api.items(real.path("pods"), labelSelector=f"{JOBSET_NAME}=hog")
                                                    for c in p.get("status", {}).get("conditions", [])), 60)
    st = run_kjob("status", "hog")
    assert st.code == 0 and "State:     Pending" in st.out and reason in st.out, st


def test_list_shows_all_three_kinds_in_one_namespace(real, kjob_runtimes, run_kjob, tmp_path):
    for spec in ("examples/smoke.yaml", "examples/resnext50-torchrun.yaml", spec_file(tmp_path, "torchrun", "tj-list")):
        assert run_kjob("submit", spec).code == 0, spec
    r = run_kjob("list")
    assert r.code == 0, r
    rows = {line.split()[0]: line for line in r.out.splitlines()[1:] if line.strip()}
    assert {"smoke", "resnext50-torchrun", "tj-list"} <= set(rows), r.out
    assert "MPIJob" in rows["smoke"] and "PyTorchJob" in rows["resnext50-torchrun"] and "TrainJob" in rows["tj-list"], r.out


def test_refused_specs_and_missing_runtimes(real, kjob_runtimes, run_kjob, tmp_path):
    # PET_* is torchrun's and Trainer's: refused before anything is sent.
    r = run_kjob("submit", spec_file(tmp_path, "torchrun", "pet", env={"PET_NNODES": "3"}))
    assert r.code == 2 and "PET_NNODES" in r.err, r
    assert trainjob(real, "pet") is None

    # A runtime that is not there: exit 5 naming what to install.
    r = run_kjob("submit", spec_file(tmp_path, "torchrun", "nort", runtime="no-such-runtime"))
    assert r.code == 5 and "no-such-runtime" in r.err, r
    api = real.api
    torch_doc = next(d for d in runtime_docs() if d["metadata"]["name"] == "kjob-torch")
    api.delete(f"/apis/{GROUP}/clustertrainingruntimes/kjob-torch")
    try:
        wait_for("kjob-torch gone", lambda: api.get(f"/apis/{GROUP}/clustertrainingruntimes/kjob-torch") is None, 30)
        r = run_kjob("submit", spec_file(tmp_path, "torchrun", "nort2"))
        assert r.code == 5, r
        assert "kubectl apply -f manifests/runtimes/kjob-torch.yaml" in " ".join(r.err.split()), r
    finally:
        apply_runtime(api, torch_doc)

    # A torch runtime that injects torchrun's variables into a container its `node` job
    # does not have: the trainer's validating webhook (its torch plugin) refuses every
    # TrainJob on it. The denial is HTTP 403, as RBAC's is; kjob tells it as the refused
    # spec it is (exit 2), in the webhook's words, not as a permission problem (exit 4).
    # (A runtimePatches entry naming a replicated job the runtime has not is not refused:
    # v2.3.0's webhook ignores the error building the runtime's info and skips the check.)
    other = {"apiVersion": GROUP, "kind": "ClusterTrainingRuntime", "metadata": {"name": f"{real.ns}-sidecar"[:63]},
             "spec": {"mlPolicy": {"numNodes": 1, "torch": {"envInjection": {"targets": [{"jobName": "node", "containerNames": ["sidecar"]}]}}},
                      "template": {"spec": {"replicatedJobs": [
                          {"name": "node", "template": {"metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                                                        "spec": {"template": {"spec": {"containers": [
                                                            {"name": "node", "image": "kjob.invalid/x:1", "command": ["torchrun"]}]}}}}}]}}}}
    api.create(f"/apis/{GROUP}/clustertrainingruntimes", other)
    try:
        r = run_kjob("submit", spec_file(tmp_path, "torchrun", "refused", runtime=other["metadata"]["name"]))
        err = " ".join(r.err.split())
        assert r.code == 2, r
        assert 'admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request' in err, r
        assert 'envInjection target podSet "node" container "sidecar" not found in runtime template' in err, r
        assert "RBAC" not in err.replace("not RBAC", ""), r
        assert trainjob(real, "refused") is None
    finally:
        api.delete(f"/apis/{GROUP}/clustertrainingruntimes/{other['metadata']['name']}")


def test_no_trainer_v2_is_exit_5_naming_the_install(real, run_kjob, tmp_path):
    """Without `trainer_v2`: conftest orders the tests that start Trainer v2 after every
    other one, so the session's control plane has no TrainJob CRD yet."""
    if real.api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/trainjobs.trainer.kubeflow.org"):
        pytest.skip("Trainer v2 is already installed on this control plane (a test that started it ran first)")
    r = run_kjob("submit", spec_file(tmp_path, "mpi", "nocrd"))
    assert r.code == 5, r
    err = " ".join(r.err.split())
    assert "the TrainJob API (trainer.kubeflow.org/v1alpha1 trainjobs) is not served by" in err, r
    assert "kubectl apply --server-side -k" in err and "github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=v2.3.0" in err, r


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_a_job_that_fails_past_its_restarts_is_failed_from_the_conditions(real, kjob_runtimes, run_kjob, tmp_path, launcher):
    """kjob's runtimes restart the JobSet up to maxRestarts (3) times; node 0 failing a
    fourth time fails the TrainJob (JobSet's Failed condition, copied by the trainer)."""
    name = f"fail-{launcher}"
    assert run_kjob("submit", spec_file(tmp_path, launcher, name)).code == 0
    seen: set[str] = set()
    for attempt in range(4):
        pods = wait_for(f"attempt {attempt}'s node pods", lambda: (lambda ps: ps if not set(ps) & seen else None)(node_pods(real, name, 2)),
                        90 * time_scale(), interval=0.2)
        seen |= set(pods)
        real.append_log(pods[0], [f"attempt {attempt}: CUDA error"])
        real.end_pod(pods[0], 1)
    r = run_kjob("logs", name, "-f")
    assert r.code == 1 and r.err.splitlines()[-1] == f"job {name} Failed", r
    st = run_kjob("status", name)
    assert st.code == 0 and "State:     Failed" in st.out, st
    out = " ".join(st.out.split())
    # JobSet's words for a failurePolicy's restarts used up (pkg/constants ReachedMaxRestartsMessage).
    assert "Message: jobset failed due to reaching max number of restarts" in out, st
    assert 'node-0' in out and 'Error: container "node" exited with code 1' in out, st
    r = run_kjob("list")
    assert r.code == 0 and any(line.split()[:1] == [name] and "Failed" in line for line in r.out.splitlines()), r


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_submit_follow_saves_every_pods_log(real, kjob_runtimes, run_kjob, tmp_path, launcher):
    name = f"follow-{launcher}"

    def run():
        pods = node_pods(real, name, 2)
        real.append_log(pods[0], ["epoch 1"])
        real.append_log(pods[1], ["node 1 here"])
        time.sleep(1.0)
        real.append_log(pods[0], ["epoch 2"])
        for pod in pods:
            real.end_pod(pod, 0)
        return pods

    result: list[list[str]] = []
    _later(lambda: result.append(run()))
    r = run_kjob("submit", spec_file(tmp_path, launcher, name), "--follow")
    assert r.code == 0 and r.out.startswith(f"TrainJob {real.ns}/{name} created\n"), r
    assert "epoch 1\nepoch 2\n" in r.out and "node 1 here" not in r.out, r
    assert r.err.splitlines()[-1] == f"job {name} Succeeded", r
    pods = result[0]
    r = run_kjob("logs", name, "--all", "--save", str(tmp_path / "saved"))
    assert r.code == 0, r
    assert (tmp_path / "saved" / f"{pods[0]}.log").read_text() == "epoch 1\nepoch 2\n"
    assert (tmp_path / "saved" / f"{pods[1]}.log").read_text() == "node 1 here\n"
