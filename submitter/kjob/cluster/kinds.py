"""One adapter per job kind: what the cluster code needs to know about MPIJob, PyTorchJob
and TrainJob, so that the commands never ask "which kind is this?".

An adapter knows its kind's API (apiVersion, plural, the operator to install), how its
pods are selected and named, how its state is read from its status, where its pod
templates are (fetch-ckpt's claim, Pod Security warnings), which replica `kjob logs`
shows by default and whose exit code is the job's, and how the trainer is asked to
checkpoint before a delete. Pure functions over API dicts: no I/O, no client import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from kjob import names
from kjob.errors import InvalidInput


@dataclass(frozen=True)
class Checkpoint:
    """How `kjob delete` asks a running job for a checkpoint: `kill -<signal> 1` in the
    main container of `replica`, whose PID 1 is `program` (or a wrapper of it), which
    passes the signal on to the ranks. kjob.cluster.stopping carries it out."""

    replica: str  # launcher, node-0
    signal: str  # USR1 | TERM
    program: str  # mpirun | torchrun: the words of delete's line, and what PID 1 must be


@dataclass(frozen=True)
class RuntimeRef:
    """The training runtime a TrainJob runs from (spec.runtimeRef)."""

    api_version: str
    kind: str  # ClusterTrainingRuntime | TrainingRuntime
    plural: str
    name: str
    namespaced: bool


@dataclass(frozen=True)
class SchemaField:
    """A field the served schema of a kind must have for what kjob renders to reach the
    operator (a CRD prunes unknown fields silently): the CRD's name, group, version and
    kind, the field's path under the object, and the operator's release that added it."""

    crd: str
    group: str
    version: str
    kind: str
    path: tuple[str, ...]
    since: str  # "Kubeflow Trainer v2.2"


# The replicas a job has pods for, asked for only when needed (it may list the pods).
Replicas = Callable[[], set[str]]


class JobKind:
    """The adapter's interface, with the parts the kinds share."""

    kind = ""
    operator = ""  # "mpi-operator v0.8": what serves this kind
    install = ""  # the command that installs it

    @property
    def api_version(self) -> str:
        return names.JOB_KINDS[self.kind][0]

    @property
    def plural(self) -> str:
        return names.JOB_KINDS[self.kind][1]

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    # -- pods -------------------------------------------------------------------------------
    def pod_selector(self, job_name: str) -> str:
        """The label selector of the pods the operator makes for a job of this name."""
        raise NotImplementedError

    def gone_replica(self, job_name: str, pod_name: str) -> str | None:
        """The replica of a pod of this job that may no longer exist (its Events outlive
        it), from its name alone; None when the name is not one of this job's pods."""
        raise NotImplementedError

    def default_replica(self, job: dict, replicas: Replicas = set) -> str:
        """The replica `kjob logs` shows when none is named; it also writes the
        checkpoints, so fetch-ckpt reads from it first. `replicas` gives those the job
        has pods for, asked only where the job's object does not tell."""
        raise NotImplementedError

    def leaders(self, job: dict, replicas: Replicas = set) -> tuple[str, ...]:
        """The replicas whose exit code is the job's."""
        return (self.default_replica(job, replicas),)

    def checkpoint(self, job: dict, replicas: Replicas) -> Checkpoint | None:
        """How to ask the running trainer for a checkpoint before a delete (`replicas`:
        those the job has pods for); None when the deletion's own SIGTERM does it."""
        return None

    # -- state ------------------------------------------------------------------------------
    def state(self, job: dict) -> tuple[str, str | None]:
        """(one of backend.STATES, the message that explains it)."""
        raise NotImplementedError

    # condition type -> the final state it means
    final_conditions: dict[str, str] = {}

    def ended(self, job: dict) -> tuple[str | None, str | None]:
        """(Succeeded | Failed, when) of a job that has ended, else (None, None)."""
        st = job.get("status") or {}
        for c in st.get("conditions") or []:
            if c.get("status") == "True" and c.get("type") in self.final_conditions:
                return self.final_conditions[c["type"]], c.get("lastTransitionTime") or st.get("completionTime")
        return None, None

    def times(self, job: dict) -> tuple[str | None, str | None]:
        """(started, finished), RFC 3339."""
        st = job.get("status") or {}
        return st.get("startTime"), st.get("completionTime")

    def replica_counts(self, job: dict) -> dict[str, dict[str, int]]:
        """What `kjob status` shows of the operator's replica counts."""
        raise NotImplementedError

    def job_level_event(self, job: dict, event: dict) -> str | None:
        """Who a Warning Event about one of the job's own objects (not a pod) names, or
        None when the event is not about them."""
        obj = event.get("involvedObject") or {}
        if obj.get("kind") == self.kind and obj.get("name") == job["metadata"]["name"]:
            return self.kind
        return None

    # -- the pods' templates ------------------------------------------------------------------
    def pod_templates(self, job: dict) -> list[dict]:
        """The pod specs the job's object says its pods get (whole or in part)."""
        raise NotImplementedError

    def image(self, job: dict) -> str | None:
        for tspec in self.pod_templates(job):
            for c in tspec.get("containers") or []:
                if c.get("image"):
                    return c["image"]
        return None

    def pods_gone_note(self, job: dict, state: str) -> str:
        """Why a job that ended has no pods left, for delete's line."""
        return f"it had no pods left (they were removed when the job {state.lower()})"

    # -- preflight ----------------------------------------------------------------------------
    def schema_field(self) -> SchemaField | None:
        return None

    def runtime(self, job: dict) -> RuntimeRef | None:
        return None


class KubeflowJob(JobKind):
    """The training-operator era kinds (kubeflow.org): replicas under spec.<key>, pods
    labelled with kubeflow/common's keys, job states as conditions."""

    replica_key = ""  # mpiReplicaSpecs | pytorchReplicaSpecs
    leader = ""  # the replica whose log is shown by default and whose exit code is the job's
    replica_order = ("Launcher", "Master", "Worker")
    # The operators' condition types that are job states (kubeflow/common JobConditionType).
    condition_states = ("Created", "Running", "Restarting", "Succeeded", "Failed", "Suspended")
    final_conditions = {"Succeeded": "Succeeded", "Failed": "Failed"}

    def pod_selector(self, job_name: str) -> str:
        return f"{names.JOB_NAME_LABEL}={job_name}"

    def default_replica(self, job: dict, replicas: Replicas = set) -> str:
        return self.leader

    def gone_replica(self, job_name: str, pod_name: str) -> str | None:
        """worker-3 of <job>-worker-3, launcher of <job>-launcher-x7k2p (the Job
        controller's suffix), master-0 of <job>-master-0; not <job>-2-worker-0: another job's."""
        m = re.fullmatch(rf"{re.escape(job_name)}-(worker-\d+|master-\d+|launcher-[a-z0-9]+)", pod_name)
        if m is None:
            return None
        rest = m.group(1)
        return names.LAUNCHER if rest.startswith(names.LAUNCHER) else rest

    def state(self, job: dict) -> tuple[str, str | None]:
        """Final conditions win; otherwise the newest True one. No conditions yet means
        the operator has not picked the job up: Pending."""
        conds = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True" and c.get("type") in self.condition_states]
        for final in ("Failed", "Succeeded", "Suspended"):
            for c in conds:
                if c["type"] == final:
                    return final, c.get("message")
        if not conds:
            return "Pending", "no conditions yet: waiting for the operator to pick the job up"
        newest = max(enumerate(conds), key=lambda ic: (ic[1].get("lastTransitionTime") or "", ic[0]))[1]
        return newest["type"], newest.get("message")

    def replica_counts(self, job: dict) -> dict[str, dict[str, int]]:
        return (job.get("status") or {}).get("replicaStatuses") or {}

    def _replica_specs(self, job: dict) -> dict:
        return (job.get("spec") or {}).get(self.replica_key) or {}

    def pod_templates(self, job: dict) -> list[dict]:
        specs = self._replica_specs(job)
        ordered = [k for k in self.replica_order if k in specs] + [k for k in specs if k not in self.replica_order]
        return [t for k in ordered if (t := ((specs[k] or {}).get("template") or {}).get("spec"))]

    def image(self, job: dict) -> str | None:
        # The worker's image first: it is the one the trainer runs on every node.
        specs = self._replica_specs(job)
        for key in ("Worker", "Master", "Launcher"):
            containers = ((specs.get(key) or {}).get("template") or {}).get("spec", {}).get("containers") or []
            if containers:
                return containers[0].get("image")
        return None

    def pods_gone_note(self, job: dict, state: str) -> str:
        policy = (job.get("spec") or {}).get("runPolicy", {}).get("cleanPodPolicy", "None")
        return f"it had no pods left (cleanPodPolicy {policy} removed them when the job {state.lower()})"


class MPIJobKind(KubeflowJob):
    kind = "MPIJob"
    operator = "mpi-operator v0.8"
    install = "kubectl apply --server-side -f https://raw.githubusercontent.com/kubeflow/mpi-operator/v0.8.2/deploy/v2beta1/mpi-operator.yaml"
    replica_key = "mpiReplicaSpecs"
    leader = names.LAUNCHER

    def checkpoint(self, job: dict, replicas: Replicas) -> Checkpoint | None:
        # mpirun's own SIGTERM kills the ranks within a second: SIGUSR1 is passed on.
        return Checkpoint(names.LAUNCHER, "USR1", "mpirun")


class PyTorchJobKind(KubeflowJob):
    kind = "PyTorchJob"
    operator = "training-operator v1.9"
    install = 'kubectl apply --server-side -k "github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=v1.9.0"'
    replica_key = "pytorchReplicaSpecs"
    leader = f"{names.MASTER}-0"

    # No checkpoint call: torchrun is PID 1 of every pod and passes the deletion's
    # SIGTERM on to the trainer, which checkpoints within the grace period.


class TrainJobKind(JobKind):
    """Kubeflow Trainer v2 (v2.2+) on JobSet. The TrainJob's conditions are only
    Suspended, Complete and Failed (pkg/apis/trainer/v1alpha1/trainjob_types.go): there is
    no Running or Created; progress is status.jobsStatus, one entry per replicated job,
    counting its child Jobs (ready: every pod of the child Job ready or done)."""

    kind = "TrainJob"
    operator = "Kubeflow Trainer v2.3.0 (with JobSet)"
    install = 'kubectl apply --server-side -k "https://github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=v2.3.0"'
    # The Trainer copies the JobSet's Completed / Failed conditions under these types
    # (pkg/runtime/framework/plugins/jobset/jobset.go, Status).
    final_conditions = {"Complete": "Succeeded", "Failed": "Failed"}
    COUNTS = ("active", "ready", "succeeded", "failed", "suspended")
    # The replicated jobs a gone pod's or a child Job's name is read for: the Trainer's
    # own steps (pkg/constants: Node, Launcher, DatasetInitializer, ModelInitializer). A
    # name alone cannot tell <job>-a-node-0 (job "<job>-a") from a replicated job "a-node".
    REPLICATED_JOBS = (names.TRAINJOB_NODE, names.LAUNCHER, "dataset-initializer", "model-initializer")

    def pod_selector(self, job_name: str) -> str:
        # The JobSet is named as the TrainJob (plugins/jobset builder).
        return f"{names.JOBSET_NAME_LABEL}={job_name}"

    def gone_replica(self, job_name: str, pod_name: str) -> str | None:
        """JobSet's child Job <jobset>-<replicated job>-<job index>, whose Indexed pods the
        Job controller names <job>-<completion index>-<5 characters>: node-1 of
        <name>-node-0-1-x7k2p, launcher of <name>-launcher-0-0-x7k2p."""
        m = re.fullmatch(rf"{re.escape(job_name)}-({self._rjobs()})-(\d+)-(\d+)-[a-z0-9]{{5}}", pod_name)
        return replica_of(m.group(1), int(m.group(2)), int(m.group(3))) if m else None

    def _rjobs(self) -> str:
        return "|".join(map(re.escape, self.REPLICATED_JOBS))

    def _runtime_name(self, job: dict) -> str:
        return ((job.get("spec") or {}).get("runtimeRef") or {}).get("name") or ""

    def _patch_rjobs(self, job: dict) -> list[dict]:
        """The replicated jobs of every runtimePatches entry of the TrainJob."""
        return [rjob for patch in (job.get("spec") or {}).get("runtimePatches") or []
                for rjob in ((((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}).get("replicatedJobs")) or []]

    def _patched(self, job: dict) -> set[str]:
        """The names of the replicated jobs the TrainJob's runtimePatches patch."""
        return {rjob.get("name") for rjob in self._patch_rjobs(job)}

    def _has_launcher(self, job: dict, replicas: Replicas) -> bool:
        """The runtime has a launcher replicated job: the TrainJob patches one, or it has a
        pod (asked last: it may list the pods)."""
        return names.LAUNCHER in self._patched(job) or names.LAUNCHER in replicas()

    def _mpi_launcher(self, job: dict, replicas: Replicas) -> str | None:
        """The replica whose PID 1 runs mpirun, or None for a job that is not an MPI one.
        On kjob-openmpi: the launcher replicated job's pod where the runtime has one,
        else node-0 (a runtime of `node` only runs mpirun in node-0 and sshd in the other
        nodes). On a runtime not kjob's, a launcher makes it an MPI job."""
        name = self._runtime_name(job)
        if name == names.RUNTIMES["mpi"]:
            return names.LAUNCHER if self._has_launcher(job, replicas) else f"{names.TRAINJOB_NODE}-0"
        if name == names.RUNTIMES["torchrun"]:
            return None
        return names.LAUNCHER if self._has_launcher(job, replicas) else None

    def default_replica(self, job: dict, replicas: Replicas = set) -> str:
        return self._mpi_launcher(job, replicas) or f"{names.TRAINJOB_NODE}-0"

    def checkpoint(self, job: dict, replicas: Replicas) -> Checkpoint | None:
        launcher = self._mpi_launcher(job, replicas)
        if launcher is not None:
            return Checkpoint(launcher, "USR1", "mpirun")
        # torchrun (PID 1 of node-0) passes SIGTERM on to its ranks; the trainer's ranks
        # agree on the stop, and rank 0, on node-0, writes the checkpoint.
        return Checkpoint(f"{names.TRAINJOB_NODE}-0", "TERM", "torchrun")

    def state(self, job: dict) -> tuple[str, str | None]:
        st = job.get("status") or {}
        true = {c.get("type"): c for c in st.get("conditions") or [] if c.get("status") == "True"}
        for ctype, state in (("Failed", "Failed"), ("Complete", "Succeeded"), ("Suspended", "Suspended")):
            if ctype in true:
                return state, true[ctype].get("message")
        jobs = st.get("jobsStatus") or []
        if not jobs:
            return "Pending", "no jobs status yet: waiting for the trainer controller and JobSet to create the jobs"
        waiting = [j.get("name", "?") for j in jobs if not (j.get("ready") or 0) + (j.get("succeeded") or 0)]
        if waiting:
            return "Pending", f"replicated job(s) not ready yet: {', '.join(waiting)}"
        return "Running", "every replicated job is ready or done: " + ", ".join(
            f"{j.get('name', '?')} {'ready' if j.get('ready') else 'done'}" for j in jobs)

    def times(self, job: dict) -> tuple[str | None, str | None]:
        # TrainJob's status has no start or completion time: the final condition's time.
        return None, self.ended(job)[1]

    def replica_counts(self, job: dict) -> dict[str, dict[str, int]]:
        return {j.get("name", "?"): {k: j[k] for k in self.COUNTS if j.get(k)}
                for j in (job.get("status") or {}).get("jobsStatus") or []}

    def job_level_event(self, job: dict, event: dict) -> str | None:
        """The TrainJob's own Events, its JobSet's (same name: "FailedCreate"...) and its
        child Jobs' (<name>-<replicated job>-<index>): the Job controller's refused pods
        (an exceeded quota, Pod Security) are told only there."""
        obj = event.get("involvedObject") or {}
        name, kind = job["metadata"]["name"], obj.get("kind")
        if kind in (self.kind, "JobSet") and obj.get("name") == name:
            return kind
        if kind == "Job" and re.fullmatch(rf"{re.escape(name)}-({self._rjobs()})-\d+", obj.get("name", "")):
            return f"Job {obj['name']}"
        return None

    def pod_templates(self, job: dict) -> list[dict]:
        """The pod spec parts the TrainJob itself gives (the rest is in the runtime):
        each runtimePatches entry's pod spec, with the trainer's image on the trainer
        container, the default replica's first."""
        spec = job.get("spec") or {}
        image = (spec.get("trainer") or {}).get("image")
        first = self.default_replica(job).split("-")[0]
        found = []
        for rjob in self._patch_rjobs(job):
            tspec = ((((rjob.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec"))
            if not tspec:
                continue
            tspec = {**tspec, "containers": [{**c, "image": c.get("image") or image} if c.get("name") == names.TRAINJOB_CONTAINER else c
                                             for c in tspec.get("containers") or []]}
            found.append((rjob.get("name") != first, tspec))
        return [t for _, t in sorted(found, key=lambda f: f[0])]

    def image(self, job: dict) -> str | None:
        return ((job.get("spec") or {}).get("trainer") or {}).get("image") or super().image(job)

    def schema_field(self) -> SchemaField:
        version = self.api_version.rpartition("/")[2]
        return SchemaField(f"{self.plural}.{self.group}", self.group, version, self.kind, ("spec", "runtimePatches"), "Kubeflow Trainer v2.2")

    def runtime(self, job: dict) -> RuntimeRef | None:
        ref = (job.get("spec") or {}).get("runtimeRef") or {}
        if not ref.get("name"):
            return None
        group = ref.get("apiGroup") or names.TRAINER_GROUP
        kind = ref.get("kind") or "ClusterTrainingRuntime"
        plural = {"ClusterTrainingRuntime": "clustertrainingruntimes", "TrainingRuntime": "trainingruntimes"}.get(kind)
        if group != names.TRAINER_GROUP or plural is None:
            return None  # not a runtime kjob knows how to look up: the controller will say
        return RuntimeRef(f"{group}/{self.api_version.rpartition('/')[2]}", kind, plural, ref["name"], kind == "TrainingRuntime")


def replica_of(replicated_job: str, job_index: int, completion_index: int) -> str:
    """A JobSet pod's replica name: node-<completion index> for the trainer's nodes
    (kjob's runtimes have one node Job of N Indexed pods), the replicated job's name for
    one-pod jobs (launcher, dataset-initializer), else <name>-<job index>-<completion index>."""
    if replicated_job == names.TRAINJOB_NODE and job_index == 0:
        return f"{names.TRAINJOB_NODE}-{completion_index}"
    if job_index == 0 and completion_index == 0:
        return replicated_job
    return f"{replicated_job}-{job_index}-{completion_index}"


ADAPTERS: dict[str, JobKind] = {a.kind: a for a in (MPIJobKind(), PyTorchJobKind(), TrainJobKind())}


def kind_of(job_or_kind: dict | str) -> JobKind:
    """The adapter of a job object or kind name. Raises InvalidInput for any other kind."""
    kind = job_or_kind if isinstance(job_or_kind, str) else job_or_kind.get("kind", "")
    try:
        return ADAPTERS[kind]
    except KeyError:
        raise InvalidInput(f"kjob does not handle {kind or 'this'} jobs (it handles {', '.join(ADAPTERS)})") from None
