"""Which Kubernetes kind a spec renders to (its `kind`, else what `launcher` implies), and
what a TrainJob cannot carry.

A TrainJob (Kubeflow Trainer v2.3.0) takes a job's settings in two places only:
`spec.trainer` (image, command, args, env, numNodes, numProcPerNode, resourcesPerNode) and
`spec.runtimePatches`, whose pod part (trainjob_types.go PodSpecPatch, ContainerPatch)
holds volumes, volume mounts, security contexts, image pull secrets, node selector,
affinity, tolerations, scheduling gates, the service account and the grace period. Every
other pod or job setting is the runtime's. A spec field that would need one of those is
refused here, naming the field and why, rather than dropped from the manifest.
"""

from __future__ import annotations


# kjob's runtimes (manifests/runtimes/) write these; a spec may repeat them, not change them.
RUNTIME_PULL_POLICY = "IfNotPresent"
RUNTIME_MAX_RESTARTS = 3

_NOT_PATCHABLE = ("Trainer v2.3.0's runtimePatches cannot set it (PodSpecPatch has no {what}) and neither can "
                  "spec.trainer; ")


def kind_problems(spec) -> list[tuple[tuple, str]]:
    """Problems of `kind` and `runtime` against the rest of the spec, as (location, message)."""
    out: list[tuple[tuple, str]] = []
    if spec.job_kind == "MPIJob" and spec.launcher != "mpi":
        out.append((("kind",), "an MPIJob runs mpirun: use launcher: mpi, or kind: PyTorchJob / TrainJob for torchrun"))
    if spec.job_kind == "PyTorchJob" and spec.launcher != "torchrun":
        out.append((("kind",), "a PyTorchJob runs torchrun: use launcher: torchrun, or kind: MPIJob / TrainJob for mpi"))
    if spec.runtime is not None and spec.kind != "TrainJob":
        out.append((("runtime",), f"names a ClusterTrainingRuntime, which only a TrainJob uses (add kind: TrainJob); "
                    f"a {spec.kind} has none"))
    if spec.kind == "TrainJob":
        out += _trainjob_problems(spec)
    return out


def _trainjob_problems(spec) -> list[tuple[tuple, str]]:
    out: list[tuple[tuple, str]] = []
    if spec.scheduler_name is not None:
        out.append((("schedulerName",), _NOT_PATCHABLE.format(what="schedulerName") + "the runtime's pods use its "
                    "scheduler; for gang scheduling give a runtime a podGroupPolicy (coscheduling or volcano) and name "
                    "it with runtime:, or use kind: MPIJob / PyTorchJob"))
    if spec.priority_class_name is not None:
        out.append((("priorityClassName",), _NOT_PATCHABLE.format(what="priorityClassName") + "with Kueue, give the "
                    "TrainJob a WorkloadPriorityClass instead, or use kind: MPIJob / PyTorchJob"))
    if spec.host_network:
        out.append((("hostNetwork",), _NOT_PATCHABLE.format(what="hostNetwork") + "use a runtime whose pods run in the "
                    "host network (runtime:), or kind: MPIJob / PyTorchJob"))
    if spec.env_from:
        out.append((("envFrom",), "neither spec.trainer nor a runtimePatches container (ContainerPatch) has envFrom in "
                    "Trainer v2.3.0; give each variable under env as {secretKeyRef: {name, key}}"))
    if spec.image_pull_policy != RUNTIME_PULL_POLICY:
        out.append((("imagePullPolicy",), f"a TrainJob's containers take the runtime's pull policy (kjob's runtimes: "
                    f"{RUNTIME_PULL_POLICY}); neither spec.trainer nor runtimePatches can set another"))
    rp = spec.run_policy
    if "backoff_limit" in rp.model_fields_set and rp.backoff_limit != RUNTIME_MAX_RESTARTS:
        out.append((("runPolicy", "backoffLimit"), f"a TrainJob restarts as its runtime's JobSet failurePolicy says "
                    f"(kjob's runtimes: maxRestarts {RUNTIME_MAX_RESTARTS}); a TrainJob cannot set another"))
    if rp.ttl_seconds_after_finished is not None:
        out.append((("runPolicy", "ttlSecondsAfterFinished"), "a TrainJob has no TTL: the runtime's JobSet "
                    "ttlSecondsAfterFinished applies (kjob's runtimes: none, the job is kept)"))
    if "clean_pod_policy" in rp.model_fields_set:
        out.append((("runPolicy", "cleanPodPolicy"), "a TrainJob has none: JobSet deletes the pods of a finished job "
                    "as its runtime says; leave it out"))
    return out
