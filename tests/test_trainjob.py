"""kind: TrainJob (Kubeflow Trainer v2.3.0): what a spec maps to, what it refuses, kjob's
ClusterTrainingRuntimes, and both validated against the v2.3.0 CRDs from the Go module
cache (the pinned module the real control plane builds), with jsonschema and a check for
fields the API server would prune."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from test_cli_render import kjob

from kjob import names
from kjob.cli import cli
from kjob.errors import InvalidInput
from kjob.render.manifests import TRAINJOB_MPI_COMMAND, render_objects, runtime_object, runtime_objects
from kjob.spec.load import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
TRAINER_MODULE = "github.com/kubeflow/trainer/v2@v2.3.0"
BASE = "name: tj\nkind: TrainJob\nimage: ghcr.io/kjob/trainer:0.1.0\ndata: {pvc: imagenet}\ncheckpoints: {claimName: ckpt}\n"
# Every field a TrainJob carries, at once.
EVERYTHING = BASE + """
namespace: team-a
workers: 3
imagePullSecrets: [regcred]
resources: {requests: {cpu: 500m, memory: 1Gi, rdma/hca: 1}, limits: {cpu: "2", memory: 2Gi, rdma/hca: 1}}
shmSize: 512Mi
env: {NCCL_SOCKET_IFNAME: eth0, WANDB_API_KEY: {secretKeyRef: {name: wandb, key: api-key}}}
capabilities: [IPC_LOCK]
podAnnotations: {k8s.v1.cni.cncf.io/networks: rdma-net}
nodeSelector: {nvidia.com/gpu.product: A100-SXM4-80GB}
tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
queue: research
runPolicy: {activeDeadlineSeconds: 86400}
train: {maxSteps: 100}
"""


def module_dir() -> Path | None:
    cache = os.environ.get("GOMODCACHE") or str(Path.home() / "go" / "pkg" / "mod")
    path = Path(cache) / TRAINER_MODULE
    return path if path.is_dir() else None


@functools.cache
def crd_schema(plural: str) -> dict:
    where = module_dir()
    if where is None:
        if os.environ.get("CI"):
            pytest.fail(f"{TRAINER_MODULE} is not in the Go module cache (tests/cluster/build.sh downloads it)")
        pytest.skip(f"{TRAINER_MODULE} is not in the Go module cache: run tests/cluster/build.sh (needs Go)")
    crd = yaml.safe_load((where / "manifests" / "base" / "crds" / f"trainer.kubeflow.org_{plural}.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["served"]]
    assert version["name"] == "v1alpha1"
    return version["schema"]["openAPIV3Schema"]


def pruned(obj, schema: dict, path: str = "") -> list[str]:
    """Fields of `obj` that the API server would drop silently (not in a structural schema's
    properties); jsonschema does not see them, as CRD schemas do not forbid extra keys."""
    out = []
    if isinstance(obj, dict) and schema.get("type") == "object" and not schema.get("x-kubernetes-preserve-unknown-fields"):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            if props is not None and key in props:
                out += pruned(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                out += pruned(value, extra, f"{path}.{key}")
            elif props is not None or extra is False:
                out.append(f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            out += pruned(item, schema["items"], f"{path}[{i}]")
    return out


def assert_valid_for_crd(obj: dict) -> None:
    import jsonschema

    plural = {"TrainJob": "trainjobs", "ClusterTrainingRuntime": "clustertrainingruntimes"}[obj["kind"]]
    schema = crd_schema(plural)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:5])
    assert not pruned(obj, schema), f"fields the API server would prune: {pruned(obj, schema)}"


def trainjob(text: str) -> dict:
    (obj,) = render_objects(parse_spec(text))
    assert obj["kind"] == "TrainJob"
    return obj


def problems(text: str) -> list[str]:
    with pytest.raises(InvalidInput) as e:
        parse_spec(text, "s.yaml")
    return e.value.problems


# --- the schema -------------------------------------------------------------------------------


@pytest.mark.parametrize("launcher", ["mpi", "torchrun"])
def test_every_field_validates_against_the_v2_3_0_crd(launcher):
    obj = trainjob(EVERYTHING + f"launcher: {launcher}\n")
    assert_valid_for_crd(obj)


@pytest.mark.parametrize("launcher", ["mpi", "torchrun"])
def test_kjobs_runtimes_validate_against_the_v2_3_0_crd(launcher):
    assert_valid_for_crd(runtime_object(launcher))


TWINS = sorted((ROOT / "examples").glob("*-trainjob.yaml"))


@pytest.mark.parametrize("path", TWINS, ids=lambda p: p.stem)
def test_example_twins_validate_against_the_v2_3_0_crd(path):
    (obj,) = render_objects(load_spec(path))
    assert_valid_for_crd(obj)


def test_every_example_has_a_trainjob_twin_that_differs_only_in_name_and_kind():
    originals = sorted(p for p in (ROOT / "examples").glob("*.yaml") if p not in TWINS)
    assert sorted(p.stem + "-trainjob" for p in originals) == [p.stem for p in TWINS]
    for original in originals:
        twin = original.with_name(original.stem + "-trainjob.yaml")
        a, b = load_spec(original), load_spec(twin)
        assert (a.kind, b.kind, b.name) == ({"mpi": "MPIJob", "torchrun": "PyTorchJob"}[a.launcher], "TrainJob", a.name + "-trainjob")
        # runPolicy aside (a TrainJob refuses what it cannot carry: the twin leaves it out)
        left_out = {"name", "job_kind", "run_policy"}
        assert a.model_dump(exclude=left_out) == b.model_dump(exclude=left_out), twin.name


@pytest.mark.parametrize("spec_text", [p.read_text() for p in TWINS] + [EVERYTHING],
                         ids=[p.stem for p in TWINS] + ["everything"])
def test_pod_templates_are_valid_core_objects(spec_text):
    """The runtime's pod template and the TrainJob's pod patch, with the strict core schema
    (the CRDs embed pod fields without rejecting unknown keys)."""
    import kubernetes_validate

    spec = parse_spec(spec_text)
    (job,) = render_objects(spec)
    (rjob,) = runtime_object(spec.launcher)["spec"]["template"]["spec"]["replicatedJobs"]
    patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]
    for what, template in (("runtime", rjob["template"]["spec"]["template"]), ("patch", patch["template"])):
        obj = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"{spec.name}-{what}"}, "template": template}
        kubernetes_validate.validate(obj, "1.32.0", strict=True)


def test_the_crd_check_can_fail():
    obj = trainjob(BASE)
    obj["spec"]["trainer"]["numProcPerNode"] = "auto"  # v2.3.0: an int only
    with pytest.raises(AssertionError, match="numProcPerNode"):
        assert_valid_for_crd(obj)
    obj = trainjob(BASE)
    obj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"][
        "template"]["spec"]["priorityClassName"] = "high"  # no such field in PodSpecPatch: pruned
    with pytest.raises(AssertionError, match="priorityClassName"):
        assert_valid_for_crd(obj)


def test_the_shipped_runtimes_are_current():
    # manifests/runtimes/ is written by tools/render_examples.py from the same template.
    for launcher, name in names.RUNTIMES.items():
        shipped = yaml.safe_load((ROOT / "manifests" / "runtimes" / f"{name}.yaml").read_text())
        assert shipped == runtime_object(launcher)


# --- the spec ---------------------------------------------------------------------------------


@pytest.mark.parametrize("launcher, kind", [("mpi", "MPIJob"), ("torchrun", "PyTorchJob")])
def test_without_kind_the_launcher_decides_and_the_hash_does_not_change(launcher, kind):
    plain = parse_spec(BASE.replace("kind: TrainJob\n", "") + f"launcher: {launcher}\n")
    written = parse_spec(BASE.replace("TrainJob", kind) + f"launcher: {launcher}\n")
    assert plain.kind == written.kind == kind
    assert plain.spec_hash() == written.spec_hash()
    assert render_objects(plain) == render_objects(written)


def test_kind_trainjob_changes_the_hash():
    assert parse_spec(BASE).spec_hash() != parse_spec(BASE.replace("kind: TrainJob\n", "")).spec_hash()


@pytest.mark.parametrize("text, where, says", [
    (BASE.replace("TrainJob", "MPIJob") + "launcher: torchrun\n", "kind:", "an MPIJob runs mpirun"),
    (BASE.replace("TrainJob", "PyTorchJob"), "kind:", "a PyTorchJob runs torchrun"),
    (BASE.replace("kind: TrainJob\n", "") + "runtime: mine\n", "runtime:", "only a TrainJob uses"),
    (BASE + "schedulerName: volcano\n", "schedulerName:", "PodSpecPatch has no schedulerName"),
    (BASE + "priorityClassName: high\n", "priorityClassName:", "PodSpecPatch has no priorityClassName"),
    (BASE + "hostNetwork: true\n", "hostNetwork:", "PodSpecPatch has no hostNetwork"),
    (BASE + "envFrom: [creds]\n", "envFrom:", "secretKeyRef"),
    (BASE + "imagePullPolicy: Always\n", "imagePullPolicy:", "runtime's pull policy"),
    (BASE + "runPolicy: {backoffLimit: 0}\n", "runPolicy.backoffLimit:", "maxRestarts 3"),
    (BASE + "runPolicy: {ttlSecondsAfterFinished: 60}\n", "runPolicy.ttlSecondsAfterFinished:", "no TTL"),
    (BASE + "runPolicy: {cleanPodPolicy: All}\n", "runPolicy.cleanPodPolicy:", "leave it out"),
    (BASE + "env: {PET_NNODES: '2'}\n", "env.PET_NNODES:", "reserved"),
    (BASE.replace("name: tj", "name: " + "a" * 50), "name:", "stay within 63"),
])
def test_what_a_trainjob_cannot_carry_is_refused_naming_the_field(text, where, says):
    found = [p for p in problems(text) if f" {where} " in p]
    assert found and says in found[0], problems(text)


def test_pet_variables_are_exit_2_at_validate(tmp_path, capsys):
    # The torch plugin's validating webhook refuses them (TorchRunReservedEnvNames): kjob
    # says so before anything is sent.
    spec = tmp_path / "s.yaml"
    spec.write_text(BASE + "launcher: torchrun\nenv: {PET_MASTER_PORT: '1234'}\n")
    code, _, err = kjob(capsys, "validate", spec)
    assert code == 2 and "env.PET_MASTER_PORT:" in err and "Trainer v2's torch plugin" in err


def test_what_the_same_spec_keeps_as_an_mpijob_is_accepted():
    # The refusals are the TrainJob's only.
    parse_spec(BASE.replace("kind: TrainJob\n", "") + "schedulerName: volcano\npriorityClassName: high\nhostNetwork: true\n")


def test_a_pod_name_of_the_largest_index_fits():
    longest = 63 - len("-node-0-9-abcde")
    parse_spec(BASE.replace("name: tj", "name: " + "a" * longest) + "workers: 10\n")
    problems(BASE.replace("name: tj", "name: " + "a" * (longest + 1)) + "workers: 10\n")


# --- what it renders --------------------------------------------------------------------------


def test_mpi_trainjob_shape():
    obj = trainjob(EVERYTHING + "launcher: mpi\ngpusPerWorker: 4\n")
    s = obj["spec"]
    assert obj["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and obj["metadata"]["namespace"] == "team-a"
    assert s["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime", "name": "kjob-openmpi"}
    assert "suspend" not in s and "managedBy" not in s  # Kueue owns them
    assert s["activeDeadlineSeconds"] == 86400
    assert obj["metadata"]["labels"][names.KUEUE_QUEUE_LABEL] == "research"
    t = s["trainer"]
    assert (t["numNodes"], t["numProcPerNode"], t["resourcesPerNode"]["limits"]["nvidia.com/gpu"]) == (3, 4, "4")
    assert t["command"] == TRAINJOB_MPI_COMMAND
    # Open MPI 5 ignores the plugin's OMPI_MCA_orte_default_hostfile (kubeflow/trainer#4028):
    # mpirun is given the hostfile itself, as in the MPIJob.
    assert t["args"][:5] == ["mpirun", "-np", "12", "--hostfile", "/etc/mpi/hostfile"]
    assert {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}}} in t["env"]
    assert "WANDB_API_KEY" not in t["args"]  # a Secret's variable is not forwarded by -x
    (patch,) = s["runtimePatches"]
    assert patch["manager"] == names.RUNTIME_PATCH_MANAGER
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == "node"
    pod = job["template"]["spec"]["template"]
    assert pod["metadata"]["labels"][names.LABEL_INSTANCE] == "tj"
    assert pod["metadata"]["annotations"] == {"k8s.v1.cni.cncf.io/networks": "rdma-net"}
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "A100-SXM4-80GB"}
    (c,) = pod["spec"]["containers"]
    assert c["name"] == "node" and "env" not in c  # the webhook refuses env for `node` in a patch
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    assert {"name": "kjob-mpi-hostfile", "mountPath": "/etc/mpi", "readOnly": True} in c["volumeMounts"]
    hostfile = next(v for v in pod["spec"]["volumes"] if v["name"] == "kjob-mpi-hostfile")
    assert hostfile["configMap"]["name"] == "tj" + names.MPI_HOSTFILE_SUFFIX


def test_torch_trainjob_shape():
    obj = trainjob(BASE + "launcher: torchrun\nworkers: 2\n")
    t = obj["spec"]["trainer"]
    assert obj["spec"]["runtimeRef"]["name"] == "kjob-torch"
    assert t["command"] == ["torchrun"] and t["args"][:2] == ["--module", "kjob_trainer.train"]
    env = {e["name"]: e.get("value") for e in t["env"]}
    assert env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "110" and not [n for n in env if n.startswith("PET_")]
    (c,) = obj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"][
        "spec"]["template"]["spec"]["containers"]
    assert "/etc/mpi" not in [m["mountPath"] for m in c["volumeMounts"]] and "securityContext" not in c


def test_a_named_runtime_is_referenced_and_not_rendered():
    spec = parse_spec(BASE + "runtime: team-openmpi\n")
    assert render_objects(spec)[0]["spec"]["runtimeRef"]["name"] == "team-openmpi"
    assert runtime_objects([spec]) == []


def test_runtimes_are_rendered_once_in_a_fixed_order():
    specs = [parse_spec(BASE.replace("tj", n) + f"launcher: {launcher}\n")
             for n, launcher in (("a", "torchrun"), ("b", "mpi"), ("c", "mpi"))]
    specs.append(parse_spec(BASE.replace("kind: TrainJob\n", "")))  # an MPIJob uses none
    assert [o["metadata"]["name"] for o in runtime_objects(specs)] == ["kjob-openmpi", "kjob-torch"]


def test_mpi_runtime_shape():
    rt = runtime_object("mpi")
    assert "namespace" not in rt["metadata"]  # cluster-scoped
    mpi = rt["spec"]["mlPolicy"]["mpi"]
    assert (mpi["mpiImplementation"], mpi["sshAuthMountPath"], mpi["runLauncherAsNode"]) == ("OpenMPI", "/home/mpiuser/.ssh", False)
    (job,) = rt["spec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == names.TRAINJOB_NODE
    assert job["template"]["metadata"]["labels"] == {names.TRAINJOB_ANCESTOR_LABEL: names.TRAINJOB_ANCESTOR_TRAINER}
    spec = job["template"]["spec"]
    # Node 0 runs mpirun: when it succeeds the Job does, and the other nodes' sshd is stopped.
    assert spec["completionMode"] == "Indexed" and spec["successPolicy"] == {"rules": [{"succeededIndexes": "0"}]}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 1000 and pod["terminationGracePeriodSeconds"] == names.TERMINATION_GRACE_S
    (c,) = pod["containers"]
    assert c["name"] == names.TRAINJOB_CONTAINER and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def _run_role(tmp_path: Path, index: str) -> list[str]:
    """What the pod of completion index `index` runs: TRAINJOB_MPI_COMMAND under a real sh,
    with a `python` on PATH that prints its arguments."""
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no sh")
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    command = [sh, *TRAINJOB_MPI_COMMAND[1:]]
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "JOB_COMPLETION_INDEX": index}
    out = subprocess.run(command + ["mpirun", "-np", "2", "a b"], env=env, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_node_0_runs_mpirun_under_the_launch_wrapper(tmp_path):
    assert _run_role(tmp_path, "0") == ["-m", "kjob_trainer.launch", "--", "mpirun", "-np", "2", "a b"]


def test_other_nodes_run_sshd_held_under_the_launch_wrapper(tmp_path):
    assert _run_role(tmp_path, "1") == ["-m", "kjob_trainer.launch", "--hold", "--hold-limit", str(names.WORKER_HOLD_S), "--",
                                        "/usr/sbin/sshd", "-De", "-f", "/home/mpiuser/.sshd_config"]


# --- the hostfile the MPI plugin writes, and the launch wrapper -------------------------------


def plugin_hostfile(name: str, nodes: int, slots: int) -> str:
    # mpi.go buildHostFileConfigMap with jobset.go IdentifyPodNetwork's endpoints:
    # "<name>-<replicated job>-<job index>-<pod index>.<subdomain> slots=N", subdomain = name.
    return "".join(f"{name}-node-0-{i}.{name} slots={slots}\n" for i in range(nodes))


def test_rank_0s_host_is_node_0(tmp_path):
    from kjob_trainer.launch.ssh_hosts import with_rendezvous_host

    hostfile = tmp_path / "hostfile"
    hostfile.write_text(plugin_hostfile("tj", 3, 8))
    command = with_rendezvous_host(["mpirun", "--hostfile", str(hostfile), "-np", "24"], "KJOB_RENDEZVOUS_HOST")
    assert command[:3] == ["mpirun", "-x", "KJOB_RENDEZVOUS_HOST=tj-node-0-0.tj"]


def test_the_launcher_does_not_wait_for_ssh_on_its_own_hostfile_entry(monkeypatch):
    from kjob_trainer.launch import ssh_hosts

    monkeypatch.setattr(ssh_hosts.socket, "gethostname", lambda: "tj-node-0-0")
    asked = []
    monkeypatch.setattr(ssh_hosts, "ssh_port", lambda host: 2222)
    monkeypatch.setattr(ssh_hosts, "accepts", lambda host, port: asked.append(host) or True)
    assert ssh_hosts.wait_for_hosts(["tj-node-0-0.tj", "tj-node-0-1.tj"], say=lambda _: None, stop=lambda: False)
    assert asked == ["tj-node-0-1.tj"]


# --- kjob render --------------------------------------------------------------------------------


def test_render_writes_each_runtime_once_before_the_jobs(tmp_path):
    for n, launcher in (("a", "mpi"), ("b", "mpi"), ("c", "torchrun")):
        (tmp_path / f"{n}.yaml").write_text(BASE.replace("tj", n) + f"launcher: {launcher}\n")
    specs = [str(tmp_path / f"{n}.yaml") for n in "abc"]
    result = CliRunner().invoke(cli, ["render", *specs])
    assert result.exit_code == 0, result.output
    kinds = [(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(result.output)]
    assert kinds == [("ClusterTrainingRuntime", "kjob-openmpi"), ("ClusterTrainingRuntime", "kjob-torch"),
                     ("TrainJob", "a"), ("TrainJob", "b"), ("TrainJob", "c")]
    out = tmp_path / "gitops"
    assert CliRunner().invoke(cli, ["render", *specs, "-o", str(out), "-n", "team"]).exit_code == 0
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert kustomization["resources"][:2] == ["clustertrainingruntime-kjob-openmpi.yaml", "clustertrainingruntime-kjob-torch.yaml"]
    assert "namespace" not in yaml.safe_load((out / "clustertrainingruntime-kjob-torch.yaml").read_text())["metadata"]
    again = tmp_path / "again"
    CliRunner().invoke(cli, ["render", *specs, "-o", str(again), "-n", "team"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {p.name: p.read_bytes() for p in again.iterdir()}


def test_submit_dry_run_shows_the_trainjob_alone(tmp_path):
    # What submit sends: the runtime is the cluster's, installed once (preflight checks it).
    spec = tmp_path / "s.yaml"
    spec.write_text(BASE)
    result = CliRunner().invoke(cli, ["submit", str(spec), "--dry-run"])
    assert result.exit_code == 0, result.output
    (obj,) = list(yaml.safe_load_all(result.output))
    assert obj["kind"] == "TrainJob"
