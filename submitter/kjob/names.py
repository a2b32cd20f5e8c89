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
JOB_KINDS = {"MPIJob": (f"{GROUP}/v2beta1", "mpijobs"), "PyTorchJob": (f"{GROUP}/v1", "pytorchjobs")}
# Kubeflow Trainer v2 (kubeflow/trainer v2.3.0, pkg/apis/trainer/v1alpha1): one kind, TrainJob,
# run from a ClusterTrainingRuntime on top of JobSet; kjob targets v2.2 and later
# (spec.runtimePatches).
TRAINER_GROUP = "trainer.kubeflow.org"
JOB_KINDS["TrainJob"] = (f"{TRAINER_GROUP}/v1alpha1", "trainjobs")
# kjob's own ClusterTrainingRuntimes, by the spec's launcher.
RUNTIMES = {"mpi": "kjob-openmpi", "torchrun": "kjob-torch"}

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
# JobSet v0.12 (api/jobset/v1alpha2/jobset_types.go: JobSetNameKey, ReplicatedJobNameKey)
# labels the pods of a TrainJob's JobSet (named as the TrainJob) with its name and the
# replicated job (node, launcher, dataset-initializer, ...); the Job controller gives
# each pod of an Indexed Job its completion index (batch/v1 JobCompletionIndexAnnotation).
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
JOB_INDEX_LABEL = "jobset.sigs.k8s.io/job-index"  # which child Job of its replicated job (JobIndexKey)
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
# Trainer v2's trainer container and replicated job (pkg/constants: Node): a TrainJob's
# trainer pods are shown as node-0, node-1, ... (node-0 runs torch's rank 0, and mpirun on
# a runtime without a launcher replicated job).
TRAINJOB_CONTAINER = "node"
TRAINJOB_NODE = "node"

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
