"""JobSpec -> the Kubernetes objects of one job: where the MPIJob, the PyTorchJob and the
TrainJob are built, and kjob's ClusterTrainingRuntimes that TrainJobs run from.

A pure builder: no I/O except reading the templates, no cluster client. The Jinja
templates in manifests/templates/ hold the shape of the manifests; this module computes
the values, and every value enters a template through `| tojson`, so no string in a spec
can change the structure. The text is parsed back with yaml.safe_load; `render_objects`
returns those dicts, and submitting sends exactly them.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from functools import lru_cache
from pathlib import Path

from kjob import names, templates
from kjob.errors import KjobError
from kjob.names import LAUNCH_MODULE, TERMINATION_GRACE_S, TRAINER_MODULE, WORKER_HOLD_S
from kjob.render.commands import HOSTFILE, mpirun_flags, rank_env, trainer_command
from kjob.spec.kinds import RUNTIME_MAX_RESTARTS, RUNTIME_PULL_POLICY
from kjob.spec.model import JobSpec

# The trainer image runs as this non-root user (images/); mpi-operator mounts the SSH
# keys into its home, and sshd reads a config it can own.
MPI_USER_UID = 1000
MPI_HOME = "/home/mpiuser"
SSH_AUTH_MOUNT_PATH = f"{MPI_HOME}/.ssh"
SSHD_COMMAND = ["/usr/sbin/sshd", "-De", "-f", f"{MPI_HOME}/.sshd_config"]
# The port of that sshd (images/ssh/sshd_config; unprivileged, as it runs as mpiuser).
# A worker is Ready only once sshd accepts connections, so WaitForWorkersReady really
# means "mpirun can reach every worker".
SSHD_PORT = 2222
SSHD_READINESS = {"tcpSocket": {"port": SSHD_PORT}, "periodSeconds": 2, "failureThreshold": 3}
# The launcher only runs mpirun and ssh: a small, fixed request keeps it schedulable
# on a full GPU node.
LAUNCHER_RESOURCES = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}
# Set on the trainer containers unless the spec's env overrides them.
DEFAULT_ENV = {"NCCL_DEBUG": "WARN", "PYTHONUNBUFFERED": "1"}
# torchrun (PID 1 of a PyTorchJob pod) passes SIGTERM on to the trainer and kills it
# after this many seconds (its default is 30); it must end before the kubelet's SIGKILL.
TORCHRUN_SHUTDOWN_ENV = {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(TERMINATION_GRACE_S - 10)}
# The MPIJob launcher's PID 1: mpirun's own SIGTERM (pod deleted, preempted, drained) kills
# the ranks before they can checkpoint, so mpirun runs under the launch wrapper, which
# turns the SIGTERM into SIGUSR1. `mpirun ...` stays in args.
LAUNCHER_COMMAND = ["python", "-m", LAUNCH_MODULE, "--"]
# The MPIJob worker's PID 1: sshd under the same wrapper with --hold. When the whole job
# goes every pod gets SIGTERM at once, and sshd as PID 1 would take the ranks in its
# sessions with it; the wrapper keeps the SIGTERM from sshd until those sessions end
# (after the launcher's checkpoint), at most WORKER_HOLD_S. `/usr/sbin/sshd ...` stays
# in args.
WORKER_COMMAND = ["python", "-m", LAUNCH_MODULE, "--hold", "--hold-limit", str(WORKER_HOLD_S), "--"]
# kjob-openmpi runs every pod of a TrainJob as one Indexed Job (replicated job `node`): the
# pod of completion index 0 is the launcher and execs mpirun under the launch wrapper (the
# args are mpirun's); the others exec sshd under the wrapper with --hold, as the MPIJob's
# workers do. The Job controller gives each pod its index (JOB_COMPLETION_INDEX).
TRAINJOB_MPI_COMMAND = ["/bin/sh", "-c",
                        f'if [ "$JOB_COMPLETION_INDEX" = {names.MPI_LAUNCHER_INDEX} ]; then exec {shlex.join(LAUNCHER_COMMAND)} "$@"; fi; '
                        f"exec {shlex.join(WORKER_COMMAND + SSHD_COMMAND)}", names.RUNTIMES["mpi"]]
# Trainer's MPI plugin makes this ConfigMap but mounts it in a `launcher` replicated job
# only, which kjob-openmpi has not: the TrainJob mounts it in every node (runtimePatches).
MPI_HOSTFILE_VOLUME = "kjob-mpi-hostfile"
TORCHRUN_COMMAND = ["torchrun"]
# The image a kjob runtime names until a TrainJob's trainer.image replaces it.
RUNTIME_DEFAULT_IMAGE = "ghcr.io/kjob/kjob-trainer-pytorch:0.1.0"


def labels(spec: JobSpec) -> dict[str, str]:
    """The labels kjob puts on the job and its pods (`kjob list` selects managed-by)."""
    return {
        names.LABEL_NAME: "kjob",
        names.LABEL_INSTANCE: spec.name,
        names.LABEL_MANAGED_BY: "kjob",
        names.LABEL_COMPONENT: "training",
    }


def annotations(spec: JobSpec) -> dict[str, str]:
    """Annotations that let `kjob status/fetch-ckpt` and conflict checks read the job back."""
    return {
        names.SPEC_HASH: spec.spec_hash(),
        names.CHECKPOINT_CLAIM: spec.checkpoints.claim_name,
        names.OUTPUT_PATH: spec.output_path,
        names.WORKERS: str(spec.workers),
        names.GPUS_PER_WORKER: str(spec.gpus_per_worker),
        names.FRAMEWORK: spec.framework,
        names.MODEL: spec.model,
    }


def _volumes(spec: JobSpec) -> tuple[list[dict], list[dict]]:
    """(volumes, volumeMounts) of a trainer pod: dataset (read-only), checkpoints, /dev/shm."""
    volumes, mounts = [], []
    if spec.data is not None:
        d = spec.data
        if d.pvc:
            source = {"persistentVolumeClaim": {"claimName": d.pvc, "readOnly": True}}
        elif d.host_path:
            source = {"hostPath": {"path": d.host_path, "type": "Directory"}}
        else:
            source = {"nfs": {"server": d.nfs.server, "path": d.nfs.path, "readOnly": True}}
        volumes.append({"name": "data", **source})
        mounts.append({"name": "data", "mountPath": d.mount_path, "readOnly": True})
    volumes.append({"name": "checkpoints", "persistentVolumeClaim": {"claimName": spec.checkpoints.claim_name}})
    mounts.append({"name": "checkpoints", "mountPath": spec.checkpoints.mount_path})
    # Data-loader workers share batches through /dev/shm; the runtime's default is 64 MiB.
    volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}})
    mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return volumes, mounts


def _trainer_resources(spec: JobSpec) -> dict:
    req, lim = spec.pod_requests, spec.pod_limits
    requests = {k: v for k, v in (("cpu", req.cpu), ("memory", req.memory)) if v} | req.extended
    limits = {k: v for k, v in (("cpu", lim.cpu), ("memory", lim.memory)) if v} | lim.extended
    if spec.gpus_per_worker:
        limits["nvidia.com/gpu"] = str(spec.gpus_per_worker)
    return {"requests": requests, "limits": limits}


def _env(spec: JobSpec, defaults: dict[str, str] | None = None, *, secrets: bool = True) -> list[dict]:
    """A container's env: kjob's defaults, then the spec's; a Secret's variable as its
    reference only (the kubelet reads the value), and only where `secrets`."""
    merged: dict = {**DEFAULT_ENV, **(defaults or {}), **spec.env}
    out = []
    for name, value in merged.items():
        if isinstance(value, str):
            out.append({"name": name, "value": value})
        elif secrets:
            ref = value.secret_key_ref
            out.append({"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return out


def _pod(spec: JobSpec, *, container: str, command: list[str], args: list[str], env: list[dict],
         resources: dict, trainer: bool, readiness: dict | None = None) -> dict:
    """Values for one pod template (manifests/templates/_pod.yaml.j2)."""
    volumes, mounts = _volumes(spec) if trainer else ([], [])
    capabilities: dict = {"drop": ["ALL"]}
    if trainer and spec.capabilities:
        capabilities["add"] = list(dict.fromkeys(spec.capabilities))
    return {
        "labels": labels(spec), "container": container, "command": command, "args": args, "env": env,
        # Secrets reach the pods that run the trainer only.
        "env_from": [{"secretRef": {"name": s}} for s in spec.env_from] if trainer else [],
        "readiness": readiness,
        "resources": resources, "volumes": volumes, "mounts": mounts,
        "termination_grace": TERMINATION_GRACE_S,
        # sshd runs as mpiuser on an unprivileged port, so every capability can go.
        "pod_security": _pod_security()["pod_security"],
        "container_security": {"allowPrivilegeEscalation": False, "capabilities": capabilities},
        # The network opt-ins are the trainer pods' (the launcher only runs mpirun): a Multus
        # annotation there would take a device from the pool for nothing.
        "annotations": dict(spec.pod_annotations) if trainer else {},
        "host_network": spec.host_network and trainer,
        # GPU jobs get the node's GPUs; tolerations/selector apply to the launcher too so it
        # lands in the same pool (it is small).
        "node_selector": dict(spec.node_selector),
        "tolerations": [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations],
        "image_pull_secrets": [{"name": s} for s in spec.image_pull_secrets],
    }


def _run_policy(spec: JobSpec, min_available: int) -> dict:
    rp = spec.run_policy
    # No `suspend`: Kueue suspends and resumes jobs itself, and a value written here would
    # make GitOps tools fight it (the operators' default is not suspended).
    out: dict = {"cleanPodPolicy": rp.clean_pod_policy, "backoffLimit": rp.backoff_limit}
    if rp.active_deadline_seconds is not None:
        out["activeDeadlineSeconds"] = rp.active_deadline_seconds
    if rp.ttl_seconds_after_finished is not None:
        out["ttlSecondsAfterFinished"] = rp.ttl_seconds_after_finished
    if spec.scheduler_name == "volcano":
        # Gang scheduling: every pod of the job or none.
        policy: dict = {"minAvailable": min_available}
        if spec.queue:
            policy["queue"] = spec.queue
        if spec.priority_class_name:
            policy["priorityClass"] = spec.priority_class_name
        out["schedulingPolicy"] = policy
    return out


def _job_labels(spec: JobSpec) -> dict[str, str]:
    out = labels(spec)
    if spec.queue and spec.scheduler_name != "volcano":
        out[names.KUEUE_QUEUE_LABEL] = spec.queue
    return out


def _context(spec: JobSpec) -> dict:
    common = {"spec": spec, "labels": _job_labels(spec), "annotations": annotations(spec),
              "namespace": spec.namespace, "scheduler_name": spec.scheduler_name,
              "priority_class_name": spec.priority_class_name, "image": spec.image,
              "image_pull_policy": spec.image_pull_policy}
    data_path = spec.data.mount_path if spec.data else None
    train = trainer_command(spec, data_path=data_path, output_path=spec.output_path)
    if spec.launcher == "mpi":
        mpirun = ["mpirun", "-np", str(spec.world_size)] + mpirun_flags(spec, local=False)
        launcher = _pod(spec, container="launcher", command=list(LAUNCHER_COMMAND), args=mpirun + train,
                        env=_env(spec, rank_env(spec), secrets=False), resources=LAUNCHER_RESOURCES, trainer=False)
        worker = _pod(spec, container="worker", command=list(WORKER_COMMAND), args=list(SSHD_COMMAND), env=_env(spec, rank_env(spec)),
                      resources=_trainer_resources(spec), trainer=True, readiness=SSHD_READINESS)
        return {**common, "launcher": launcher, "worker": worker, "ssh_auth_mount_path": SSH_AUTH_MOUNT_PATH,
                # Gang size = the workers only: with WaitForWorkersReady the launcher pod
                # appears after them, so counting it would deadlock (mpi-operator#608).
                "run_policy": _run_policy(spec, spec.workers)}
    # torchrun reads --nnodes/--nproc-per-node/--node-rank/--master-* from the PET_*
    # variables that the training-operator sets on every replica.
    pod = _pod(spec, container="pytorch", command=["torchrun"], args=["--module", TRAINER_MODULE] + train[3:],
               env=_env(spec, TORCHRUN_SHUTDOWN_ENV), resources=_trainer_resources(spec), trainer=True)
    return {**common, "pod": pod, "workers_beyond_master": spec.workers - 1,
            "nproc_per_node": str(spec.procs_per_worker), "run_policy": _run_policy(spec, spec.workers)}


def _trainjob_context(spec: JobSpec) -> dict:
    """Values of trainjob.yaml.j2: the trainer's command and pods (render.commands, as for the
    other kinds), the pod settings as one runtimePatches entry for the replicated job `node`."""
    data_path = spec.data.mount_path if spec.data else None
    train = trainer_command(spec, data_path=data_path, output_path=spec.output_path)
    if spec.launcher == "mpi":
        command = list(TRAINJOB_MPI_COMMAND)
        args = ["mpirun", "-np", str(spec.world_size)] + mpirun_flags(spec, local=False) + train
        env = _env(spec, rank_env(spec))
    else:
        command, args = list(TORCHRUN_COMMAND), ["--module", TRAINER_MODULE] + train[3:]
        env = _env(spec, TORCHRUN_SHUTDOWN_ENV)
    pod = _pod(spec, container=names.TRAINJOB_CONTAINER, command=command, args=args, env=env,
               resources=_trainer_resources(spec), trainer=True)
    volumes, mounts = pod["volumes"], pod["mounts"]
    if spec.launcher == "mpi":
        hostfile = posixpath.dirname(HOSTFILE)
        volumes = volumes + [{"name": MPI_HOSTFILE_VOLUME, "configMap": {
            "name": spec.name + names.MPI_HOSTFILE_SUFFIX, "items": [{"key": "hostfile", "path": posixpath.basename(HOSTFILE)}]}}]
        mounts = mounts + [{"name": MPI_HOSTFILE_VOLUME, "mountPath": hostfile, "readOnly": True}]
    container: dict = {"name": names.TRAINJOB_CONTAINER, "volumeMounts": mounts}
    if spec.capabilities:  # the runtime drops every capability; a patch replaces `add` only
        container["securityContext"] = pod["container_security"]
    pod_patch: dict = {"volumes": volumes}
    for key, value in (("imagePullSecrets", pod["image_pull_secrets"]), ("nodeSelector", pod["node_selector"]),
                       ("tolerations", pod["tolerations"])):
        if value:
            pod_patch[key] = value
    pod_patch["containers"] = [container]
    metadata: dict = {"labels": pod["labels"]}
    if pod["annotations"]:
        metadata["annotations"] = pod["annotations"]
    ref = {"apiGroup": names.TRAINER_GROUP, "kind": names.RUNTIME_KIND, "name": spec.runtime_name}
    return {"spec": spec, "api_version": names.TRAINER_VERSION, "labels": _job_labels(spec),
            "annotations": annotations(spec), "namespace": spec.namespace, "image": spec.image, "runtime_ref": ref,
            "active_deadline_seconds": spec.run_policy.active_deadline_seconds, "manager": names.RUNTIME_PATCH_MANAGER,
            "trainer": {"command": command, "args": args, "env": env, "resources": pod["resources"]},
            "patched_jobs": [names.TRAINJOB_NODE], "pod_metadata": metadata, "pod_patch": pod_patch}


def _runtime_context(launcher: str) -> dict:
    """Values of clustertrainingruntime.yaml.j2 for kjob's runtime of `launcher`: one
    replicated job, `node`, whose pods take the TrainJob's trainer settings (image, command,
    env, resourcesPerNode; numNodes pods)."""
    node = {"name": names.TRAINJOB_NODE, "command": TORCHRUN_COMMAND, "success_policy": None}
    common = {"api_version": names.TRAINER_VERSION, "name": names.RUNTIMES[launcher], "container": names.TRAINJOB_CONTAINER,
              "labels": {names.LABEL_NAME: "kjob", names.LABEL_MANAGED_BY: "kjob", names.LABEL_COMPONENT: "runtime"},
              "job_labels": {names.TRAINJOB_ANCESTOR_LABEL: names.TRAINJOB_ANCESTOR_TRAINER},
              "image": RUNTIME_DEFAULT_IMAGE, "image_pull_policy": RUNTIME_PULL_POLICY,
              "failure_policy": {"maxRestarts": RUNTIME_MAX_RESTARTS},
              "termination_grace": TERMINATION_GRACE_S, **_pod_security()}
    if launcher == "torchrun":
        return {**common, "ml_policy": {"numNodes": 1, "torch": {}}, "network": None, "replicated_jobs": [node]}
    # Open MPI: the MPI plugin makes the job's ssh keys (mounted at sshAuthMountPath in every
    # node) and its hostfile (every node, `<name>-node-0-<i>.<name> slots=N`). Node 0 runs
    # mpirun, and the job is done when it is: the Job's successPolicy then stops the
    # others' sshd (Kubernetes 1.33+, where Job successPolicy is GA).
    node = {**node, "command": TRAINJOB_MPI_COMMAND,
            "success_policy": {"rules": [{"succeededIndexes": str(names.MPI_LAUNCHER_INDEX)}]}}
    mpi = {"numProcPerNode": 1, "mpiImplementation": "OpenMPI", "sshAuthMountPath": SSH_AUTH_MOUNT_PATH,
           "runLauncherAsNode": False}
    # Node names resolve before the pods are ready: the launcher looks them up while the
    # other nodes' sshd starts (its launch wrapper waits for their ssh port).
    return {**common, "ml_policy": {"numNodes": 1, "mpi": mpi}, "network": {"publishNotReadyAddresses": True},
            "replicated_jobs": [node]}


def _pod_security() -> dict:
    """The pods' and trainer containers' security contexts: the image's non-root mpiuser,
    every capability dropped (a spec adds its few to the trainer containers)."""
    return {"pod_security": {"runAsUser": MPI_USER_UID, "runAsGroup": MPI_USER_UID, "runAsNonRoot": True,
                             "fsGroup": MPI_USER_UID, "fsGroupChangePolicy": "OnRootMismatch",
                             "seccompProfile": {"type": "RuntimeDefault"}},
            "container_security": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}


_TEMPLATES = {"MPIJob": "mpijob.yaml.j2", "PyTorchJob": "pytorchjob.yaml.j2", "TrainJob": "trainjob.yaml.j2"}


def render_objects(spec: JobSpec) -> list[dict]:
    """The Kubernetes objects of one job (one MPIJob, PyTorchJob or TrainJob): what
    `kjob submit` sends, deterministic. A TrainJob's runtime is not among them
    (runtime_objects: a cluster's, installed once).

    Raises kjob.errors.KjobError if a template produced something that is not the
    expected object (a bug in kjob, reported instead of sent)."""
    template = _TEMPLATES[spec.kind]
    context = _trainjob_context(spec) if spec.kind == "TrainJob" else _context(spec)
    return [_render_one(template, context, spec.kind)]


def runtime_objects(specs) -> list[dict]:
    """kjob's ClusterTrainingRuntimes that the TrainJobs of `specs` run from, each once, in
    a fixed order: what `kjob render` writes beside them (a runtime named with `runtime:`
    is the cluster's own and is not written)."""
    used = {s.launcher for s in specs if s.kind == "TrainJob" and s.runtime is None}
    return [runtime_object(launcher) for launcher in names.RUNTIMES if launcher in used]


def runtime_object(launcher: str) -> dict:
    """kjob's ClusterTrainingRuntime for `launcher` (mpi: kjob-openmpi, torchrun: kjob-torch)."""
    return _render_one("clustertrainingruntime.yaml.j2", _runtime_context(launcher), names.RUNTIME_KIND)


def _render_one(template: str, context: dict, kind: str) -> dict:
    import yaml

    text = _environment().get_template(template).render(**context)
    docs = [d for d in yaml.load_all(text, Loader=_yaml_loader()) if d is not None]
    if len(docs) != 1 or not isinstance(docs[0], dict) or docs[0].get("kind") != kind:
        raise KjobError(f"internal error: template {template} did not produce one {kind}")
    return docs[0]


# --- Jinja ---------------------------------------------------------------------------------

# Characters that must not appear raw inside a YAML double-quoted scalar: YAML folds line
# breaks (NEL, LS, PS) and rejects non-printable ones, so they are written as escapes.
_YAML_RAW_UNSAFE = {0x85, 0x2028, 0x2029, 0xFEFF}


def yaml_safe_json(value) -> str:
    """JSON text of `value` that YAML reads back as exactly `value` (JSON is YAML 1.2;
    non-ASCII text stays readable, risky characters become \\u/\\U escapes — PyYAML would
    turn a JSON surrogate pair into two broken characters, so astral characters use \\U)."""
    out = []
    for ch in json.dumps(value, ensure_ascii=False, allow_nan=False):
        code = ord(ch)
        if code < 0x7F or (ch.isprintable() and code not in _YAML_RAW_UNSAFE):
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def templates_dir() -> Path:
    """Where the Jinja templates are: manifests/templates in a checkout, kjob/templates in a wheel."""
    return Path(templates.__file__).parent


@lru_cache(maxsize=1)
def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["tojson"] = yaml_safe_json
    return env


def _yaml_loader():
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)
