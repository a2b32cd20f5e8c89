"""TrainJobs and kjob's two ClusterTrainingRuntimes as the tests of the pure tier use them:
a TrainJob of the shape Kubeflow Trainer v2.3.0 takes (runtimeRef, trainer,
runtimePatches; pkg/apis/trainer/v1alpha1), built here because rendering one is another
branch's work, and runtimes of the replicated jobs kjob's runtimes have.

kjob-openmpi comes in two layouts, both handled by the commands: `node` only, node-0
running mpirun under kjob_trainer.launch and the other nodes sshd (the layout of
manifests/runtimes/kjob-openmpi.yaml on the trainjob-render branch), and a `launcher`
replicated job beside the `node` ones (upstream's MPI runtimes' layout). kjob-torch:
`node` only, torchrun."""

from __future__ import annotations

import copy

ANCESTOR = {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
LAUNCH = ["python", "-m", "kjob_trainer.launch", "--", "mpirun", "-np", "2", "python", "-m", "kjob_trainer.train"]
# node-0 runs mpirun under the SIGTERM wrapper, the other nodes sshd under its --hold.
NODE_SCRIPT = ['/bin/sh', '-c', 'if [ "$JOB_COMPLETION_INDEX" = 0 ]; then exec python -m kjob_trainer.launch -- "$@"; fi; '
               'exec python -m kjob_trainer.launch --hold --hold-limit 110 -- /usr/sbin/sshd -De -f /home/mpiuser/.sshd_config', "kjob-openmpi"]
TORCHRUN = ["torchrun", "--module", "kjob_trainer.train"]
CLAIM = "tj-ckpt"


def _rjob(name: str, command: list[str], args: list[str] | None = None, *, trainer: bool) -> dict:
    labels = ANCESTOR if trainer else {}
    container = {"name": "node", "image": "kjob/trainer:runtime", "command": command, **({"args": args} if args else {})}
    return {"name": name, "replicas": 1,
            "template": {"metadata": {"labels": dict(labels)},
                         "spec": {"template": {"metadata": {"labels": dict(labels)},
                                               "spec": {"restartPolicy": "Never", "containers": [container]}}}}}


# The Open MPI layouts: (the runtime's replicated jobs, the replica that runs mpirun, the
# replicated jobs the TrainJob mounts the checkpoint claim in).
MPI_LAYOUTS = {
    "node-only": ([_rjob("node", NODE_SCRIPT, LAUNCH[4:], trainer=True)], "node-0", ("node",)),
    "launcher-job": ([_rjob("launcher", LAUNCH, trainer=True), _rjob("node", ["/usr/sbin/sshd", "-De"], trainer=False)], "launcher", ("launcher",)),
}
TORCH = [_rjob("node", TORCHRUN, trainer=True)]


def install_runtimes(kube, mpi_layout: str = "node-only") -> None:
    kube.install_runtime("kjob-openmpi", MPI_LAYOUTS[mpi_layout][0])
    kube.install_runtime("kjob-torch", TORCH)


def _mount_patch(rjob: str) -> dict:
    return {"name": rjob, "template": {"spec": {"template": {"spec": {
        "volumes": [{"name": "checkpoints", "persistentVolumeClaim": {"claimName": CLAIM}}],
        "containers": [{"name": "node", "volumeMounts": [{"name": "checkpoints", "mountPath": "/checkpoints"}]}]}}}}}


def trainjob(name: str = "tj", runtime: str = "kjob-torch", nodes: int = 2, spec_hash: str = "sha256:" + "a" * 64,
             patched: tuple[str, ...] = ("node",)) -> dict:
    """A TrainJob as kjob submits it: labelled and annotated as the other kinds, the
    checkpoint claim mounted at /checkpoints in the `patched` replicated jobs' pods."""
    return copy.deepcopy({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": name,
                     "labels": {"app.kubernetes.io/name": "kjob", "app.kubernetes.io/instance": name, "app.kubernetes.io/managed-by": "kjob"},
                     "annotations": {"kjob.dev/spec-hash": spec_hash, "kjob.dev/checkpoint-claim": CLAIM,
                                     "kjob.dev/output-path": f"/checkpoints/{name}", "kjob.dev/workers": str(nodes),
                                     "kjob.dev/gpus-per-worker": "0"}},
        "spec": {"runtimeRef": {"name": runtime, "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"},
                 "trainer": {"image": "kjob/trainer:1", "numNodes": nodes},
                 "runtimePatches": [{"manager": "kjob.dev/kjob", "trainingRuntimeSpec": {"template": {"spec": {
                     "replicatedJobs": [_mount_patch(r) for r in patched]}}}}]},
    })
