"""kjob.plan: what `submit --dry-run` prints is the plan that `submit` carries out, for
both backends. The local plan's text is held by a golden file, as the manifests are by
manifests/examples/."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest

from kjob.errors import InvalidInput
from kjob.plan import ClusterPlan, LocalPlan, cluster_plan, local_command, local_plan
from kjob.render.manifests import render_objects
from kjob.render.text import dump_objects
from kjob.spec.load import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "examples" / "smoke.yaml"
GOLDEN = Path(__file__).parent / "golden" / "smoke-local-dry-run.txt"
# Regenerate the golden file: KJOB_UPDATE_GOLDEN=1 pytest tests/test_plan.py
UPDATE = bool(os.environ.get("KJOB_UPDATE_GOLDEN"))


@pytest.fixture
def as_user(monkeypatch):
    """Plans as a non-root user makes them (as root mpirun also gets --allow-run-as-root)."""
    monkeypatch.setattr("kjob.render.commands.os.geteuid", lambda: 1000)


def placeholders(text: str, cwd: Path) -> str:
    """The machine's paths in `text` replaced: <bin> (this Python's bin folder), <cwd>."""
    return text.replace(str(Path(sys.executable).parent), "<bin>").replace(str(cwd.resolve()), "<cwd>")


def test_local_dry_run_prints_the_command_and_environment(run_kjob, tmp_path, monkeypatch, as_user):
    monkeypatch.chdir(tmp_path)
    done = run_kjob("submit", str(SMOKE), "--local", "--dry-run")
    assert (done.code, done.err) == (0, "")
    text = placeholders(done.out, tmp_path)
    if UPDATE:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8"), "stale: KJOB_UPDATE_GOLDEN=1 pytest tests/test_plan.py"
    assert not (tmp_path / "kjob-runs").exists()  # a dry run starts and writes nothing


def test_local_dry_run_text_is_the_command_that_runs(tmp_path, monkeypatch, as_user):
    """The printed shell command, parsed back, is the plan's environment and argv."""
    monkeypatch.chdir(tmp_path)
    plan = local_plan(load_spec(SMOKE))
    words = shlex.split(plan.text().split("\n", 1)[1].replace("\\\n", " "))
    assert words[0] == "env"
    env = dict(w.split("=", 1) for w in words[1:1 + len(plan.env)])
    assert env == plan.env == {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # 8 ranks here, as torchrun sets it
    assert words[1 + len(plan.env):] == plan.argv == local_command(load_spec(SMOKE), tmp_path / "kjob-runs" / "smoke")
    assert plan.run_dir == tmp_path / "kjob-runs" / "smoke"
    assert plan.processes == 8


def test_local_flags_are_added_once(as_user, tmp_path):
    """mpirun's local options come from render.commands alone, each once."""
    argv = local_command(load_spec(SMOKE), tmp_path / "smoke")
    assert argv.count("--oversubscribe") == 1 and "--allow-run-as-root" not in argv


def test_cluster_dry_run_is_the_plan_text(run_kjob):
    spec = load_spec(SMOKE)
    plan = cluster_plan(spec)
    assert plan.objects == render_objects(spec)
    assert run_kjob("submit", str(SMOKE), "--dry-run").out == plan.text() == dump_objects(plan.objects)
    assert run_kjob("submit", str(SMOKE), "--dry-run", "--format", "json").out == ClusterPlan(plan.objects, "json").text()


def test_plans_are_values():
    """A plan is data: frozen, so what was printed cannot change before it is carried out."""
    plan = local_plan(load_spec(SMOKE), root="/tmp/runs")
    assert isinstance(plan, LocalPlan)
    with pytest.raises(AttributeError):
        plan.name = "other"  # type: ignore[misc]


def test_submit_sends_exactly_what_the_dry_run_printed(kube, run_kjob, monkeypatch):
    """No object is changed between the dry run and the request (the namespace of an
    object without one comes from the request's path, on the server)."""
    from kjob.cluster.api import Kube

    sent = []
    send = Kube.send

    def record(self, req, **kwargs):
        if req.verb == "create" and req.resource == "mpijobs":
            sent.append(req.body)
        return send(self, req, **kwargs)

    monkeypatch.setattr(Kube, "send", record)
    printed = run_kjob("submit", str(SMOKE), "--dry-run").out
    done = run_kjob("submit", str(SMOKE))
    assert done.code == 0, done
    assert dump_objects(sent) == printed
    assert kube.get("MPIJob", "smoke")["metadata"]["namespace"] == "default"


def test_a_local_run_takes_a_secret_variable_from_this_shell(tmp_path, monkeypatch):
    text = SMOKE.read_text() + "env: {WANDB_API_KEY: {secretKeyRef: {name: wandb, key: api-key}}, A: b}\n"
    spec = parse_spec(text)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(InvalidInput) as e:
        local_plan(spec, tmp_path)
    assert e.value.message == ("env.WANDB_API_KEY: comes from Secret wandb (key api-key), which a local run cannot "
                               "read; export WANDB_API_KEY in this shell first")
    monkeypatch.setenv("WANDB_API_KEY", "not-in-the-plan")
    plan = local_plan(spec, tmp_path)
    assert plan.env["A"] == "b" and "WANDB_API_KEY" not in plan.env and "not-in-the-plan" not in plan.text()
