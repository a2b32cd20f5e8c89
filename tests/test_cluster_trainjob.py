"""Every kjob command on a TrainJob (Kubeflow Trainer v2.3.0 on JobSet v0.12.0), against the
test API server: submit's preflight (the Trainer's API with runtimePatches, the runtime),
conflicts and --replace; status from conditions and jobsStatus with the replicas named
launcher, node-0, node-1; logs; delete's checkpoint request (SIGUSR1 to the launcher's
mpirun on kjob-openmpi, SIGTERM to node-0's torchrun on kjob-torch); fetch-ckpt from the
pod that writes the checkpoints; list of all three kinds. The TrainJobs are built by
tests/trainjobs.py (rendering them is another branch's)."""

from __future__ import annotations

import re
import threading
import time
from types import SimpleNamespace

import pytest

from kjob.cluster.backend import ClusterBackend
from kjob.errors import Conflict, NotFound
from kjob.plan import ClusterPlan

from kubefake.exec import ExecReply
from trainjobs import CLAIM, LAUNCH, MPI_LAYOUTS, NODE_SCRIPT, install_runtimes, trainjob

pytestmark = pytest.mark.timeout(180)  # a bound against hangs, scaled by KJOB_TEST_TIME_SCALE

INSTALL = 'kubectl apply --server-side -k "https://github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=v2.3.0"'


@pytest.fixture
def trainer(kube):
    """The fake with kjob's two runtimes installed."""
    install_runtimes(kube)
    return kube


@pytest.fixture(params=list(MPI_LAYOUTS))
def mpi(request, kube):
    """The fake with kjob's runtimes, kjob-openmpi in each layout (tests/trainjobs.py):
    .kube, .launcher (the replica running mpirun), .rjobs (the runtime's replicated
    jobs), .submit(name) (a TrainJob on kjob-openmpi, created)."""
    rjobs, launcher, patched = MPI_LAYOUTS[request.param]
    install_runtimes(kube, request.param)

    def submit(name: str = "tj") -> str:
        ClusterBackend().create_job([trainjob(name, "kjob-openmpi", patched=patched)])
        return name

    return SimpleNamespace(kube=kube, launcher=launcher, rjobs=[r["name"] for r in rjobs], submit=submit, patched=patched)


def submitted(kube, runtime: str = "kjob-torch", name: str = "tj") -> str:
    ClusterBackend().create_job([trainjob(name, runtime)])
    return name


# -- the adapter, pure ------------------------------------------------------------------------
def jobset_pod(rjob: str, job_index: str = "0", completion: str = "0") -> dict:
    return {"metadata": {"name": f"tj-{rjob}-{job_index}-{completion}-x7k2p", "labels": {
        "jobset.sigs.k8s.io/jobset-name": "tj", "jobset.sigs.k8s.io/replicatedjob-name": rjob,
        "jobset.sigs.k8s.io/job-index": job_index, "batch.kubernetes.io/job-completion-index": completion}}}


def test_replica_names_from_jobsets_labels_and_from_a_gone_pods_name():
    from kjob.cluster.kinds import kind_of
    from kjob.cluster.pods import replica_name

    assert [replica_name(jobset_pod(*a)) for a in (("node", "0", "3"), ("launcher",), ("dataset-initializer",), ("node", "1", "0"), ("node", "x"))] == [
        "node-3", "launcher", "dataset-initializer", "node-1-0", "tj-node-x-0-x7k2p"]
    gone = kind_of("TrainJob").gone_replica
    assert [gone("tj", n) for n in ("tj-node-0-3-x7k2p", "tj-launcher-0-0-b2c4d", "tj-2-node-0-0-b2c4d", "tj2-node-0-0-b2c4d", "tj-node-0-3")] == [
        "node-3", "launcher", None, None, None]


@pytest.mark.parametrize(("jobs", "conditions", "state", "message"), [
    ([], [], "Pending", "no jobs status yet: waiting for the trainer controller and JobSet to create the jobs"),
    ([{"name": "dataset-initializer", "succeeded": 1}, {"name": "node", "active": 1}], [], "Pending", "replicated job(s) not ready yet: node"),
    ([{"name": "dataset-initializer", "succeeded": 1}, {"name": "node", "active": 1, "ready": 1}], [], "Running",
     "every replicated job is ready or done: dataset-initializer done, node ready"),
    ([{"name": "node", "ready": 1}], [("Suspended", "False", "TrainJob is resumed")], "Running", "every replicated job is ready or done: node ready"),
    ([{"name": "node", "suspended": 1}], [("Suspended", "True", "TrainJob is suspended")], "Suspended", "TrainJob is suspended"),
    ([{"name": "node", "failed": 1}], [("Failed", "True", "jobset failed due to one or more job failures")], "Failed",
     "jobset failed due to one or more job failures"),
    ([{"name": "node", "succeeded": 1}], [("Complete", "True", "jobset completed successfully")], "Succeeded", "jobset completed successfully"),
    ([], [("Failed", "True", "TrainJob exceeded its active deadline"), ("Suspended", "True", "x")], "Failed", "TrainJob exceeded its active deadline"),
])
def test_trainjob_state_from_conditions_and_jobs_status(jobs, conditions, state, message):
    from kjob.cluster.status import ended, job_state

    job = {"kind": "TrainJob", "metadata": {"name": "tj"}, "spec": {}, "status": {
        "jobsStatus": jobs, "conditions": [{"type": t, "status": st, "message": m, "lastTransitionTime": "2026-12-07T10:00:00Z"} for t, st, m in conditions]}}
    assert job_state(job) == (state, message)
    assert ended(job) == ((state, "2026-12-07T10:00:00Z") if state in ("Succeeded", "Failed") else (None, None))


def test_pod_security_warnings_read_the_trainjobs_runtime_patches():
    from kjob.cluster.jobs import pod_security_warnings

    job = trainjob()
    pod = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    pod["volumes"].append({"name": "data", "hostPath": {"path": "/data"}})
    pod["containers"][0]["securityContext"] = {"capabilities": {"add": ["IPC_LOCK"]}}
    assert pod_security_warnings("baseline", "team", job) == [
        'namespace "team" enforces Pod Security "baseline", which refuses hostPath volumes (volume "data"): the pods will not be '
        "created; use a PersistentVolumeClaim for the data",
        'namespace "team" enforces Pod Security "baseline", which refuses the capabilities IPC_LOCK: the trainer pods will not be '
        "created; run the job in a namespace labelled pod-security.kubernetes.io/enforce=privileged, or leave capabilities out"]
    assert pod_security_warnings("privileged", "team", job) == []


# -- submit ------------------------------------------------------------------------------------
def test_submit_without_trainer_v2_is_exit_5_naming_its_install(kube, run_kjob):
    kube.remove_crd("TrainJob")
    with pytest.raises(NotFound) as e:
        ClusterBackend().create_job([trainjob()])
    assert e.value.message == (f"the TrainJob API (trainer.kubeflow.org/v1alpha1 trainjobs) is not served by {kube.server} "
                               '(context "kubefake"): Kubeflow Trainer v2.3.0 (with JobSet) is not installed')
    assert e.value.hint == f"install it: {INSTALL}"
    assert e.value.exit_code == 5


@pytest.mark.parametrize("crd_readable", [True, False], ids=["crd", "openapi-v3"])
def test_submit_on_a_trainer_older_than_v2_2_is_exit_5_naming_the_upgrade(trainer, crd_readable):
    # Trainer v2.1's TrainJob: podTemplateOverrides, no runtimePatches (which a CRD would
    # drop silently: the job would run without kjob's volumes).
    trainer.serve_crd_spec_fields("TrainJob", ("runtimeRef", "initializer", "trainer", "podTemplateOverrides", "suspend", "managedBy"))
    if not crd_readable:
        trainer.deny("get", "customresourcedefinitions")
    with pytest.raises(NotFound) as e:
        ClusterBackend().create_job([trainjob()])
    assert e.value.message == (f'the TrainJob API served by {trainer.server} (context "kubefake") has no spec.runtimePatches: its CRD '
                               "trainjobs.trainer.kubeflow.org is older than Kubeflow Trainer v2.2, which kjob needs")
    assert e.value.hint == f"upgrade it: {INSTALL}"
    assert trainer.list("TrainJob") == []
    assert trainer.requests("get", "customresourcedefinitions") == 1


def test_a_current_trainer_passes_the_schema_check_through_either_source(trainer):
    trainer.deny("get", "customresourcedefinitions")
    assert ClusterBackend().create_job([trainjob()]).created


@pytest.mark.parametrize(("runtime", "hint"), [
    ("kjob-torch", "install kjob's runtime: kubectl apply -f manifests/runtimes/kjob-torch.yaml (from a checkout of kjob)"),
    ("team-deepspeed", "install that ClusterTrainingRuntime, or name one that exists (kubectl get clustertrainingruntimes)"),
])
def test_submit_naming_a_missing_runtime_is_exit_5_with_what_to_install(kube, runtime, hint):
    kube.deny("create", "pods/exec")
    with pytest.raises(NotFound) as e:
        ClusterBackend().create_job([trainjob(runtime=runtime)])
    # Every problem at once, the runtime's among them.
    assert e.value.message.splitlines() == [
        f'the ClusterTrainingRuntime "{runtime}" that TrainJob tj runs from is not on {kube.server} (context "kubefake")',
        'forbidden: RBAC does not allow "create pods/exec" in namespace "default" (context "kubefake")']
    assert e.value.hint.startswith(hint)
    assert kube.list("TrainJob") == []


def test_a_runtime_the_user_may_not_read_is_not_a_problem(kube):
    kube.deny("get", "clustertrainingruntimes")
    install_runtimes(kube)
    assert ClusterBackend().create_job([trainjob()]).created


def test_resubmit_same_spec_different_spec_replace_and_over_a_finished_job(trainer, run_kjob):
    backend = ClusterBackend()
    assert backend.create_job([trainjob()]).message == "TrainJob default/tj created"
    again = backend.create_job([trainjob()])
    assert (again.created, again.message) == (False, f"TrainJob default/tj is already submitted with this spec (sha256:{'a' * 12}…): nothing to do")
    other = trainjob(spec_hash="sha256:" + "b" * 64)
    with pytest.raises(Conflict, match=r'^TrainJob "tj" already exists in namespace "default" with a different spec'):
        backend.create_job([other])
    first_uid = trainer.get("TrainJob", "tj")["metadata"]["uid"]
    trainer.run_job("tj")
    assert backend.create_job([other], replace=True).message == "TrainJob default/tj replaced"
    assert trainer.get("TrainJob", "tj")["metadata"]["uid"] != first_uid
    # Ended (the Trainer's Complete condition): the same spec would never run again.
    trainer.run_job("tj")
    trainer.finish_job("tj")
    with pytest.raises(Conflict, match=r"^job tj Succeeded at \S+; `--replace` runs it again"):
        backend.create_job([other])
    old_pods = set(trainer.pods("tj"))
    assert backend.create_job([other], replace=True).message == "TrainJob default/tj replaced"
    assert trainer.get("TrainJob", "tj").get("status") is None and not old_pods & set(trainer.pods("tj"))
    assert trainer.list("JobSet") == []  # the old JobSet went with the old TrainJob


def test_submit_wait_ends_with_the_trainjobs_state(trainer, capsys):
    backend = ClusterBackend()
    lines: list[str] = []
    backend.notify = lines.append

    def finish():
        trainer.wait_for_requests("get", "trainjobs", 3)
        trainer.run_job("tj")
        trainer.finish_job("tj", "Failed")

    threading.Thread(target=finish, daemon=True).start()
    code = backend.submit(ClusterPlan([trainjob()]), wait=True, write=lines.append)
    assert code == 1
    assert lines[0] == "TrainJob default/tj created"
    assert lines[-2:] == ["TrainJob tj: Failed — jobset failed due to one or more job failures", "job tj Failed"]


def test_submit_follow_streams_the_mpirun_replica_until_complete(mpi):
    trainer, backend = mpi.kube, ClusterBackend()
    lines: list[str] = []
    backend.notify = lines.append

    def run():
        trainer.wait_for_requests("create", "trainjobs", 1)
        pods = trainer.run_job("tj")
        trainer.append_log(pods[0], ["launcher says hi"])
        trainer.append_log(pods[-1], ["sshd on node-1"])
        trainer.wait_for_requests("get", "pods/log", 1)
        time.sleep(0.3)
        trainer.finish_job("tj")

    threading.Thread(target=run, daemon=True).start()
    job = trainjob(runtime="kjob-openmpi", patched=mpi.patched)
    assert backend.submit(ClusterPlan([job]), follow=True, write=lines.append) == 0
    assert lines[0] == "TrainJob default/tj created"
    assert "launcher says hi" in lines and "sshd on node-1" not in lines and lines[-1] == "job tj Succeeded"


# -- status ------------------------------------------------------------------------------------
def test_status_from_jobs_status_and_conditions_with_replicas_named_by_jobset(mpi, run_kjob):
    trainer = mpi.kube
    mpi.submit()
    st = ClusterBackend().status("tj")
    assert (st.kind, st.state, st.message) == ("TrainJob", "Pending", "no jobs status yet: waiting for the trainer controller and JobSet to create the jobs")
    trainer.start_job("tj")
    st = ClusterBackend().status("tj")
    assert (st.state, st.message) == ("Pending", f"replicated job(s) not ready yet: {', '.join(mpi.rjobs)}")
    replicas = ["launcher", "node-0", "node-1"] if "launcher" in mpi.rjobs else ["node-0", "node-1"]
    assert [(p.replica, p.phase) for p in st.pods] == [(r, "Pending") for r in replicas]
    assert all(re.fullmatch(r"tj-(launcher-0-0|node-0-[01])-[a-z0-9]{5}", p.name) for p in st.pods)
    trainer.run_job("tj")
    st = ClusterBackend().status("tj")
    ready = ", ".join(f"{r} ready" for r in mpi.rjobs)
    assert (st.state, st.message, st.image) == ("Running", f"every replicated job is ready or done: {ready}", "kjob/trainer:1")
    assert st.replicas == {r: {"active": 1, "ready": 1} for r in mpi.rjobs}
    trainer.finish_job("tj")
    st = ClusterBackend().status("tj")
    assert (st.state, st.message, st.exit_code) == ("Succeeded", "jobset completed successfully", None)
    assert st.finished == trainer.get("TrainJob", "tj")["status"]["conditions"][0]["lastTransitionTime"]
    r = run_kjob("status", "tj")
    assert r.code == 0 and "TrainJob" in r.out and "Succeeded" in r.out and "node-1" in r.out


def test_a_failed_trainjob_has_its_leaders_exit_code_and_a_suspended_one_says_so(trainer):
    submitted(trainer, "kjob-torch")
    trainer.run_job("tj")
    trainer.finish_job("tj", "Failed", exit_code=3)
    st = ClusterBackend().status("tj")
    assert (st.state, st.exit_code) == ("Failed", 3)
    submitted(trainer, "kjob-torch", name="held")
    trainer.set_condition("held", "Suspended", reason="Suspended", message="TrainJob is suspended")
    assert (ClusterBackend().status("held").state, ClusterBackend().status("held").message) == ("Suspended", "TrainJob is suspended")
    # Resumed: the Trainer turns the condition False; progress is jobsStatus again.
    trainer.set_condition("held", "Suspended", "False", reason="Resumed", message="TrainJob is resumed")
    assert ClusterBackend().status("held").state == "Pending"


def test_pending_reasons_name_the_node_replica_and_the_child_jobs_refusal(trainer):
    submitted(trainer, "kjob-torch")
    pods = trainer.start_job("tj")
    trainer.unschedulable(pods[1], "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    st = ClusterBackend().status("tj")
    assert (st.state, st.message) == ("Pending", "node-1: FailedScheduling: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    assert st.pods[1].reason == "FailedScheduling: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."


def test_a_child_jobs_warning_explains_pods_that_never_came(trainer):
    # An exceeded quota: the Job controller refuses the pods and says so on the child Job
    # (not on the TrainJob, which has no pods to show).
    submitted(trainer, "kjob-torch")
    message = 'pods "tj-node-0-0-x7k2p" is forbidden: exceeded quota: gpu, requested: nvidia.com/gpu=8, used: nvidia.com/gpu=0, limited: nvidia.com/gpu=4'
    trainer.object_event("Job", "tj2-node-0", "FailedCreate", "another job's")  # other jobs' first: they would come first
    trainer.object_event("Job", "tj-2-node-0", "FailedCreate", "job tj-2's")
    trainer.object_event("Job", "tj-node-0", "FailedCreate", message)
    st = ClusterBackend().status("tj")
    assert (st.state, st.message) == ("Pending", f"Job tj-node-0: FailedCreate: {message}")


def test_a_gone_pods_preemption_is_named_by_its_replica(trainer):
    submitted(trainer, "kjob-torch")
    pods = trainer.run_job("tj")
    trainer.event(pods[1], "Preempted", "Preempted by pod 1234 on node node-1", type_="Normal", source="default-scheduler")
    trainer.delete_pod(pods[1])
    st = ClusterBackend().status("tj")
    assert st.message.startswith("node-1 (gone): preempted"), st.message


# -- logs --------------------------------------------------------------------------------------
def test_logs_default_to_mpiruns_replica_on_openmpi_and_node_0_on_torch(mpi, run_kjob):
    trainer = mpi.kube
    mpi.submit("mpi")
    submitted(trainer, "kjob-torch", name="torch")
    for name in ("mpi", "torch"):
        for pod in trainer.run_job(name):
            trainer.append_log(pod, [f"from {pod}"])
    mpi_pods, torch = trainer.pods("mpi"), trainer.pods("torch")
    assert run_kjob("logs", "mpi").out == f"from {mpi_pods[0]}\n"
    assert run_kjob("logs", "torch").out == f"from {torch[0]}\n"
    assert run_kjob("logs", "torch", "--replica", "node-1").out == f"from {torch[1]}\n"
    replicas = ["launcher", "node-0", "node-1"] if mpi.launcher == "launcher" else ["node-0", "node-1"]
    assert run_kjob("logs", "mpi", "--all").out.splitlines() == [f"[{r}] from {p}" for r, p in zip(replicas, mpi_pods)]
    r = run_kjob("logs", "torch", "--replica", "launcher")
    assert (r.code, r.err) == (5, 'Error: job "torch" has no pod for launcher (replicas: node-0, node-1)\n')


def test_on_a_runtime_not_kjobs_a_launcher_pod_makes_it_the_default_and_the_one_signalled(trainer, run_kjob):
    trainer.install_runtime("team-mpi", MPI_LAYOUTS["launcher-job"][0])
    ClusterBackend().create_job([trainjob(runtime="team-mpi")])
    pods = trainer.run_job("tj")
    for pod in pods:
        trainer.append_log(pod, [f"from {pod}"])
    assert run_kjob("logs", "tj").out == f"from {pods[0]}\n"
    signals: list[list[str]] = []
    stops_on(trainer, pods[0], 0.1, signals)
    r = run_kjob("delete", "tj")
    assert signals == [["kill", "-USR1", "1"]] and "(SIGUSR1 to mpirun)" in r.out, r


def test_logs_read_the_trainer_container_node_whatever_its_place(trainer, run_kjob):
    # A runtime with a sidecar first: the trainer container is the one named node.
    trainer.install_runtime("sidecar-torch", [{"name": "node", "template": {"metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                                              "spec": {"template": {"spec": {"containers": [{"name": "proxy", "image": "envoy"}, {"name": "node", "image": "t", "command": ["torchrun"]}]}}}}}])
    ClusterBackend().create_job([trainjob(runtime="sidecar-torch", nodes=1)])
    pod = trainer.run_job("tj")[0]
    trainer.append_log(pod, ["proxy line"], container="proxy")
    trainer.append_log(pod, ["trainer line"], container="node")
    assert run_kjob("logs", "tj", "--replica", "node-0").out == "trainer line\n"


def test_logs_follow_a_trainjob_to_complete_saving_every_pod(mpi, run_kjob, tmp_path):
    trainer = mpi.kube
    mpi.submit()
    pods = trainer.run_job("tj")
    trainer.append_log(pods[0], ["epoch 1"])

    def finish():
        trainer.wait_for_requests("get", "pods/log", 3)
        trainer.append_log(pods[0], ["epoch 2"])
        trainer.append_log(pods[-1], ["sshd on node-1"])
        time.sleep(0.3)
        trainer.finish_job("tj")

    threading.Thread(target=finish, daemon=True).start()
    r = run_kjob("logs", "tj", "-f", "--save", str(tmp_path / "logs"))
    assert (r.code, r.out, r.err.splitlines()[-1]) == (0, "epoch 1\nepoch 2\n", "job tj Succeeded")
    assert (tmp_path / "logs" / f"{pods[0]}.log").read_text() == "epoch 1\nepoch 2\n"
    assert (tmp_path / "logs" / f"{pods[-1]}.log").read_text() == "sshd on node-1\n"


def test_logs_tail_since_previous_and_follow_across_a_restart_of_node_0(trainer, run_kjob):
    submitted(trainer, "kjob-torch")
    pods = trainer.run_job("tj")
    trainer.append_log(pods[1], [f"n1 {i}" for i in range(10)])
    assert run_kjob("logs", "tj", "--replica", "node-1", "--tail", "3").out.splitlines() == ["n1 7", "n1 8", "n1 9"]
    assert run_kjob("logs", "tj", "--replica", "node-1", "--since", "1h").out.count("\n") == 10
    trainer.append_log(pods[0], [f"first {i}" for i in range(20)])

    def crash_and_restart():
        trainer.wait_for_requests("get", "pods/log", 3)  # the two above, then -f on node-0
        time.sleep(0.1)
        trainer.restart_container(pods[0], exit_code=137)
        trainer.append_log(pods[0], [f"second {i}" for i in range(20)])
        time.sleep(0.3)
        trainer.finish_job("tj")

    threading.Thread(target=crash_and_restart, daemon=True).start()
    r = run_kjob("logs", "tj", "-f")
    assert r.out.splitlines() == [f"first {i}" for i in range(20)] + [f"second {i}" for i in range(20)]
    assert run_kjob("logs", "tj", "--previous").out.splitlines() == [f"first {i}" for i in range(20)]


# -- delete ------------------------------------------------------------------------------------
def stops_on(kube, pod: str, after: float, signals: list[list[str]]):
    """Play PID 1 of `pod`: `kill` is answered, and its container stops `after` seconds later."""
    def kill(argv):
        signals.append(argv)
        threading.Timer(after, lambda: kube.pod_terminated(pod, 143, "Error")).start()
        return ExecReply()

    kube.exec.serve("default", pod, kill)


@pytest.mark.parametrize(("runtime", "argv", "asked"), [
    ("kjob-openmpi", ["kill", "-USR1", "1"], "asked the trainer to checkpoint (SIGUSR1 to mpirun)"),
    ("kjob-torch", ["kill", "-TERM", "1"], "asked the trainer to checkpoint (SIGTERM to torchrun)"),
])
def test_delete_asks_for_a_checkpoint_first_then_deletes(mpi, run_kjob, runtime, argv, asked):
    trainer = mpi.kube
    mpi.submit() if runtime == "kjob-openmpi" else submitted(trainer, runtime)
    replica = mpi.launcher if runtime == "kjob-openmpi" else "node-0"
    pods = trainer.run_job("tj")
    signals: list[list[str]] = []
    stops_on(trainer, pods[0], 0.2, signals)
    r = run_kjob("delete", "tj", "--wait")
    who = "the launcher" if replica == "launcher" else replica
    assert r.code == 0, r
    assert re.fullmatch(rf"deleted TrainJob default/tj: {re.escape(asked)}; {who} stopped (within a second|after \d+ s) \(exit 143\); "
                        rf"its {len(pods)} pod\(s\) are deleted with it \(they are owned by the job\); all gone\n", r.out), r.out
    assert r.err == f"{asked} in pod {pods[0]}; waiting up to 120 s for {who} to stop\n"
    assert signals == [argv] and [c.container for c in trainer.exec.calls_for(pods[0])] == ["node"]
    assert trainer.get("TrainJob", "tj") is None and trainer.pods("tj") == [] and trainer.list("JobSet") == []


def test_mpirun_under_kjobs_node_script_is_recognised():
    from kjob.cluster.kinds import Checkpoint
    from kjob.cluster.stopping import passes_on

    usr1, term = Checkpoint("node-0", "USR1", "mpirun"), Checkpoint("node-0", "TERM", "torchrun")
    assert passes_on(usr1, NODE_SCRIPT + LAUNCH[4:]) and not passes_on(term, NODE_SCRIPT + LAUNCH[4:])
    assert not passes_on(usr1, ["/bin/sh", "-c", "exec python train.py"]) and not passes_on(usr1, ["/bin/sh", "-c", "mpirun -np 2 x"])
    assert passes_on(term, ["torchrun", "--module", "x"]) and passes_on(term, ["python3", "-m", "torch.distributed.run"])


def test_delete_of_a_node_not_running_torchrun_asks_nothing(trainer, run_kjob):
    trainer.install_runtime("plain", [{"name": "node", "template": {"metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                                       "spec": {"template": {"spec": {"containers": [{"name": "node", "image": "t", "command": ["python", "train.py"]}]}}}}}])
    ClusterBackend().create_job([trainjob(runtime="plain", nodes=1)])
    trainer.run_job("tj")
    r = run_kjob("delete", "tj")
    assert r.out == ("deleted TrainJob default/tj: no checkpoint requested: node-0 runs python, not torchrun; "
                     "its 1 pod(s) are deleted with it (they are owned by the job)\n")
    assert trainer.exec.calls == []


def test_delete_of_an_ended_trainjob_says_its_pods_were_gone(trainer, run_kjob):
    submitted(trainer, "kjob-torch")
    for pod in trainer.run_job("tj"):
        trainer.delete_pod(pod)
    trainer.finish_job("tj")
    assert run_kjob("delete", "tj").out == "deleted TrainJob default/tj: it had no pods left (they were removed when the job succeeded)\n"


# -- fetch-ckpt --------------------------------------------------------------------------------
@pytest.mark.parametrize("runtime", ["kjob-openmpi", "kjob-torch"])
def test_fetch_reads_from_the_pod_that_writes_the_checkpoints(mpi, run_kjob, tmp_path, runtime):
    from ckpt_helpers import write_checkpoints

    trainer, writer = mpi.kube, 0  # the launcher, or node-0: first of the job's pods
    mpi.submit() if runtime == "kjob-openmpi" else submitted(trainer, runtime)
    pods = trainer.run_job("tj")
    pvc = tmp_path / "pvc"
    index = write_checkpoints(pvc / "tj" / "checkpoints", [1000, 2000])
    trainer.exec.provide_claim("default", CLAIM, pvc)
    r = run_kjob("fetch-ckpt", "tj", "--all", "--dest", str(tmp_path / "out"))
    assert r.code == 0, r
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([e["file"] for e in index["checkpoints"]] + ["index.json"])
    used = {c.pod for c in trainer.exec.calls}
    assert used == {pods[writer]}, (used, pods)
    assert {c.container for c in trainer.exec.calls} == {"node"}


def test_fetch_of_an_ended_trainjob_mounts_the_claim_in_a_helper_with_the_trainer_image(trainer, tmp_path):
    from kjob.cluster.fetch import helper_pod, locate

    ClusterBackend().create_job([trainjob(runtime="kjob-openmpi", patched=("launcher",))])
    job = trainer.get("TrainJob", "tj")
    target = locate(job)
    assert (target.claim, target.ckpt_dir, target.mount_path) == (CLAIM, "/checkpoints/tj/checkpoints", "/checkpoints")
    pod = helper_pod(job, target, "tj-fetch-abc123")
    assert pod["spec"]["containers"][0]["image"] == "kjob/trainer:1"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "TrainJob"


# -- list --------------------------------------------------------------------------------------
def test_list_shows_all_three_kinds(trainer, run_kjob):
    from kjob.render.manifests import render_objects
    from kjob.spec.load import load_spec

    backend = ClusterBackend()
    backend.create_job(render_objects(load_spec("examples/smoke.yaml")))
    backend.create_job(render_objects(load_spec("examples/resnext50-torchrun.yaml")))
    submitted(trainer, "kjob-torch")
    trainer.run_job("tj")
    jobs = backend.list_jobs()
    assert [(j.kind, j.state) for j in jobs] == [("PyTorchJob", "Pending"), ("MPIJob", "Pending"), ("TrainJob", "Running")], jobs
    r = run_kjob("list")
    assert r.code == 0 and all(kind in r.out for kind in ("MPIJob", "PyTorchJob", "TrainJob")), r


def test_the_launcher_command_of_kjobs_mpi_runtime_forwards_sigusr1():
    from kjob.cluster.stopping import forwards_sigusr1

    assert forwards_sigusr1(LAUNCH)
