"""The words kjob and the Kubeflow operators share: API kinds, label and annotation keys,
replica names, signal-carrying programs and grace periods.

Rendering writes these names and the cluster code reads them back, so each is spelled
once, here, with the operator source that defines it. Plain constants: this module
imports nothing.
"""

from __future__ import annotations

# --- the job kinds ----------------------------------------------------------------------
GROUP = "kubeflow.org"
# kind -> (apiVersion, plural): the versions the targeted operators serve
# (mpi-operator v0.8: v2beta1 MPIJob; training-operator v1.9: v1 PyTorchJob).
# Kubeflow Trainer v2 (kubeflow/trainer v2.3.0): its own group, so it coexists with both
# (pkg/apis/trainer/v1alpha1/groupversion_info.go; the TrainJob's plural is in
# manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml). kjob renders runtimePatches,
# which the API has since v2.2.
TRAINER_GROUP = "trainer.kubeflow.org"
TRAINER_VERSION = f"{TRAINER_GROUP}/v1alpha1"
JOB_KINDS = {"MPIJob": (f"{GROUP}/v2beta1", "mpijobs"), "PyTorchJob": (f"{GROUP}/v1", "pytorchjobs"),
             "TrainJob": (TRAINER_VERSION, "trainjobs")}
# What `kind` a spec renders to when it names none: what its launcher implies.
DEFAULT_KIND = {"mpi": "MPIJob", "torchrun": "PyTorchJob"}
# A TrainJob runs from a ClusterTrainingRuntime (its plural, from
# manifests/base/crds/trainer.kubeflow.org_clustertrainingruntimes.yaml); kjob ships one
# per launcher (manifests/runtimes/) and a spec's `runtime:` names any other.
RUNTIME_KIND = "ClusterTrainingRuntime"
RUNTIME_PLURAL = "clustertrainingruntimes"
RUNTIMES = {"mpi": "kjob-openmpi", "torchrun": "kjob-torch"}
# runtimePatches entries are keyed by manager (trainjob_types.go RuntimePatch.Manager: a
# domain-prefixed path, checked by the JobSet plugin's validation); Kueue uses its own.
RUNTIME_PATCH_MANAGER = "kjob.dev/kjob"

# --- labels kjob puts on a job and its pods -----------------------------------------------
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
# `kjob list` selects on this: everything kjob made, and nothing else.
MANAGED_SELECTOR = f"{LABEL_MANAGED_BY}=kjob"
# Kueue admits a job into the LocalQueue this label names.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# The fetch-ckpt helper pod carries the name of the job it reads.
HELPER_LABEL = "kjob.dev/helper-for"

# --- annotations kjob writes on a job so that it can read the job back -------------------
SPEC_HASH = "kjob.dev/spec-hash"  # re-submit: same hash, nothing to do; another, a conflict
CHECKPOINT_CLAIM = "kjob.dev/checkpoint-claim"  # fetch-ckpt: which PVC holds the checkpoints
OUTPUT_PATH = "kjob.dev/output-path"  # fetch-ckpt: the trainer's --output-path in the pods
WORKERS = "kjob.dev/workers"  # status: the size of the job as the spec asked
GPUS_PER_WORKER = "kjob.dev/gpus-per-worker"
FRAMEWORK = "kjob.dev/framework"
MODEL = "kjob.dev/model"

# --- marks a GitOps tool leaves on what it applies ----------------------------------------
# Argo CD (argoproj/argo-cd common/common.go): server-side apply syncs use the field manager
# ArgoCDSSAManager; annotation tracking (the default since 3.0) writes
# "<app>:<group>/<kind>:<namespace>/<name>" under AnnotationKeyAppInstance. Its label
# tracking uses app.kubernetes.io/instance, which kjob itself sets: not a sign on its own.
ARGOCD_FIELD_MANAGER = "argocd-controller"
ARGOCD_TRACKING_ID = "argocd.argoproj.io/tracking-id"
# Flux: kustomize-controller and helm-controller apply as their controllerName (main.go)
# and label what they apply with the owning object's name and namespace
# (<group>/name, <group>/namespace of kustomize.toolkit.fluxcd.io / helm.toolkit.fluxcd.io).
FLUX_OWNERS = {"kustomize.toolkit.fluxcd.io": ("kustomize-controller", "Kustomization"),
               "helm.toolkit.fluxcd.io": ("helm-controller", "HelmRelease")}

# --- labels the operators put on the pods they create ------------------------------------
# kubeflow/common pkg/apis/common/v1/constants.go (JobNameLabel, JobRoleLabel,
# ReplicaTypeLabel, ReplicaIndexLabel); both operators use these keys.
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
# mpi-operator v0.8 (pkg/controller/mpi_job_controller.go, defaultLabels and newWorker)
# gives every pod its role, launcher or worker, and only the workers an index. It never
# sets replica-type.
JOB_ROLE_LABEL = "training.kubeflow.org/job-role"
# training-operator v1.9 gives every PyTorchJob pod its replica type (master|worker,
# lowercased) and index.
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
REPLICA_INDEX_LABEL = "training.kubeflow.org/replica-index"

# A TrainJob runs as a JobSet (sigs.k8s.io/jobset v0.12.0). JobSet labels every pod with
# its JobSet and replicated job (api/jobset/v1alpha2/jobset_types.go: JobSetNameKey,
# ReplicatedJobNameKey); the Job controller of Kubernetes gives each pod of an Indexed
# Job its index (k8s.io/api batch/v1 types.go: JobCompletionIndexAnnotation, also a
# label since 1.28). A pod of replicated job R, index i is `<name>-R-0-<i>`, resolvable
# as `<name>-R-0-<i>.<name>` (the JobSet's headless Service; Trainer's jobset plugin
# IdentifyPodNetwork).
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
JOB_INDEX_LABEL = "jobset.sigs.k8s.io/job-index"  # which child Job of its replicated job (JobIndexKey)
# Trainer's replicated jobs and trainer container (pkg/constants/constants.go: Node,
# Launcher): trainer.image/command/args/env/resourcesPerNode reach the container named
# `node` of the replicated jobs labelled trainjob-ancestor-step: trainer
# (pkg/runtime/framework/plugins/jobset/builder.go Trainer, core/trainingruntime.go).
# Upstream's MPI runtimes also have a replicated job `launcher`; kjob's runtimes have
# `node` only (manifests/runtimes/): in kjob-openmpi the launcher, which runs mpirun, is
# the node pod of completion index MPI_LAUNCHER_INDEX (`<name>-node-0-0-xxxxx`).
TRAINJOB_NODE = "node"
TRAINJOB_LAUNCHER = "launcher"
TRAINJOB_CONTAINER = "node"
MPI_LAUNCHER_INDEX = 0
TRAINJOB_ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
TRAINJOB_ANCESTOR_TRAINER = "trainer"
# The MPI plugin (pkg/runtime/framework/plugins/mpi/mpi.go, constants.go) makes the
# Secret `<name>-mpi-ssh-auth` (id_rsa, id_rsa.pub, authorized_keys, mounted at the
# runtime's sshAuthMountPath in every `node` container) and the ConfigMap
# `<name>-mpi-hostfile` (`<name>-node-0-<i>.<name> slots=N` per node; the plugin mounts it
# at /etc/mpi/hostfile in a `launcher` replicated job only, kjob's TrainJob in every node).
MPI_SSH_SECRET_SUFFIX = "-mpi-ssh-auth"
MPI_HOSTFILE_SUFFIX = "-mpi-hostfile"
# The torch plugin sets these on the trainer container and its validating webhook refuses
# a TrainJob whose trainer.env sets one (constants.go TorchRunReservedEnvNames).
TORCH_RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")

# --- replica names, as `kjob logs --replica` and `kjob status` show them ------------------
LAUNCHER = "launcher"  # the MPIJob's launcher pod (role launcher, no index); a TrainJob's launcher replicated job
WORKER = "worker"  # workers of both kinds: worker-0, worker-1, ...
MASTER = "master"  # the PyTorchJob's master: master-0

# --- the trainer's programs ---------------------------------------------------------------
TRAINER_MODULE = "kjob_trainer.train"
# An MPIJob launcher's PID 1 runs mpirun under this wrapper, which turns SIGTERM into
# SIGUSR1 (trainer/kjob_trainer/launch/pid1.py).
LAUNCH_MODULE = "kjob_trainer.launch"
# OpenMPI's launcher under its various names. It forwards SIGUSR1 to every rank (the
# trainer's "save a checkpoint and stop"), while its own SIGTERM kills the ranks within
# about a second: too soon for a checkpoint.
MPI_LAUNCHERS = ("mpirun", "mpiexec", "prterun", "prte", "orterun")

# --- grace periods ------------------------------------------------------------------------
# How long a pod that is stopped (job deleted, evicted, preempted) has before SIGKILL:
# the pods' terminationGracePeriodSeconds. The trainer finishes its step and rank 0
# writes a checkpoint; Kubernetes' default of 30 s is tight for that on a slow PVC.
# `kjob delete` waits as long for an MPIJob's launcher after SIGUSR1.
TERMINATION_GRACE_S = 120
# A worker's sshd wrapper keeps the job's SIGTERM from sshd while ranks run, for at most
# this long: it must end before the kubelet's SIGKILL.
WORKER_HOLD_S = TERMINATION_GRACE_S - 10
# Local runs live in ./kjob-runs/NAME (the run record, train.log, checkpoints/).
LOCAL_RUNS_DIR = "kjob-runs"
# How long `kjob delete --local` lets the ranks write their checkpoint after SIGUSR1.
LOCAL_STOP_GRACE_S = 20.0

# Pod Security admission's level for a namespace (kubernetes.io/docs, "Pod Security
# Admission"): privileged, baseline or restricted.
POD_SECURITY_ENFORCE = "pod-security.kubernetes.io/enforce"
