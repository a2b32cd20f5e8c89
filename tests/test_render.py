"""Rendering: CRD validity, the trainer command line (render.commands), escaping of every
value, determinism (kjob.render + manifests/templates)."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kjob.render.commands import mpirun_flags, trainer_command
from kjob.render.manifests import render_objects, templates_dir, yaml_safe_json
from kjob.spec.load import load_spec, parse_spec
from timing import scaled

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
# The examples of the v1-era operators; their TrainJob twins are checked in test_trainjob.py.
OPERATOR_EXAMPLES = [p for p in EXAMPLES if not p.stem.endswith("-trainjob")]
MINIMAL = "name: job\nimage: ghcr.io/kjob/trainer:0.1.0\ndata: {pvc: imagenet}\ncheckpoints: {claimName: ckpt}\n"
# Every optional feature at once, for the schema checks.
EVERYTHING = MINIMAL.replace("data: {pvc: imagenet}\n", "data: {nfs: {server: nfs.local, path: /exports/in}, mountPath: /in}\n") + """
namespace: team-a
imagePullPolicy: Always
imagePullSecrets: [regcred]
resources: {requests: {cpu: 500m, memory: 1Gi}, limits: {cpu: "2", memory: 2Gi}}
shmSize: 512Mi
env: {NCCL_SOCKET_IFNAME: eth0, EMPTY: "", WANDB_API_KEY: {secretKeyRef: {name: wandb, key: api-key}}}
envFrom: [s3-credentials]
nodeSelector: {nvidia.com/gpu.product: A100-SXM4-80GB}
tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}, {key: a, value: b, tolerationSeconds: 60, effect: NoExecute}]
priorityClassName: high
schedulerName: volcano
queue: research
runPolicy: {backoffLimit: 0, activeDeadlineSeconds: 86400, ttlSecondsAfterFinished: 3600, cleanPodPolicy: All}
train: {config: imagenet.yaml, compile: true, maxSteps: 100, resume: /checkpoints/job/checkpoints/epoch-0001.pt}
"""


@functools.cache
def crd_validator(kind: str):
    import jsonschema

    file = {"MPIJob": "mpijobs.kubeflow.org.v2beta1.yaml", "PyTorchJob": "pytorchjobs.kubeflow.org.v1.yaml"}[kind]
    crd = yaml.load((SHARED / "crds" / file).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v["served"]]
    return jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])


def assert_valid_for_crd(obj: dict) -> None:
    errors = sorted(crd_validator(obj["kind"]).iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:5])


@pytest.mark.parametrize("path", OPERATOR_EXAMPLES, ids=lambda p: p.stem)
def test_examples_validate_against_the_operator_crds(path):
    (obj,) = render_objects(load_spec(path))
    assert_valid_for_crd(obj)


@pytest.mark.parametrize("launcher", ["mpi", "torchrun"])
def test_every_optional_feature_validates_against_the_crds(launcher):
    (obj,) = render_objects(parse_spec(EVERYTHING + f"launcher: {launcher}\nworkers: 3\n"))
    assert_valid_for_crd(obj)
    assert obj["metadata"]["namespace"] == "team-a"
    assert obj["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 3, "queue": "research", "priorityClass": "high"}


def test_crd_check_can_fail():
    (obj,) = render_objects(parse_spec(MINIMAL))
    obj["spec"]["slotsPerWorker"] = "eight"
    with pytest.raises(AssertionError, match="slotsPerWorker"):
        assert_valid_for_crd(obj)


def test_mpijob_shape():
    (job,) = render_objects(parse_spec(MINIMAL + "workers: 2\nenv: {NCCL_IB_DISABLE: '1'}\n"))
    s = job["spec"]
    assert (s["slotsPerWorker"], s["launcherCreationPolicy"], s["sshAuthMountPath"], s["mpiImplementation"]) == (
        8, "WaitForWorkersReady", "/home/mpiuser/.ssh", "OpenMPI")
    assert s["runPolicy"] == {"cleanPodPolicy": "Running", "backoffLimit": 3}  # no suspend: Kueue owns it
    launcher = s["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
    worker = s["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    assert s["mpiReplicaSpecs"]["Worker"]["replicas"] == 2
    (lc,), (wc,) = launcher["containers"], worker["containers"]
    # mpirun under the wrapper that turns the pod's SIGTERM into SIGUSR1 (a checkpoint).
    assert lc["command"] == ["python", "-m", "kjob_trainer.launch", "--"] and lc["args"][:3] == ["mpirun", "-np", "16"]
    program = lc["args"].index("python")
    assert lc["args"][3:program] == mpirun_flags(parse_spec(MINIMAL + "env: {NCCL_IB_DISABLE: '1'}\n"), local=False)
    assert lc["args"][program:program + 3] == ["python", "-m", "kjob_trainer.train"]
    assert ["-x", "NCCL_IB_DISABLE"] == lc["args"][lc["args"].index("NCCL_IB_DISABLE") - 1:][:2]
    # sshd under the same wrapper, which keeps the pod's SIGTERM from it while its sessions
    # (the ranks) run, at most 10 s less than the pod's grace period.
    assert wc["command"] == ["python", "-m", "kjob_trainer.launch", "--hold", "--hold-limit", "110", "--"]
    assert wc["args"] == ["/usr/sbin/sshd", "-De", "-f", "/home/mpiuser/.sshd_config"]
    assert worker["terminationGracePeriodSeconds"] == 120
    assert wc["readinessProbe"]["tcpSocket"] == {"port": 2222} and "readinessProbe" not in lc
    assert wc["resources"]["limits"]["nvidia.com/gpu"] == "8" and "nvidia.com/gpu" not in lc["resources"]["limits"]
    for pod, c in ((launcher, lc), (worker, wc)):
        assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    mounts = {m["name"]: m for m in wc["volumeMounts"]}
    assert mounts["data"]["readOnly"] is True and mounts["dshm"]["mountPath"] == "/dev/shm"
    vols = {v["name"]: v for v in worker["volumes"]}
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert vols["data"]["persistentVolumeClaim"] == {"claimName": "imagenet", "readOnly": True}


SECRETS = MINIMAL + "workers: 2\nenv: {WANDB_API_KEY: {secretKeyRef: {name: wandb, key: api-key}}, A: b}\nenvFrom: [s3, hf]\n"


def test_secrets_reach_the_trainer_pods_as_references_only():
    (job,) = render_objects(parse_spec(SECRETS))
    ref = {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}}}
    (lc,) = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"]
    (wc,) = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    assert ref in wc["env"] and wc["envFrom"] == [{"secretRef": {"name": "s3"}}, {"secretRef": {"name": "hf"}}]
    # The launcher runs mpirun only: no Secret there, none forwarded by name (the ranks take
    # them from their worker pod), while the plain variable still is.
    assert "WANDB_API_KEY" not in str(lc) and "envFrom" not in lc and {"name": "A", "value": "b"} in lc["env"]
    assert lc["args"][lc["args"].index("A") - 1] == "-x"
    (torch_job,) = render_objects(parse_spec(SECRETS + "launcher: torchrun\n"))
    for replica in torch_job["spec"]["pytorchReplicaSpecs"].values():
        (c,) = replica["template"]["spec"]["containers"]
        assert ref in c["env"] and len(c["envFrom"]) == 2
    (plain,) = render_objects(parse_spec(MINIMAL))
    assert "envFrom" not in str(plain)


NETWORK = MINIMAL + """workers: 2
resources: {requests: {cpu: 48, memory: 192Gi, rdma/hca: 1}, limits: {memory: 192Gi, rdma/hca: 1, nvidia.com/hostdev: 8}}
capabilities: [IPC_LOCK]
podAnnotations: {k8s.v1.cni.cncf.io/networks: "ib-0,ib-1"}
hostNetwork: true
"""


@pytest.mark.parametrize("launcher", ["mpi", "torchrun"])
def test_network_opt_ins_go_to_the_trainer_pods(launcher):
    (job,) = render_objects(parse_spec(NETWORK + f"launcher: {launcher}\n"))
    assert_valid_for_crd(job)
    replicas = next(v for k, v in job["spec"].items() if k.endswith("ReplicaSpecs"))
    trainers = [r["template"] for name, r in replicas.items() if name != "Launcher"]
    for t in trainers:
        (c,) = t["spec"]["containers"]
        assert t["metadata"]["annotations"] == {"k8s.v1.cni.cncf.io/networks": "ib-0,ib-1"}
        assert (t["spec"]["hostNetwork"], t["spec"]["dnsPolicy"]) == (True, "ClusterFirstWithHostNet")
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
        assert c["resources"] == {"requests": {"cpu": "48", "memory": "192Gi", "rdma/hca": "1"},
                                  "limits": {"memory": "192Gi", "rdma/hca": "1", "nvidia.com/hostdev": "8", "nvidia.com/gpu": "8"}}
    if launcher == "mpi":  # the launcher runs mpirun only: none of it
        launcher_pod = replicas["Launcher"]["template"]
        assert "annotations" not in launcher_pod["metadata"] and "hostNetwork" not in launcher_pod["spec"]
        (lc,) = launcher_pod["spec"]["containers"]
        assert lc["securityContext"]["capabilities"] == {"drop": ["ALL"]} and "rdma/hca" not in str(lc["resources"])
    # None of it set: the pods are as before, and so is the spec's hash.
    assert "hostNetwork" not in str(render_objects(parse_spec(MINIMAL))) and parse_spec(
        MINIMAL + "capabilities: []\npodAnnotations: {}\nhostNetwork: false\n").spec_hash() == parse_spec(MINIMAL).spec_hash()


def test_pytorchjob_shape():
    (job,) = render_objects(parse_spec(MINIMAL + "launcher: torchrun\nworkers: 3\ngpusPerWorker: 4\n"))
    s = job["spec"]
    assert s["nprocPerNode"] == "4"
    master, worker = s["pytorchReplicaSpecs"]["Master"], s["pytorchReplicaSpecs"]["Worker"]
    assert (master["replicas"], worker["replicas"]) == (1, 2)
    (c,) = master["template"]["spec"]["containers"]
    assert c["name"] == "pytorch"  # the training-operator finds its container by this name
    assert c["command"] == ["torchrun"] and c["args"][:2] == ["--module", "kjob_trainer.train"]
    assert not any(a.startswith(("--nnodes", "--nproc", "--master")) for a in c["args"])  # from PET_* instead
    single = render_objects(parse_spec(MINIMAL + "launcher: torchrun\n"))[0]
    assert list(single["spec"]["pytorchReplicaSpecs"]) == ["Master"]


@pytest.mark.parametrize("launcher", ["mpi", "torchrun"])
def test_pods_have_time_to_checkpoint_when_stopped(launcher):
    """Kubernetes' default 30 s before SIGKILL is tight for finishing a step and writing a
    checkpoint; torchrun must pass SIGTERM on and wait nearly as long; `kjob delete`
    gives an MPIJob's launcher as long after SIGUSR1."""
    from kjob import names

    (job,) = render_objects(parse_spec(MINIMAL + f"launcher: {launcher}\n"))
    replicas = job["spec"].get("mpiReplicaSpecs") or job["spec"]["pytorchReplicaSpecs"]
    for replica in replicas.values():
        pod = replica["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] == names.TERMINATION_GRACE_S == 120
        env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
        assert env.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT") == ("110" if launcher == "torchrun" else None)


def test_labels_and_annotations():
    spec = parse_spec(MINIMAL.replace("checkpoints: {claimName: ckpt}", "checkpoints: {claimName: ckpt, mountPath: /out}") + "gpusPerWorker: 2\n")
    (job,) = render_objects(spec)
    assert job["metadata"]["labels"] == {
        "app.kubernetes.io/name": "kjob", "app.kubernetes.io/instance": "job",
        "app.kubernetes.io/managed-by": "kjob", "app.kubernetes.io/component": "training"}
    ann = job["metadata"]["annotations"]
    assert ann["kjob.dev/spec-hash"] == spec.spec_hash()
    assert (ann["kjob.dev/checkpoint-claim"], ann["kjob.dev/output-path"]) == ("ckpt", "/out/job")
    assert (ann["kjob.dev/workers"], ann["kjob.dev/gpus-per-worker"]) == ("1", "2")
    for replica in job["spec"]["mpiReplicaSpecs"].values():
        assert replica["template"]["metadata"]["labels"]["app.kubernetes.io/instance"] == "job"
    kueue = render_objects(parse_spec(MINIMAL + "queue: team-q\n"))[0]
    assert kueue["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-q"


def test_trainer_command_is_what_the_trainer_parses():
    """The trainer command line: the rendered flags parse in kjob_trainer and carry the spec's values."""
    from kjob_trainer.common.cli_args import parse_train_args
    from kjob_trainer.common.config import make_config, validate

    for path in EXAMPLES:
        spec = load_spec(path)
        cmd = trainer_command(spec, data_path=spec.data.mount_path if spec.data else None, output_path=spec.output_path)
        assert cmd[:3] == ["python", "-m", "kjob_trainer.train"]
        config_file, overrides = parse_train_args(cmd[3:])
        cfg = make_config(config_file, overrides)
        validate(cfg)
        t = spec.train
        assert (cfg.framework, cfg.model, cfg.output_path) == (spec.framework, spec.model, f"/checkpoints/{spec.name}")
        # With a config file the keys the spec does not write are the file's.
        for field in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup_epochs", "label_smoothing",
                      "amp", "channels_last", "image_size"):
            assert t.known(field) in (None, getattr(cfg, field)), (path.name, field)
        assert (cfg.synthetic, cfg.max_steps, cfg.workers) == (t.synthetic, t.max_steps, spec.loader_workers)
        assert cfg.device == ("gpu" if spec.gpus_per_worker else "cpu")


def resolved(spec_text: str):
    """The trainer's resolved config for the command kjob renders from `spec_text`."""
    from kjob_trainer.train import make_config, parse_train_args

    spec = parse_spec(spec_text)
    cmd = trainer_command(spec, data_path="/data", output_path=spec.output_path)
    return cmd, make_config(*parse_train_args(cmd[3:]))


def test_config_file_gives_the_keys_the_spec_does_not_write():
    cmd, cfg = resolved(MINIMAL + "model: resnest50\ntrain: {config: resnest50}\n")
    recipe = yaml.safe_load(Path(cfg.config_file).read_text())
    assert Path(cfg.config_file).name == "resnest50.yaml" and len(recipe) > 20
    # Every key of the recipe but the loader processes (the pod's sizing, always the spec's).
    got = {k: getattr(cfg, k) for k in recipe if k != "workers"}
    assert got == {k: v for k, v in recipe.items() if k != "workers"}
    assert (cfg.epochs, cfg.batch_size, cfg.weight_decay, cfg.warmup_epochs) == (300, 64, 7e-5, 0)
    for flag in ("--epochs", "--lr", "--amp", "--channels-last", "--no-channels-last", "--eval", "--resume", "--seed"):
        assert flag not in cmd


def test_written_keys_override_the_config_file():
    cmd, cfg = resolved(MINIMAL + "model: resnest50\ntrain: {config: resnest50, epochs: 10, amp: bf16, compile: false}\n")
    assert (cfg.epochs, cfg.amp, cfg.compile, cfg.batch_size, cfg.mixup_alpha) == (10, "bf16", False, 64, 0.2)
    assert cmd[cmd.index("--epochs"):][:2] == ["--epochs", "10"] and "--no-compile" in cmd
    # Without a config file every setting is written out, defaults included.
    cmd, cfg = resolved(MINIMAL)
    assert (cfg.epochs, cfg.warmup_epochs, cfg.label_smoothing) == (90, 5, 0.1) and "--no-compile" not in cmd


def test_checkpoint_steps_and_dist_timeout_reach_the_trainer():
    cmd, cfg = resolved(MINIMAL + "train: {checkpointSteps: 500, distTimeout: 1800}\n")
    assert cmd[-4:] == ["--ckpt-steps", "500", "--dist-timeout", "1800"]
    assert (cfg.ckpt_steps, cfg.dist_timeout) == (500, 1800.0)
    cmd, cfg = resolved(MINIMAL)
    assert "--ckpt-steps" not in cmd and "--dist-timeout" not in cmd and cfg.dist_timeout == 300.0


def test_spec_hash_sees_which_keys_a_config_spec_writes():
    def h(text):
        return parse_spec(MINIMAL + text).spec_hash()

    # With a config file, writing a key (even the default) changes the command and the hash;
    # without one, a written default is the same spec.
    assert h("train: {config: resnest50}\n") != h("train: {config: resnest50, epochs: 90}\n")
    assert h("train: {}\n") == h("train: {epochs: 90}\n") == h("")
    assert h("") != h("train: {checkpointSteps: 100}\n") != h("train: {distTimeout: 60}\n")


def test_trainer_command_options():
    spec = parse_spec(MINIMAL)
    cmd = trainer_command(spec, data_path=None, output_path="/tmp/run", synthetic=True, device="cpu")
    assert "--synthetic" in cmd and "--data-path" not in cmd
    assert cmd[cmd.index("--device") + 1] == "cpu" and cmd[cmd.index("--output-path") + 1] == "/tmp/run"
    with pytest.raises(ValueError):
        trainer_command(spec, data_path=None, output_path="/tmp/run")


def trainer_args(job: dict) -> list[list[str]]:
    """The trainer's arguments in every replica that runs it (MPIJob: the launcher's
    mpirun line from `python` on; PyTorchJob: torchrun's, master and workers)."""
    if job["kind"] == "MPIJob":
        (c,) = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"]
        return [c["args"][c["args"].index("python"):]]
    return [r["template"]["spec"]["containers"][0]["args"] for r in job["spec"]["pytorchReplicaSpecs"].values()]


@pytest.mark.parametrize("launcher", ["mpi", "torchrun"])
def test_decoder_flag_only_when_set(launcher):
    from kjob_trainer.common.cli_args import parse_train_args

    (dali,) = render_objects(parse_spec(MINIMAL + f"launcher: {launcher}\nworkers: 2\ntrain: {{decoder: dali}}\n"))
    (unset,) = render_objects(parse_spec(MINIMAL + f"launcher: {launcher}\nworkers: 2\n"))
    assert len(trainer_args(dali)) == (1 if launcher == "mpi" else 2)
    for args in trainer_args(dali):
        assert args[args.index("--decoder"):][:2] == ["--decoder", "dali"] and args.count("--decoder") == 1
        assert parse_train_args(args[args.index("kjob_trainer.train") + 1:])[1]["decoder"] == "dali"
    for args in trainer_args(unset):
        assert "--decoder" not in args


def test_mpirun_flags_local_and_in_pods():
    spec = parse_spec(MINIMAL)
    local = mpirun_flags(spec, local=True)
    assert "--oversubscribe" in local and ("--allow-run-as-root" in local) == (os.geteuid() == 0)
    assert "--hostfile" not in local and "-x" not in local
    pods = mpirun_flags(spec, local=False)
    assert pods[:2] == ["--hostfile", "/etc/mpi/hostfile"] and "--allow-run-as-root" not in pods
    exported = [pods[i + 1] for i, f in enumerate(pods) if f == "-x"]
    # 8 ranks per pod: OMP_NUM_THREADS=1, as torchrun sets it, unless the spec's env says.
    assert exported == ["PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "NCCL_DEBUG", "PYTHONUNBUFFERED", "OMP_NUM_THREADS"]
    assert "OMP_NUM_THREADS" not in mpirun_flags(parse_spec(MINIMAL + "gpusPerWorker: 1\n"), local=False)
    own = mpirun_flags(parse_spec(MINIMAL + "env: {OMP_NUM_THREADS: '4'}\n"), local=False)
    assert own.count("OMP_NUM_THREADS") == 1
    (job,) = render_objects(parse_spec(MINIMAL + "env: {OMP_NUM_THREADS: '4'}\n"))
    for replica in job["spec"]["mpiReplicaSpecs"].values():
        env = replica["template"]["spec"]["containers"][0]["env"]
        assert [e["value"] for e in env if e["name"] == "OMP_NUM_THREADS"] == ["4"]
    assert ["--bind-to", "none"] == pods[pods.index("--bind-to"):][:2]


def test_mpi_settings_follow_kjobs_own_flags():
    spec = parse_spec(MINIMAL + "mpi: {mca: {btl_tcp_if_include: eth0, pml_ucx_verbose: 1, btl_openib_allow_ib: true}, "
                                "args: [--report-bindings, --bind-to, core]}\n")
    flags = mpirun_flags(spec, local=False)
    assert flags[:4] == ["--hostfile", "/etc/mpi/hostfile", "--map-by", "slot"]  # the spec's --bind-to replaces kjob's
    assert flags[flags.index("--mca"):] == ["--mca", "btl_tcp_if_include", "eth0", "--mca", "pml_ucx_verbose", "1",
                                            "--mca", "btl_openib_allow_ib", "true", "--report-bindings", "--bind-to", "core"]
    assert flags.count("--bind-to") == 1 and "--mca" not in mpirun_flags(spec, local=True)
    (job,) = render_objects(spec)
    assert_valid_for_crd(job)
    (lc,) = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"]
    assert lc["args"][3:lc["args"].index("python")] == flags
    # Unset (or empty), nothing changes: not the flags, not the spec's hash.
    assert parse_spec(MINIMAL + "mpi: {}\n").spec_hash() == parse_spec(MINIMAL).spec_hash() != spec.spec_hash()
    assert mpirun_flags(parse_spec(MINIMAL + "mpi: {}\n"), local=False) == mpirun_flags(parse_spec(MINIMAL), local=False)


TEMPLATE_EXPR = re.compile(r"\{\{(.*?)\}\}", re.S)


def unescaped_expressions(text: str) -> list[str]:
    """Every `{{ ... }}` that does not end in `| tojson`."""
    return [m.group(0) for m in TEMPLATE_EXPR.finditer(text) if not re.fullmatch(r"-?\s*\S.*\|\s*tojson\s*-?", m.group(1), re.S)]


def test_every_template_value_goes_through_tojson():
    templates = sorted(templates_dir().glob("*.j2"))
    assert len(templates) >= 3
    for path in templates:
        assert unescaped_expressions(path.read_text()) == [], path.name
    assert unescaped_expressions("a: {{ x }}\nb: {{ y | tojson }}\nc: {{ z | tojson | upper }}") == ["{{ x }}", "{{ z | tojson | upper }}"]


def test_yaml_safe_json_round_trips_awkward_text():
    for text in ["a\nb", "\u2028\u2029\x85", "\ufeffbom", "🎉 emoji", "tab\there", "\x00\x1f\x7f\x9f", "'\"\\", "---", "{{ x }}", ": ", "#", "null", "1e3"]:
        assert yaml.safe_load("k: " + yaml_safe_json(text)) == {"k": text}, repr(text)


@pytest.mark.timeout(120)
def test_rendering_is_deterministic_across_processes():
    code = ("import sys; from kjob.spec.load import load_spec; from kjob.render.manifests import render_objects; from kjob.render.text import dump_objects;"
            "sys.stdout.write(''.join(dump_objects(render_objects(load_spec(p))) for p in sys.argv[1:]))")
    outputs = set()
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outputs.add(subprocess.run([sys.executable, "-c", code, *map(str, EXAMPLES)], env=env, capture_output=True, text=True, check=True, timeout=scaled(60)).stdout)
    assert len(outputs) == 1
    from kjob.render.text import dump_objects

    assert outputs.pop() == "".join(dump_objects(render_objects(load_spec(p))) for p in EXAMPLES)


@pytest.mark.parametrize("spec_text", [p.read_text() for p in OPERATOR_EXAMPLES] + [EVERYTHING],
                         ids=[p.stem for p in OPERATOR_EXAMPLES] + ["everything"])
def test_pod_templates_are_valid_core_objects(spec_text):
    """The CRD schemas embed PodTemplateSpec without rejecting unknown keys; the strict
    core schema catches a misspelt field in a pod template."""
    import kubernetes_validate

    (job,) = render_objects(parse_spec(spec_text))
    replicas = job["spec"].get("mpiReplicaSpecs") or job["spec"]["pytorchReplicaSpecs"]
    for role, replica in replicas.items():
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"{job['metadata']['name']}-{role.lower()}"},
                    "template": replica["template"]}
        kubernetes_validate.validate(template, "1.32.0", strict=True)


def test_templates_ship_in_the_wheel():
    """`pip install .` (not only editable) must carry every template as package data."""
    import fnmatch
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert (ROOT / setup["package-dir"]["kjob.templates"]).resolve() == templates_dir().resolve()
    assert "kjob.templates" in setup["packages"]
    for template in templates_dir().glob("*.j2"):
        assert any(fnmatch.fnmatch(template.name, pat) for pat in setup["package-data"]["kjob.templates"]), template.name


def test_worker_probe_and_paths_match_the_image():
    """The MPIJob's sshd command, port and user agree with images/ (the trainer image)."""
    from kjob.render import manifests as render

    sshd_config = (ROOT / "images" / "ssh" / "sshd_config").read_text()
    assert re.search(rf"^Port {render.SSHD_PORT}$", sshd_config, re.M)
    dockerfile = (ROOT / "images" / "pytorch" / "Dockerfile").read_text()
    assert f"--uid {render.MPI_USER_UID}" in dockerfile and "/home/mpiuser/.sshd_config" in dockerfile
