"""The CLI without a cluster: render, validate, schema, submit --dry-run; exact errors and
exit codes; help texts; no heavy imports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from kjob.cli import cli, main
from kjob.render.text import GENERATED_MARKER, dump_objects
from kjob.render.manifests import render_objects
from kjob.spec.load import load_spec
from timing import scaled

ROOT = Path(__file__).resolve().parents[1]
BAD = sorted((ROOT / "tests" / "bad_specs").glob("*.yaml"))
SPEC = ROOT / "examples" / "resnext50.yaml"
SMOKE = ROOT / "examples" / "smoke.yaml"
KJOB = [sys.executable, "-m", "kjob"]


def kjob(capsys, *args) -> tuple[int, str, str]:
    """Run `kjob ARGS` in this process through main(): (exit code, stdout, stderr)."""
    argv = sys.argv
    sys.argv = ["kjob", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err


def test_bad_spec_corpus_is_big_enough():
    assert len(BAD) >= 25


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_spec_gets_its_exact_errors(capsys, path):
    """Each file starts with `# expect: LINE:COL: field.path: message` lines."""
    rel = path.relative_to(ROOT)
    expected = [f"Error: {rel}:{line.removeprefix('# expect: ')}" for line in path.read_text().splitlines() if line.startswith("# expect: ")]
    assert expected, f"{path.name} has no '# expect:' line"
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        code, out, err = kjob(capsys, "validate", rel)
    finally:
        os.chdir(cwd)
    assert (code, out, err.splitlines()) == (2, "", expected)


@pytest.mark.timeout(60)
def test_bad_spec_as_a_process_has_no_traceback():
    r = subprocess.run(KJOB + ["render", "tests/bad_specs/many-problems.yaml", "-o", "out-never"], cwd=ROOT, capture_output=True, text=True, timeout=scaled(60))
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[0].startswith("Error: tests/bad_specs/many-problems.yaml:5:7: name: ")
    assert not (ROOT / "out-never").exists()


@pytest.mark.parametrize("args, message", [
    (["validate", "nope.yaml"], "Error: nope.yaml: no such file"),
    (["validate", "."], "Error: .: is a directory, not a spec file"),
    (["render", "--format", "toml", "x.yaml"], "Error: Invalid value for '--format': 'toml' is not one of 'yaml', 'json'."),
    (["render"], "Error: Missing argument 'SPEC...'."),
    (["submit", str(SPEC), "--dry-run", "-n", "Bad_NS"], "Error: --namespace: 'Bad_NS' is not a valid Kubernetes name (lowercase letters, digits, '-' and '.')"),
])
def test_exact_error_lines(capsys, args, message):
    code, out, err = kjob(capsys, *args)
    assert code == 2 and out == ""
    assert err.splitlines()[-1] == message


def test_invalid_utf8(capsys, tmp_path):
    f = tmp_path / "latin1.yaml"
    f.write_bytes(b"name: caf\xe9\n")
    code, _, err = kjob(capsys, "validate", f)
    assert code == 2
    assert err == f"Error: {f}: cannot read: 'utf-8' codec can't decode byte 0xe9 in position 9: invalid continuation byte\n"


def test_validate_ok(capsys):
    code, out, err = kjob(capsys, "validate", SPEC, SMOKE)
    assert code == 0 and err == ""
    assert out.splitlines() == [f"{SPEC}: ok (MPIJob resnext50, pytorch, 1 worker x 8 GPUs)",
                                f"{SMOKE}: ok (MPIJob smoke, pytorch, 2 workers x CPU only)"]


@pytest.mark.parametrize("server", ["nfs.storage.svc.cluster.local", "nfs.storage.svc", "NFS.Storage.SVC.Cluster.Local."])
def test_validate_warns_of_an_nfs_server_by_cluster_dns_name(capsys, tmp_path, server):
    spec = tmp_path / "nfs.yaml"
    spec.write_text((ROOT / "examples/resnest50.yaml").read_text().replace("server: 192.0.2.10", f"server: {server}"))
    code, out, err = kjob(capsys, "validate", spec)
    assert code == 0 and out == f"{spec}: ok (MPIJob resnest50, pytorch, 1 worker x 4 GPUs)\n"
    assert err == (f"{spec}: warning: data.nfs.server: {server} is a cluster DNS name, but kubelet mounts NFS with the "
                   "node's resolver, which usually cannot resolve it (mount.nfs: Failed to resolve server); give the "
                   "server's IP address or a name the nodes resolve\n")


def test_validate_is_quiet_about_an_nfs_server_the_nodes_resolve(capsys):
    code, _, err = kjob(capsys, "validate", ROOT / "examples/resnest50.yaml")
    assert (code, err) == (0, "")


def test_validate_warns_of_loaders_past_the_cpu_and_of_a_large_batch_without_warmup(capsys, tmp_path):
    spec = tmp_path / "big.yaml"
    spec.write_text(SPEC.read_text().replace("workers: 1\n", "workers: 64\n").replace("warmupEpochs: 5", "warmupEpochs: 0")
                    .replace("loaderWorkers: 6", "loaderWorkers: 8"))
    code, out, err = kjob(capsys, "validate", spec)
    assert code == 0 and out == f"{spec}: ok (MPIJob resnext50, pytorch, 64 workers x 8 GPUs)\n"
    assert err.splitlines() == [
        f"{spec}: warning: train.loaderWorkers: 8 ranks x 8 loader processes (train and val) = 128 per pod, more than "
        "twice the CPU (48); they will fight for the cores: set loaderWorkers to 6 or request more CPU",
        f"{spec}: warning: train.warmupEpochs: the global batch is 16384 images (512 ranks x 32) with plain SGD and no "
        "warm-up; past 8192 the scaled lr diverges early without one: set warmupEpochs (e.g. 5)"]
    # Without val loaders 64 per pod are fine, and MindSpore's loaders are threads.
    spec.write_text(SPEC.read_text().replace("loaderWorkers: 6", "loaderWorkers: 12\n  eval: false"))
    assert kjob(capsys, "validate", spec)[2] == ""
    spec.write_text(SPEC.read_text().replace("loaderWorkers: 6", "loaderWorkers: 12").replace("framework: pytorch", "framework: mindspore")
                    .replace("amp: bf16", "amp: fp16").replace("channelsLast: true", "channelsLast: false"))
    assert kjob(capsys, "validate", spec)[:3:2] == (0, "")


def test_validate_gives_no_warning_for_the_shipped_examples(capsys):
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    code, out, err = kjob(capsys, "validate", *examples)
    assert (code, err) == (0, "") and out.count(": ok (") == len(examples) == 14


def test_readme_infiniband_spec_is_valid_and_quiet(capsys, tmp_path):
    readme = (ROOT / "README.md").read_text()
    block = readme.split("A complete spec for 128 nodes x 8 GPUs on InfiniBand", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    spec = tmp_path / "ib.yaml"
    spec.write_text(block)
    code, out, err = kjob(capsys, "validate", spec)
    assert (code, err, out) == (0, "", f"{spec}: ok (MPIJob resnext50-ib, pytorch, 128 workers x 8 GPUs)\n")
    (job,) = render_objects(load_spec(spec))
    (worker,) = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["rdma/rdma_shared_device_a"] == "1"
    assert worker["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"] and "api-key" in str(worker["env"])


def test_render_to_stdout_is_multi_document_yaml(capsys):
    code, out, _ = kjob(capsys, "render", SPEC, SMOKE)
    assert code == 0
    docs = list(yaml.safe_load_all(out))
    assert [d["metadata"]["name"] for d in docs] == ["resnext50", "smoke"]
    assert out == dump_objects(render_objects(load_spec(SPEC)) + render_objects(load_spec(SMOKE)))


def test_render_json(capsys):
    code, out, _ = kjob(capsys, "render", "--format", "json", SPEC)
    assert code == 0
    doc = json.loads(out)
    assert (doc["kind"], doc["items"]) == ("List", render_objects(load_spec(SPEC)))


def test_render_namespace_override(capsys):
    _, out, _ = kjob(capsys, "render", "-n", "team-b", SPEC)
    assert yaml.safe_load(out)["metadata"]["namespace"] == "team-b"


def test_render_refuses_two_jobs_with_one_name(capsys):
    code, out, err = kjob(capsys, "render", SPEC, SPEC)
    assert (code, out, err) == (2, "", "Error: two specs define MPIJob 'resnext50'; job names must be unique\n")


def test_render_dir_is_kustomize_ready(capsys, tmp_path):
    out_dir = tmp_path / "gitops" / "jobs"
    code, _, err = kjob(capsys, "render", SPEC, ROOT / "examples" / "resnext50-torchrun.yaml", "-o", out_dir)
    assert code == 0
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == ["kustomization.yaml", "mpijob-resnext50.yaml", "pytorchjob-resnext50-torchrun.yaml"]
    kust = (out_dir / "kustomization.yaml").read_text()
    assert kust.startswith(GENERATED_MARKER)
    assert yaml.safe_load(kust) == {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                                    "resources": ["mpijob-resnext50.yaml", "pytorchjob-resnext50-torchrun.yaml"]}
    assert yaml.safe_load((out_dir / "mpijob-resnext50.yaml").read_text()) == render_objects(load_spec(SPEC))[0]
    assert err.splitlines()[0] == f"wrote {out_dir / 'mpijob-resnext50.yaml'}"
    # rendering again replaces the directory as a whole: a job that left is gone
    assert kjob(capsys, "render", SPEC, "-o", out_dir)[0] == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["kustomization.yaml", "mpijob-resnext50.yaml"]
    assert [p.name for p in out_dir.parent.iterdir()] == ["jobs"]  # no temporary leftovers


def test_render_dir_json(capsys, tmp_path):
    assert kjob(capsys, "render", SPEC, "--format", "json", "-o", tmp_path / "j")[0] == 0
    assert json.loads((tmp_path / "j" / "mpijob-resnext50.json").read_text())["kind"] == "MPIJob"


def test_render_dir_never_merges_into_foreign_files(capsys, tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    code, _, err = kjob(capsys, "render", SPEC, "-o", tmp_path)
    assert code == 2
    assert err == f"Error: {tmp_path}: directory is not empty and was not written by `kjob render`; give a new or empty directory\n"
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_render_dir_not_created_when_any_spec_is_bad(capsys, tmp_path):
    code, _, err = kjob(capsys, "render", SPEC, ROOT / "tests" / "bad_specs" / "workers-zero.yaml", "-o", tmp_path / "out")
    assert code == 2 and "workers: must be at least 1, got 0" in err
    assert list(tmp_path.iterdir()) == []


def test_render_dir_on_a_file(capsys, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    code, _, err = kjob(capsys, "render", SPEC, "-o", target)
    assert code == 2 and err == f"Error: {target}: exists and is not a directory\n"


def test_submit_dry_run_prints_exactly_render_objects(capsys):
    code, out, err = kjob(capsys, "submit", SPEC, "--dry-run")
    assert (code, err) == (0, "")
    assert out == dump_objects(render_objects(load_spec(SPEC)))
    assert kjob(capsys, "render", SPEC)[1] == out


def test_schema(capsys, tmp_path):
    code, out, _ = kjob(capsys, "schema")
    assert code == 0
    schema = json.loads(out)
    assert schema["title"] == "JobSpec" and "gpusPerWorker" in schema["properties"]
    assert kjob(capsys, "schema", "-o", tmp_path / "s.json")[0] == 0
    assert json.loads((tmp_path / "s.json").read_text()) == schema


def _commands(group: click.Group, prefix=()):
    for name, cmd in sorted(group.commands.items()):
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))


def test_every_command_and_option_has_help(capsys):
    assert cli.help
    for path, cmd in _commands(cli):
        assert cmd.help and cmd.help.strip(), path
        for param in cmd.params:
            if isinstance(param, click.Option):
                assert param.help, f"kjob {' '.join(path)} {param.opts[0]} has no help"
        code, out, _ = kjob(capsys, *path, "--help")
        assert code == 0 and out.startswith("Usage: kjob " + " ".join(path)), path


@pytest.mark.timeout(120)
@pytest.mark.parametrize("args", [["--help"], ["render", "examples/resnext50.yaml"], ["validate", "examples/resnext50.yaml"],
                                  ["submit", "examples/smoke.yaml", "--dry-run"],
                                  ["submit", "examples/smoke.yaml", "--local", "--dry-run"], ["schema"]])
def test_light_commands_import_no_heavy_modules(args):
    code = (
        "import sys\n"
        f"sys.argv = ['kjob'] + {args!r}\n"
        "from kjob.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mindspore', 'kubernetes', 'numpy', 'kjob_trainer'))\n"
        "sys.stderr.write('HEAVY=' + ','.join(heavy))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=scaled(120))
    assert r.returncode == 0, r.stderr
    assert re.search(r"HEAVY=(.*)$", r.stderr).group(1) == ""


def test_readme_cli_reference_names_every_command():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## CLI reference"):]
    for path, _ in _commands(cli):
        assert f"`kjob {' '.join(path)}" in section, f"README's CLI reference lacks kjob {' '.join(path)}"


def test_options_from_environment_variables(capsys, monkeypatch):
    monkeypatch.setenv("KJOB_RENDER_FORMAT", "json")
    monkeypatch.setenv("KJOB_SUBMIT_NAMESPACE", "team-env")
    assert json.loads(kjob(capsys, "render", SPEC)[1])["kind"] == "List"
    assert yaml.safe_load(kjob(capsys, "submit", SPEC, "--dry-run")[1])["metadata"]["namespace"] == "team-env"


def test_render_dir_failure_leaves_nothing(capsys, tmp_path, monkeypatch):
    """A write that fails half-way (disk full) leaves neither DIR, nor the parents kjob
    created for it, nor a temporary directory."""
    from kjob.render import text as gitops

    def fail(_new, _out):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gitops, "_replace_dir", fail)
    code, _, err = kjob(capsys, "render", SPEC, "-o", tmp_path / "a" / "b" / "out")
    assert (code, err) == (2, f"Error: {tmp_path / 'a' / 'b' / 'out'}: cannot write: No space left on device\n")
    assert list(tmp_path.iterdir()) == []


def test_spec_from_stdin(capsys, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(SMOKE.read_text()))
    code, out, _ = kjob(capsys, "validate", "-")
    assert (code, out) == (0, "-: ok (MPIJob smoke, pytorch, 2 workers x CPU only)\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("name: [\n"))
    code, _, err = kjob(capsys, "render", "-")
    assert (code, err) == (2, "Error: <stdin>:2:1: (yaml): while parsing a flow node did not find expected node content\n")


def test_huge_file_is_not_a_spec(capsys, tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# padding\n" * 200_000)
    code, _, err = kjob(capsys, "validate", big)
    assert (code, err) == (2, f"Error: {big}: larger than 1 MiB; not a job spec\n")
