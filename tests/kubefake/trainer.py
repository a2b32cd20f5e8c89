"""What Kubeflow Trainer v2.3.0, JobSet v0.12.0 and the Job controller make for a TrainJob,
played on the fake's state (the simulator's operator methods call these for a TrainJob).

From the sources: the trainer's jobset plugin builds a JobSet named as the TrainJob,
owned by it, from the runtime's replicated jobs with the TrainJob's trainer and
runtimePatches applied (pkg/runtime/framework/plugins/jobset), and copies the JobSet's
Completed / Failed conditions as Complete / Failed and its replicatedJobsStatus as
jobsStatus (jobset.go Status). JobSet makes one child Job <jobset>-<replicated job>-<job
index> per replica, owned by it, and labels the Jobs and their pods (jobset_types.go:
JobSetNameKey, ReplicatedJobNameKey, JobIndexKey, ...), and a headless Service named as
the JobSet. The Job controller names an Indexed Job's pods <job>-<completion index>-<5
characters> and labels them with batch.kubernetes.io/job-completion-index.

Not yet compared with the real controllers by tests/cluster/test_real_vs_fake.py (the
harness gains them in another branch): the pod names, labels and owners here follow the
sources above and are what that test should check.
"""

from __future__ import annotations

import copy
import hashlib
import random

from .store import State, now_rfc3339

ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
SUFFIX = "bcdfghjklmnpqrstvwxz2456789"


def _owner(obj: dict) -> dict:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}


def runtime_of(s: State, job: dict) -> dict:
    ref = job["spec"]["runtimeRef"]
    runtime = s.get("clustertrainingruntimes", "", ref["name"])
    if runtime is None:
        raise KeyError(f"no ClusterTrainingRuntime {ref['name']}: the trainer controller would make nothing")
    return runtime


def _patch_pod(pod_spec: dict, patch: dict) -> None:
    """One runtimePatches entry's pod spec onto a pod spec (volumes and env appended,
    containers matched by name, the pod's own settings replaced)."""
    pod_spec["volumes"] = (pod_spec.get("volumes") or []) + copy.deepcopy(patch.get("volumes") or [])
    for key in ("nodeSelector", "tolerations", "imagePullSecrets", "securityContext", "affinity", "serviceAccountName", "terminationGracePeriodSeconds"):
        if key in patch:
            pod_spec[key] = copy.deepcopy(patch[key])
    for cpatch in patch.get("containers") or []:
        for c in pod_spec.get("containers") or []:
            if c["name"] == cpatch.get("name"):
                for key in ("env", "volumeMounts"):
                    c[key] = (c.get(key) or []) + copy.deepcopy(cpatch.get(key) or [])
                if "securityContext" in cpatch:
                    c["securityContext"] = copy.deepcopy(cpatch["securityContext"])


def pod_spec_of(job: dict, rjob: dict) -> dict:
    """The pod spec of a replicated job of the runtime, with the TrainJob's trainer (on
    the container named node of the job labelled as the trainer's step) and its
    runtimePatches."""
    template = rjob["template"]["spec"]["template"]
    spec = copy.deepcopy(template.get("spec") or {})
    trainer = job["spec"].get("trainer") or {}
    is_trainer = (rjob["template"].get("metadata", {}).get("labels") or {}).get(ANCESTOR_LABEL) == "trainer"
    for c in spec.get("containers") or []:
        if c["name"] == "node" and is_trainer:
            for key in ("image", "command", "args"):
                if trainer.get(key):
                    c[key] = copy.deepcopy(trainer[key])
            c["env"] = (c.get("env") or []) + copy.deepcopy(trainer.get("env") or [])
    for patch in job["spec"].get("runtimePatches") or []:
        for rpatch in ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec", {}).get("replicatedJobs") or []:
            if rpatch.get("name") == rjob["name"]:
                _patch_pod(spec, (((rpatch.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {})
    return spec


def replicated_jobs(s: State, job: dict) -> list[tuple[dict, int, int]]:
    """(replicated job, child Jobs, pods per child Job) of the TrainJob's runtime; the
    trainer's numNodes sets the node job's parallelism (torch and MPI plugins)."""
    out = []
    for rjob in runtime_of(s, job)["spec"]["template"]["spec"]["replicatedJobs"]:
        pods = int(rjob["template"]["spec"].get("parallelism", 1))
        if rjob["name"] == "node" and (job["spec"].get("trainer") or {}).get("numNodes"):
            pods = int(job["spec"]["trainer"]["numNodes"])
        out.append((rjob, int(rjob.get("replicas", 1)), pods))
    return out


def make_companions(s: State, job: dict) -> None:
    """The JobSet (owned by the TrainJob), its headless Service and child Jobs."""
    name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
    if s.get("jobsets", ns, name) is not None:
        return
    jobset = s.put("jobsets", {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
                               "metadata": {"name": name, "namespace": ns, "labels": dict(job["metadata"].get("labels") or {}),
                                            "ownerReferences": [_owner(job)]}, "spec": {}})
    s.put("services", {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns, "ownerReferences": [_owner(jobset)]},
                       "spec": {"clusterIP": "None", "selector": {"jobset.sigs.k8s.io/jobset-name": name}}})
    rjobs = replicated_jobs(s, job)
    total, before = sum(replicas for _, replicas, _ in rjobs), 0
    for rjob, replicas, pods in rjobs:
        for index in range(replicas):
            marks = _marks(jobset, rjob["name"], index, replicas, total, before + index)
            s.put("jobs", {"apiVersion": "batch/v1", "kind": "Job",
                           "metadata": {"name": f"{name}-{rjob['name']}-{index}", "namespace": ns, "labels": dict(marks), "annotations": dict(marks),
                                        "ownerReferences": [_owner(jobset)]},
                           "spec": {"completionMode": "Indexed", "parallelism": pods, "completions": pods}})
        before += replicas


def _marks(jobset: dict, rjob: str, index: int, replicas: int, total: int, global_index: int) -> dict[str, str]:
    """The labels, and the same annotations, JobSet puts on a child Job and its pods
    (jobset_controller.go labelAndAnnotateObject; every replicated job in the group
    "default", the RestartJob gate off)."""
    name, ns = jobset["metadata"]["name"], jobset["metadata"]["namespace"]
    job_name = f"{name}-{rjob}-{index}"
    return {"jobset.sigs.k8s.io/jobset-name": name, "jobset.sigs.k8s.io/jobset-uid": jobset["metadata"]["uid"],
            "jobset.sigs.k8s.io/replicatedjob-name": rjob, "jobset.sigs.k8s.io/restart-attempt": "0",
            "jobset.sigs.k8s.io/replicatedjob-replicas": str(replicas), "jobset.sigs.k8s.io/global-replicas": str(total),
            "jobset.sigs.k8s.io/job-index": str(index), "jobset.sigs.k8s.io/job-key": hashlib.sha1(f"{ns}/{job_name}".encode()).hexdigest(),
            "jobset.sigs.k8s.io/job-global-index": str(global_index), "jobset.sigs.k8s.io/group-name": "default",
            "jobset.sigs.k8s.io/group-replicas": str(total), "jobset.sigs.k8s.io/job-group-index": str(global_index)}


def make_pods(s: State, job: dict, waiting, only: tuple[str, int] | None = None) -> list[str]:
    """The pods of every child Job (or of one replica: (replicated job, completion
    index)), Pending with their containers waiting in ContainerCreating (`waiting`
    gives a container's status). Returns their names."""
    name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
    make_companions(s, job)
    made = []
    for rjob, replicas, pods in replicated_jobs(s, job):
        for index in range(replicas):
            child = s.get("jobs", ns, f"{name}-{rjob['name']}-{index}")
            uid = child["metadata"]["uid"]
            for completion in range(pods):
                if only is not None and only != (rjob["name"], completion):
                    continue
                template = rjob["template"]["spec"]["template"]
                labels = {**(template.get("metadata", {}).get("labels") or {}), **child["metadata"]["labels"],
                          "batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": child["metadata"]["name"],
                          "controller-uid": uid, "job-name": child["metadata"]["name"],
                          "batch.kubernetes.io/job-completion-index": str(completion)}
                pod_name = f"{child['metadata']['name']}-{completion}-" + "".join(random.choice(SUFFIX) for _ in range(5))
                spec = pod_spec_of(job, rjob)
                spec.setdefault("hostname", f"{child['metadata']['name']}-{completion}")
                spec.setdefault("subdomain", name)
                annotations = {**(template.get("metadata", {}).get("annotations") or {}), **child["metadata"]["annotations"],
                               "batch.kubernetes.io/job-completion-index": str(completion)}
                s.put("pods", {"apiVersion": "v1", "kind": "Pod",
                               "metadata": {"name": pod_name, "namespace": ns, "labels": labels, "annotations": annotations,
                                            "ownerReferences": [_owner(child)]},
                               "spec": spec,
                               "status": {"phase": "Pending", "conditions": [], "containerStatuses": [waiting(c, "ContainerCreating") for c in spec.get("containers", [])]}})
                made.append(pod_name)
    return made


def set_jobs_status(s: State, job: dict, word: str | None) -> None:
    """jobsStatus: every replicated job's child Jobs counted as `word` (active, ready,
    succeeded, failed); None: all zero (the JobSet is made, no Job is active yet)."""
    job = copy.deepcopy(job)
    statuses = []
    for rjob, replicas, _ in replicated_jobs(s, job):
        counts = {k: 0 for k in ("ready", "succeeded", "failed", "active", "suspended")}
        if word == "ready":
            counts.update(ready=replicas, active=replicas)
        elif word:
            counts[word] = replicas
        statuses.append({"name": rjob["name"], **counts})
    job.setdefault("status", {})["jobsStatus"] = statuses
    s.put("trainjobs", job)


def set_condition(s: State, job: dict, type_: str, status: str, reason: str, message: str) -> None:
    """A metav1.Condition (no lastUpdateTime, unlike kubeflow/common's), one per type."""
    job = copy.deepcopy(job)
    conds = job.setdefault("status", {}).setdefault("conditions", [])
    conds[:] = [c for c in conds if c["type"] != type_]
    conds.append({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": now_rfc3339(),
                  "observedGeneration": job["metadata"].get("generation", 1)})
    s.put("trainjobs", job)


# The JobSet conditions the trainer copies (jobset pkg/constants: AllJobsCompleted*, FailedJobs*).
FINAL = {"Succeeded": ("Complete", "AllJobsCompleted", "jobset completed successfully"),
         "Failed": ("Failed", "FailedJobs", "jobset failed due to one or more job failures")}


def order(labels: dict[str, str]) -> tuple:
    """launcher first, then the others by replicated job, job index and completion index."""
    rjob = labels.get("jobset.sigs.k8s.io/replicatedjob-name", "")
    return (rjob != "launcher", rjob, int(labels.get("jobset.sigs.k8s.io/job-index", 0)), int(labels.get("batch.kubernetes.io/job-completion-index", 0)))
