"""TrainJobs and kjob's two ClusterTrainingRuntimes as the tests of the pure tier use them:
a TrainJob of the shape Kubeflow Trainer v2.3.0 takes (runtimeRef, trainer,
runtimePatches; pkg/apis/trainer/v1alpha1), built here because rendering one is another
branch's work, and runtimes of the replicated jobs kjob's runtimes have (kjob-openmpi:
launcher + node; kjob-torch: node)."""

from __future__ import annotations

import copy

ANCESTOR = {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
LAUNCH = ["python", "-m", "kjob_trainer.launch", "--", "mpirun", "-np", "2", "python", "-m", "kjob_trainer.train"]
TORCHRUN = ["torchrun", "--module", "kjob_trainer.train"]
CLAIM = "tj-ckpt"


def _rjob(name: str, command: list[str], *, trainer: bool) -> dict:
    labels = ANCESTOR if trainer else {}
    return {"name": name, "replicas": 1,
            "template": {"metadata": {"labels": dict(labels)},
                         "spec": {"template": {"metadata": {"labels": dict(labels)},
                                               "spec": {"restartPolicy": "OnFailure",
                                                        "containers": [{"name": "node", "image": "kjob/trainer:runtime", "command": command}]}}}}}


# What kjob's runtimes consist of, as far as the commands read them.
RUNTIMES = {
    "kjob-openmpi": [_rjob("launcher", LAUNCH, trainer=True), _rjob("node", ["/usr/sbin/sshd", "-De"], trainer=False)],
    "kjob-torch": [_rjob("node", TORCHRUN, trainer=True)],
}


def install_runtimes(kube) -> None:
    for name, rjobs in RUNTIMES.items():
        kube.install_runtime(name, rjobs)


def _mount_patch(rjob: str) -> dict:
    return {"name": rjob, "template": {"spec": {"template": {"spec": {
        "volumes": [{"name": "checkpoints", "persistentVolumeClaim": {"claimName": CLAIM}}],
        "containers": [{"name": "node", "volumeMounts": [{"name": "checkpoints", "mountPath": "/checkpoints"}]}]}}}}}


def trainjob(name: str = "tj", runtime: str = "kjob-torch", nodes: int = 2, spec_hash: str = "sha256:" + "a" * 64) -> dict:
    """A TrainJob as kjob submits it: labelled and annotated as the other kinds, the
    checkpoint claim mounted at /checkpoints on the replica that writes checkpoints
    (the launcher on kjob-openmpi, the nodes on kjob-torch)."""
    writers = ["launcher"] if runtime == "kjob-openmpi" else ["node"]
    return copy.deepcopy({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": name,
                     "labels": {"app.kubernetes.io/name": "kjob", "app.kubernetes.io/instance": name, "app.kubernetes.io/managed-by": "kjob"},
                     "annotations": {"kjob.dev/spec-hash": spec_hash, "kjob.dev/checkpoint-claim": CLAIM,
                                     "kjob.dev/output-path": f"/checkpoints/{name}", "kjob.dev/workers": str(nodes),
                                     "kjob.dev/gpus-per-worker": "0"}},
        "spec": {"runtimeRef": {"name": runtime, "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"},
                 "trainer": {"image": "kjob/trainer:1", "numNodes": nodes},
                 "runtimePatches": [{"manager": "kjob.dev/submit", "trainingRuntimeSpec": {"template": {"spec": {
                     "replicatedJobs": [_mount_patch(r) for r in writers]}}}}]},
    })
