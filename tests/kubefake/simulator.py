"""The handle that the `kube` fixture yields: a kubeconfig for the server plus methods
that play the cluster's other parts — the operator (pods for a job, job conditions),
the kubelet (phases, container states, log lines, restarts), the scheduler (Events) —
and a fault switch. Tests use only these methods, never the server's internals, so a
real kube-apiserver with the real operators could sit behind the same fixture.
"""

from __future__ import annotations

import copy
import random
import time
from pathlib import Path

import yaml

from . import trainer
from .store import CRDS, Fault, State, now_rfc3339

KINDS = {"MPIJob": "mpijobs", "PyTorchJob": "pytorchjobs", "TrainJob": "trainjobs", "ClusterTrainingRuntime": "clustertrainingruntimes",
         "JobSet": "jobsets", "Job": "jobs", "Pod": "pods", "Event": "events", "Namespace": "namespaces",
         "Workload": "workloads", "LocalQueue": "localqueues"}
CLUSTER_KINDS = ("Namespace", "namespaces", "ClusterTrainingRuntime", "clustertrainingruntimes")
# Kueue v0.19's CRDs (kueue.x-k8s.io, served and stored at v1beta2) that kjob reads.
KUEUE_CRDS = {("kueue.x-k8s.io", "v1beta2", "workloads"): "Workload", ("kueue.x-k8s.io", "v1beta2", "localqueues"): "LocalQueue"}
# The operators' replica keys and the pod name they give each replica.
REPLICAS = {"mpijobs": ("mpiReplicaSpecs", ("Launcher", "Worker")), "pytorchjobs": ("pytorchReplicaSpecs", ("Master", "Worker"))}


def _replica_labels(plural: str, role: str, index: int) -> dict[str, str]:
    """The labels each operator really puts on a replica's pod. mpi-operator v2beta1
    (mpi_job_controller.go defaultLabels): job-role launcher|worker, replica-index on
    workers only, never replica-type. training-operator (kubeflow/common): replica-type
    and replica-index on every pod, job-role=master on the master."""
    if plural == "mpijobs":
        labels = {"training.kubeflow.org/job-role": role.lower()}
        if role != "Launcher":
            labels["training.kubeflow.org/replica-index"] = str(index)
        return labels
    labels = {"training.kubeflow.org/replica-type": role.lower(), "training.kubeflow.org/replica-index": str(index)}
    if role == "Master":
        labels["training.kubeflow.org/job-role"] = "master"
    return labels


# The value each operator gives training.kubeflow.org/operator-name: mpi-operator v2beta1
# constants.go OperatorName; training-operator pytorchjob_controller.go controllerName.
OPERATOR_NAME = {"mpijobs": "mpi-operator", "pytorchjobs": "pytorchjob-controller"}


def _owner(obj: dict) -> dict:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}


def _role_and_index(labels: dict[str, str]) -> tuple[str, int]:
    role = labels.get("training.kubeflow.org/replica-type") or labels.get("training.kubeflow.org/job-role", "")
    return role, int(labels.get("training.kubeflow.org/replica-index", 0))


def _plural(kind: str) -> str:
    return KINDS.get(kind, kind)


class KubeHandle:
    """See the module docstring. `namespace` is the kubeconfig context's namespace."""

    context = "kubefake"
    namespace = "default"

    def __init__(self, server, tmp: Path) -> None:
        self._server = server
        self._tmp = tmp
        self.server = server.url
        self.token = server.token
        self.kubeconfig = str(self.kubeconfig_variant(name="kubeconfig"))

    @property
    def exec(self):
        """The kubelet's side of pod exec (tests/kubefake/exec.py ExecRegistry):
        `serve_folder`, `serve`, `fault`, `calls_for`."""
        return self._server.state.extensions["exec"]

    # -- setup and faults ---------------------------------------------------------------
    def kubeconfig_variant(self, *, server: str | None = None, token: str | None = None, name: str = "kubeconfig-variant", namespace: str | None = None) -> Path:
        """Write a kubeconfig for this server (or another URL / token) and return its path."""
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kubefake", "cluster": {"server": server or self.server}}],
            "users": [{"name": "kjob-test", "user": {"token": token or self.token}}],
            "contexts": [{"name": self.context, "context": {"cluster": "kubefake", "user": "kjob-test", "namespace": namespace or self.namespace}}],
            "current-context": self.context,
        }
        path = self._tmp / name
        path.write_text(yaml.safe_dump(cfg))
        return path

    def create_namespace(self, name: str) -> None:
        self._call(lambda s: s.put("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}, "status": {"phase": "Active"}}))

    def remove_crd(self, kind: str) -> None:
        """Stop serving MPIJob or PyTorchJob (as if the operator were not installed)."""
        self._call(lambda s: [s.crds.pop(k) for k, v in list(s.crds.items()) if v == kind])

    def serve_crd_spec_fields(self, kind: str, fields: tuple[str, ...]) -> None:
        """Serve `kind`'s CRD with these fields under .spec in its schema (an older
        operator's: Trainer v2.1's TrainJob had podTemplateOverrides, not runtimePatches)."""
        self._call(lambda s: s.spec_fields.__setitem__(_plural(kind), tuple(fields)))

    def install_runtime(self, name: str, replicated_jobs: list[dict], ml_policy: dict | None = None, failure_policy: dict | None = None) -> None:
        """Create the ClusterTrainingRuntime `name` with these replicated jobs (each
        {"name", "replicas"?, "template": a batch/v1 JobTemplateSpec}), mlPolicy (with
        `mpi`, the trainer makes the MPI plugin's Secret and hostfile ConfigMap) and
        JobSet failurePolicy (with maxRestarts, a failed job says its restarts ran out)."""
        runtime = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "ClusterTrainingRuntime", "metadata": {"name": name},
                   "spec": {"template": {"spec": {"replicatedJobs": copy.deepcopy(replicated_jobs)}}}}
        if failure_policy is not None:
            runtime["spec"]["template"]["spec"]["failurePolicy"] = copy.deepcopy(failure_policy)
        if ml_policy is not None:
            runtime["spec"]["mlPolicy"] = copy.deepcopy(ml_policy)
        self._call(lambda s: s.put("clustertrainingruntimes", runtime))

    def serve_crd_at(self, kind: str, version: str) -> None:
        """Serve `kind` at `version` only, as after another operator's CRD of the same name
        replaced it (training-operator's MPIJob v1 over mpi-operator's v2beta1)."""
        def swap(s: State) -> None:
            plural = next(p for (_, _, p), k in CRDS.items() if k == kind)
            [s.crds.pop(key) for key, k in list(s.crds.items()) if k == kind]
            s.crds[("kubeflow.org", version, plural)] = kind
        self._call(swap)

    def install_crd(self, kind: str) -> None:
        self._call(lambda s: s.crds.update({k: v for k, v in CRDS.items() if v == kind}))

    def deny(self, verb: str, resource: str, namespace: str | None = None) -> None:
        """RBAC: forbid `verb` on `resource` ("pods/log", "mpijobs", ...) in a namespace (None: all)."""
        self._call(lambda s: s.denied.add((verb, resource, namespace)))

    def fault(self, verb: str, resource: str, *, status: int | None = None, times: int = 1, delay: float = 0.0, cut_after_bytes: int | None = None) -> Fault:
        """Fail the next `times` matching requests (-1: all): answer `status`, wait `delay`
        seconds, or cut a stream after `cut_after_bytes`. The returned Fault counts `.hits`."""
        fault = Fault(verb, resource, status=status, delay=delay, cut_after_bytes=cut_after_bytes, times=times)
        self._call(lambda s: s.faults.append(fault))
        return fault

    def clear_faults(self) -> None:
        self._call(lambda s: s.faults.clear())

    def compact(self) -> None:
        """Forget the watch history: resuming from any earlier resourceVersion gets 410 Gone."""
        self._call(lambda s: (s.history.clear(), setattr(s, "compacted_rv", s.rv)))

    def requests(self, verb: str, resource: str) -> int:
        """How many `verb resource` requests ("get", "pods/log") the server has seen."""
        return self._call(lambda s: s.requests.get((verb, resource), 0))

    def wait_for_requests(self, verb: str, resource: str, count: int, timeout: float = 20.0) -> None:
        """Block until the server has seen `count` such requests: lets a test act only
        after the client got somewhere, instead of sleeping and hoping."""
        deadline = time.monotonic() + timeout
        while self.requests(verb, resource) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server saw {self.requests(verb, resource)} '{verb} {resource}' requests, not {count}")
            time.sleep(0.01)

    # -- reading ------------------------------------------------------------------------------
    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        ns = "" if kind in CLUSTER_KINDS else namespace or self.namespace
        return self._call(lambda s: copy.deepcopy(s.get(_plural(kind), ns, name)))

    def list(self, kind: str, namespace: str | None = None) -> list[dict]:
        return self._call(lambda s: copy.deepcopy(s.items(_plural(kind), namespace)))

    def pods(self, job: str, namespace: str | None = None) -> list[str]:
        """Names of the job's pods, launcher/master first (a TrainJob's: launcher, then by
        replicated job and index)."""
        def find(s: State):
            labelled = [p for p in s.items("pods", namespace or self.namespace) if p["metadata"].get("labels", {}).get("jobset.sigs.k8s.io/jobset-name") == job]
            if labelled:
                return [p["metadata"]["name"] for p in sorted(labelled, key=lambda p: trainer.order(p["metadata"]["labels"]))]
            pods = [p for p in s.items("pods", namespace or self.namespace) if p["metadata"].get("labels", {}).get("training.kubeflow.org/job-name") == job]
            order = {"launcher": 0, "master": 0, "worker": 1}
            pods.sort(key=lambda p: (order.get(_role_and_index(p["metadata"]["labels"])[0], 2), _role_and_index(p["metadata"]["labels"])[1], p["metadata"]["name"]))
            return [p["metadata"]["name"] for p in pods]

        return self._call(find)

    # -- the operator ---------------------------------------------------------------------------
    def start_job(self, name: str, namespace: str | None = None) -> list[str]:
        """Make the job's pods (Pending, ContainerCreating) and the Created condition (a
        TrainJob has none: its JobSet's child Jobs are counted active in jobsStatus)."""
        ns = namespace or self.namespace
        if self._is_trainjob(name, ns):
            self._call(lambda s: trainer.make_pods(s, s.get("trainjobs", ns, name), self._waiting))
            self._call(lambda s: trainer.set_jobs_status(s, s.get("trainjobs", ns, name), "active"))
            return self.pods(name, ns)
        self._call(self._make_pods, name, ns)
        self.set_condition(name, "Created", reason="JobCreated", message=f"job {name} is created", namespace=ns)
        return self.pods(name, ns)

    def _is_trainjob(self, name: str, ns: str) -> bool:
        return self._call(lambda s: s.get("trainjobs", ns, name) is not None)

    def _job(self, s: State, name: str, ns: str) -> tuple[str, dict]:
        for plural in REPLICAS:
            obj = s.get(plural, ns, name)
            if obj is not None:
                return plural, obj
        raise KeyError(f"no job {ns}/{name} on the server")

    def replace_pod(self, pod: str, namespace: str | None = None) -> str:
        """Delete a pod and create its replica again (Pending), as the operator does for a
        failed launcher; returns the new pod's name (a launcher gets a new suffix)."""
        ns = namespace or self.namespace
        old = self.get("Pod", pod, ns)
        labels = old["metadata"]["labels"]
        job = labels["training.kubeflow.org/job-name"]
        role, index = _role_and_index(labels)
        only = (role, index)
        self._call(lambda s: s.remove("pods", ns, pod))
        return self._call(self._make_pods, job, ns, only)[0]

    def _make_companions(self, s: State, name: str, ns: str) -> None:
        """What the operators make besides pods. mpi-operator (mpi_job_controller.go): the
        headless Service <name> (newJobService), ConfigMap <name>-config with the hostfile
        (newConfigMap), Secret <name>-ssh (newSSHAuthSecret), all labelled app=<name>, and
        the launcher's batch Job <name>-launcher (newLauncherJob). training-operator: one
        headless Service per replica pod, labelled like the pod (CreateNewService)."""
        plural, job = self._job(s, name, ns)
        owner, app = [_owner(job)], {"app": name}
        if plural == "mpijobs":
            workers = int(job["spec"]["mpiReplicaSpecs"]["Worker"].get("replicas", 1))
            slots = int(job["spec"].get("slotsPerWorker", 1))
            hostfile = "".join(f"{name}-worker-{i}.{name}.{ns}.svc slots={slots}\n" for i in range(workers))
            meta = lambda n: {"name": n, "namespace": ns, "labels": dict(app), "ownerReferences": copy.deepcopy(owner)}  # noqa: E731
            s.put("services", {"apiVersion": "v1", "kind": "Service", "metadata": meta(name),
                               "spec": {"clusterIP": "None", "selector": {"training.kubeflow.org/operator-name": OPERATOR_NAME[plural], "training.kubeflow.org/job-name": name}}})
            s.put("configmaps", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(f"{name}-config"), "data": {"hostfile": hostfile}})
            s.put("secrets", {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/ssh-auth", "metadata": meta(f"{name}-ssh"),
                              "data": {"ssh-privatekey": "", "ssh-publickey": ""}})
            s.put("jobs", {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta(f"{name}-launcher"),
                           "spec": {"backoffLimit": job["spec"].get("runPolicy", {}).get("backoffLimit")}})
            return
        key, roles = REPLICAS[plural]
        for role in roles:
            for index in range(int((job["spec"][key].get(role) or {}).get("replicas", 0))):
                labels = {"training.kubeflow.org/job-name": name, "training.kubeflow.org/operator-name": OPERATOR_NAME[plural],
                          "training.kubeflow.org/replica-index": str(index), "training.kubeflow.org/replica-type": role.lower()}
                s.put("services", {"apiVersion": "v1", "kind": "Service", "spec": {"clusterIP": "None", "selector": dict(labels)},
                                   "metadata": {"name": f"{name}-{role.lower()}-{index}", "namespace": ns, "labels": labels, "ownerReferences": copy.deepcopy(owner)}})

    def _make_pods(self, s: State, name: str, ns: str, only: tuple[str, int] | None = None) -> list[str]:
        plural, job = self._job(s, name, ns)
        key, roles = REPLICAS[plural]
        if s.get("services", ns, name) is None and s.get("services", ns, f"{name}-{roles[0].lower()}-0") is None:
            self._make_companions(s, name, ns)
        made = []
        for role in roles:
            spec = job["spec"][key].get(role)
            if not spec:
                continue
            template = spec.get("template", {})
            for index in range(int(spec.get("replicas", 1))):
                if only is not None and only != (role.lower(), index):
                    continue
                if role == "Launcher":
                    pod_name = f"{name}-launcher-" + "".join(random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
                else:
                    pod_name = f"{name}-{role.lower()}-{index}"
                labels = {
                    **template.get("metadata", {}).get("labels", {}),
                    "training.kubeflow.org/job-name": name,
                    "training.kubeflow.org/operator-name": OPERATOR_NAME[plural],
                    **_replica_labels(plural, role, index),
                }
                owner = _owner(job)
                if role == "Launcher":
                    # mpi-operator makes a batch Job <name>-launcher (newLauncherJob); the Job
                    # controller makes the pod, owned by that Job and labelled with its uid.
                    launcher_job = s.get("jobs", ns, f"{name}-launcher")
                    owner = _owner(launcher_job)
                    uid = launcher_job["metadata"]["uid"]
                    labels |= {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": f"{name}-launcher",
                               "controller-uid": uid, "job-name": f"{name}-launcher"}
                pod_spec = copy.deepcopy(template.get("spec", {}))
                pod = {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": pod_name,
                        "namespace": ns,
                        "labels": labels,
                        "ownerReferences": [owner],
                    },
                    "spec": pod_spec,
                    "status": {"phase": "Pending", "conditions": [], "containerStatuses": [self._waiting(c, "ContainerCreating") for c in pod_spec.get("containers", [])]},
                }
                s.put("pods", pod)
                made.append(pod_name)
        return made

    def set_condition(self, name: str, type_: str, status: str = "True", *, reason: str | None = None, message: str | None = None, namespace: str | None = None) -> None:
        """Add or update a job condition; Succeeded/Failed turn Running off, as the operators do.
        A TrainJob's is a metav1.Condition (Complete, Failed, Suspended)."""
        ns = namespace or self.namespace
        if self._is_trainjob(name, ns):
            self._call(lambda s: trainer.set_condition(s, s.get("trainjobs", ns, name), type_, status, reason or type_, message or f"TrainJob {name} {type_}"))
            return

        def apply(s: State):
            plural, job = self._job(s, name, namespace or self.namespace)
            job = copy.deepcopy(job)
            conds = job.setdefault("status", {}).setdefault("conditions", [])
            now = now_rfc3339()
            if type_ in ("Succeeded", "Failed") and status == "True":
                for c in conds:
                    if c["type"] in ("Running", "Restarting"):
                        c["status"] = "False"
                job["status"]["completionTime"] = now
            if type_ == "Running":
                job["status"].setdefault("startTime", now)
            conds[:] = [c for c in conds if c["type"] != type_]
            conds.append({"type": type_, "status": status, "reason": reason or f"Job{type_}", "message": message or f"job {name} is {type_.lower()}", "lastUpdateTime": now, "lastTransitionTime": now})
            s.put(plural, job)

        self._call(apply)

    def set_replica_statuses(self, name: str, statuses: dict, namespace: str | None = None) -> None:
        """e.g. {"Launcher": {"active": 1}, "Worker": {"active": 2}}."""
        def apply(s: State):
            plural, job = self._job(s, name, namespace or self.namespace)
            job = copy.deepcopy(job)
            job.setdefault("status", {})["replicaStatuses"] = statuses
            s.put(plural, job)

        self._call(apply)

    def run_job(self, name: str, namespace: str | None = None) -> list[str]:
        """All pods Running, the Running condition, active replica counts (a TrainJob's:
        every child Job ready in jobsStatus)."""
        pods = self.pods(name, namespace) or self.start_job(name, namespace)
        for pod in pods:
            self.pod_running(pod, namespace)
        ns = namespace or self.namespace
        if self._is_trainjob(name, ns):
            self._call(lambda s: trainer.set_jobs_status(s, s.get("trainjobs", ns, name), "ready"))
            return pods
        self.set_replica_statuses(name, self._counts(pods, "active"), namespace)
        self.set_condition(name, "Running", reason="JobRunning", namespace=namespace)
        return pods

    def finish_job(self, name: str, state: str = "Succeeded", *, exit_code: int | None = None, keep_workers_running: bool = False, namespace: str | None = None) -> None:
        """End the job: its pods terminate (workers may stay Running, the known MPI trap)."""
        pods = self.pods(name, namespace)
        code = exit_code if exit_code is not None else (0 if state == "Succeeded" else 1)
        for pod in pods:
            if keep_workers_running and "-worker-" in pod:
                continue
            self.pod_terminated(pod, code, "Completed" if code == 0 else "Error", namespace)
        word = "succeeded" if state == "Succeeded" else "failed"
        ns = namespace or self.namespace
        if self._is_trainjob(name, ns):
            self._call(lambda s: trainer.set_jobs_status(s, s.get("trainjobs", ns, name), word))
            ctype, reason, message = self._call(lambda s: trainer.final_condition(s, s.get("trainjobs", ns, name), state))
            self.set_condition(name, ctype, reason=reason, message=message, namespace=ns)
            return
        self.set_replica_statuses(name, self._counts(pods, word), namespace)
        self.set_condition(name, state, reason=f"Job{state}", message=f"job {name} {'successfully completed' if state == 'Succeeded' else 'has failed'}", namespace=namespace)

    @staticmethod
    def _counts(pods: list[str], word: str) -> dict:
        out: dict = {}
        for pod in pods:
            role = "Launcher" if "-launcher-" in pod else "Master" if "-master-" in pod else "Worker"
            out.setdefault(role, {word: 0})[word] += 1
        return out

    # -- the kubelet and the scheduler ---------------------------------------------------------------
    @staticmethod
    def _waiting(container: dict, reason: str, message: str | None = None) -> dict:
        waiting = {"reason": reason} | ({"message": message} if message else {})
        return {"name": container["name"], "image": container.get("image", ""), "imageID": "", "ready": False, "restartCount": 0, "started": False, "state": {"waiting": waiting}}

    def _update_pod(self, pod: str, namespace: str | None, change) -> None:
        def apply(s: State):
            obj = copy.deepcopy(s.get("pods", namespace or self.namespace, pod))
            if obj is None:
                raise KeyError(f"no pod {pod}")
            change(obj, obj["status"].setdefault("containerStatuses", []))
            s.put("pods", obj)

        self._call(apply)

    def pod_running(self, pod: str, namespace: str | None = None) -> None:
        def change(obj, statuses):
            now = now_rfc3339()
            obj["spec"].setdefault("nodeName", "node-1")
            obj["status"].update(phase="Running", startTime=obj["status"].get("startTime", now), conditions=[{"type": t, "status": "True"} for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")])
            for cs in statuses:
                cs.update(ready=True, started=True, state={"running": {"startedAt": now}})

        self._update_pod(pod, namespace, change)

    def pod_terminated(self, pod: str, exit_code: int = 0, reason: str = "Completed", namespace: str | None = None) -> None:
        def change(obj, statuses):
            obj["status"]["phase"] = "Succeeded" if exit_code == 0 else "Failed"
            for cs in statuses:
                cs.update(ready=False, started=False, state={"terminated": {"exitCode": exit_code, "reason": reason, "finishedAt": now_rfc3339()}})

        self._update_pod(pod, namespace, change)

    def unschedulable(self, pod: str, message: str, namespace: str | None = None) -> None:
        """The scheduler cannot place the pod: PodScheduled=False and a FailedScheduling Event."""
        def change(obj, statuses):
            obj["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]

        self._update_pod(pod, namespace, change)
        self.event(pod, "FailedScheduling", message, namespace=namespace, source="default-scheduler")

    def image_pull_backoff(self, pod: str, namespace: str | None = None) -> None:
        def change(obj, statuses):
            obj["spec"].setdefault("nodeName", "node-1")
            for cs in statuses:
                cs["state"] = {"waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{cs["image"]}"'}}

        self._update_pod(pod, namespace, change)
        image = self.get("Pod", pod, namespace)["spec"]["containers"][0].get("image")
        self.event(pod, "Failed", f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed to pull and unpack image "{image}": not found', namespace=namespace)

    def missing_pvc(self, pod: str, claim: str, namespace: str | None = None) -> None:
        """The kubelet cannot mount the claim: the pod stays ContainerCreating, FailedMount Events."""
        volume = next((v["name"] for v in self.get("Pod", pod, namespace)["spec"].get("volumes", []) if v.get("persistentVolumeClaim", {}).get("claimName") == claim), "checkpoints")
        self._update_pod(pod, namespace, lambda obj, statuses: obj["spec"].setdefault("nodeName", "node-1"))
        self.event(pod, "FailedMount", f'MountVolume.SetUp failed for volume "{volume}" : persistentvolumeclaim "{claim}" not found', namespace=namespace)

    def crash_loop(self, pod: str, exit_code: int = 1, restarts: int = 3, reason: str = "Error", namespace: str | None = None) -> None:
        def change(obj, statuses):
            obj["spec"].setdefault("nodeName", "node-1")
            obj["status"]["phase"] = "Running"
            for cs in statuses:
                cs.update(restartCount=restarts, ready=False, lastState={"terminated": {"exitCode": exit_code, "reason": reason, "finishedAt": now_rfc3339()}}, state={"waiting": {"reason": "CrashLoopBackOff", "message": f"back-off 40s restarting failed container={cs['name']} pod={pod}"}})

        self._update_pod(pod, namespace, change)
        self.event(pod, "BackOff", "Back-off restarting failed container", namespace=namespace)

    def oom_killed(self, pod: str, restarts: int = 1, namespace: str | None = None) -> None:
        self.crash_loop(pod, exit_code=137, restarts=restarts, reason="OOMKilled", namespace=namespace)

    def restart_container(self, pod: str, exit_code: int = 1, namespace: str | None = None) -> None:
        """The container exits and the kubelet starts it again: the old log becomes `previous`."""
        ns = namespace or self.namespace

        def apply(s: State):
            obj = copy.deepcopy(s.get("pods", ns, pod))
            for cs in obj["status"]["containerStatuses"]:
                log = s.container_log(ns, pod, cs["name"])
                log.previous, log.current = log.current, []
                cs["restartCount"] = cs.get("restartCount", 0) + 1
                cs["lastState"] = {"terminated": {"exitCode": exit_code, "reason": "Error", "finishedAt": now_rfc3339()}}
                cs["state"] = {"running": {"startedAt": now_rfc3339()}}
            s.put("pods", obj)

        self._call(apply)

    def append_log(self, pod: str, lines: list[str], *, container: str | None = None, timestamp_ns: int | None = None, namespace: str | None = None) -> None:
        """Lines the container prints. `timestamp_ns` pins every line to one timestamp
        (a burst within one clock tick), otherwise each line gets the next tick."""
        ns = namespace or self.namespace

        def apply(s: State):
            obj = s.get("pods", ns, pod)
            name = container or obj["spec"]["containers"][0]["name"]
            log = s.container_log(ns, pod, name)
            log.current.extend((s.log_time(timestamp_ns), line) for line in lines)
            s.pulse()

        self._call(apply)

    def event(self, pod: str, reason: str, message: str, *, type_: str = "Warning", namespace: str | None = None, source: str = "kubelet") -> None:
        ns = namespace or self.namespace

        def apply(s: State):
            obj = s.get("pods", ns, pod)
            now = now_rfc3339()
            ev_name = f"{pod}.{random.getrandbits(48):012x}"
            s.put("events", {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": ev_name, "namespace": ns},
                "involvedObject": {"kind": "Pod", "name": pod, "namespace": ns, "uid": obj["metadata"]["uid"] if obj else ""},
                "reason": reason, "message": message, "type": type_, "count": 1,
                "firstTimestamp": now, "lastTimestamp": now, "source": {"component": source},
            })

        self._call(apply)

    # -- Kueue (sigs.k8s.io/kueue v0.19) ---------------------------------------------------------
    def install_kueue(self) -> None:
        """Serve Kueue's Workloads and LocalQueues (kueue.x-k8s.io/v1beta2), as its CRDs do."""
        self._call(lambda s: s.crds.update(KUEUE_CRDS))

    def local_queue(self, name: str, cluster_queue: str = "cluster-gpus", namespace: str | None = None) -> None:
        ns = namespace or self.namespace
        self._call(lambda s: s.put("localqueues", {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
                                                   "metadata": {"name": name, "namespace": ns}, "spec": {"clusterQueue": cluster_queue}}))

    def kueue_holds(self, name: str, namespace: str | None = None) -> None:
        """What Kueue's webhook and the operator leave on a queued job: runPolicy.suspend
        (Kueue's mutating webhook) and the condition Suspended (mpi-operator v0.8's
        "MPIJobSuspended"; training-operator's "JobSuspended")."""
        ns = namespace or self.namespace

        def apply(s: State):
            plural, job = self._job(s, name, ns)
            job["spec"].setdefault("runPolicy", {})["suspend"] = True
            s.put(plural, job)
        self._call(apply)
        self.set_condition(name, "Suspended", reason="JobSuspended", message=f"job {name} is suspended", namespace=ns)

    def workload(self, job: str, conditions: list[dict], *, status: dict | None = None, namespace: str | None = None) -> str:
        """Create or replace the job's Workload as Kueue's job reconciler makes it
        (pkg/controller/jobframework: named <kind>-<job>-<hash>, controlled by the job,
        labelled kueue.x-k8s.io/job-uid) with these status conditions (type, status,
        reason, message, lastTransitionTime) and more `status` (admission, requeueState).
        Returns its name."""
        ns = namespace or self.namespace

        def apply(s: State) -> str:
            plural, obj = self._job(s, job, ns)
            name = f"{obj['kind'].lower()}-{job}-5e1f2"
            s.put("workloads", {
                "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload",
                "metadata": {"name": name, "namespace": ns, "labels": {"kueue.x-k8s.io/job-uid": obj["metadata"]["uid"]},
                             "ownerReferences": [_owner(obj)]},
                "spec": {"queueName": obj["metadata"].get("labels", {}).get("kueue.x-k8s.io/queue-name"), "podSets": []},
                "status": {"conditions": [{"lastTransitionTime": now_rfc3339(), **c} for c in conditions], **(status or {})}})
            return name
        return self._call(apply)

    def object_event(self, kind: str, name: str, reason: str, message: str, *, type_: str = "Warning", namespace: str | None = None,
                     source: str = "job-controller") -> None:
        """An Event about any object (a child Job's FailedCreate), whether it exists or not."""
        ns = namespace or self.namespace

        def apply(s: State):
            now = now_rfc3339()
            s.put("events", {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": f"{name}.{random.getrandbits(48):012x}", "namespace": ns},
                "involvedObject": {"kind": kind, "name": name, "namespace": ns},
                "reason": reason, "message": message, "type": type_, "count": 1,
                "firstTimestamp": now, "lastTimestamp": now, "source": {"component": source},
            })

        self._call(apply)

    def delete_pod(self, pod: str, namespace: str | None = None) -> None:
        """The pod is gone (deleted, evicted and collected); its Events stay."""
        self._call(lambda s: s.remove("pods", namespace or self.namespace, pod))

    def _call(self, fn, *args):
        return self._server.call(fn, *args)
