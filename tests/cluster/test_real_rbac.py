"""Issue 24 point 4 on the real control plane: a ServiceAccount token bound to exactly
manifests/rbac/kjob-user.yaml runs every kjob command; with one rule of it taken away, the
command that needs the rule is exit 4 naming the verb and resource the API server checked
(kube-apiserver v1.34: a websocket exec is "get pods/exec"). The Kueue rule is not taken
away here: the tier has no Kueue yet."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import yaml

from ckpt_helpers import write_checkpoints
from waiting import time_scale, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240 * time_scale())]

ROLE = yaml.safe_load((Path(__file__).resolve().parents[2] / "manifests" / "rbac" / "kjob-user.yaml").read_text())
RBAC = "rbac.authorization.k8s.io/v1"


def as_kjob_user(real, tmp_path, rules: list[dict], *, name: str = "kjob-user") -> str:
    """A kubeconfig whose token is a ServiceAccount's bound (RoleBinding) to a Role with
    `rules`; the ServiceAccount, Role and binding are all called `name`."""
    api = real.api
    api.create(real.path("serviceaccounts"), {"metadata": {"name": name}})
    api.create(real.path("roles", group=RBAC), {"metadata": {"name": name}, "rules": rules})
    api.create(real.path("rolebindings", group=RBAC), {
        "metadata": {"name": name}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": real.ns}]})
    token = api.request("POST", real.path("serviceaccounts", name) + "/token",
                        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})["status"]["token"]
    return str(real.plane.kubeconfig_for(tmp_path / name, namespace=real.ns, token=token))


def checkpoints(real) -> dict:
    shutil.rmtree(real.checkpoints() / "smoke", ignore_errors=True)
    return write_checkpoints(real.checkpoints() / "smoke" / "checkpoints", [100_000])


def end_and_clean_up(real, run_kjob, launcher: str) -> None:
    """The launcher exits 0; wait until the job is Succeeded and mpi-operator has cleaned up
    its workers (until then fetch-ckpt would exec into one of them and need no new pod)."""
    real.end_pod(launcher, 0)
    wait_for("smoke Succeeded, its workers cleaned up", lambda: "State:     Succeeded" in run_kjob("status", "smoke").out
             and not [p for p in real.pods("smoke") if p.get("status", {}).get("phase") == "Running"], 60, interval=0.2)


def _later(fn) -> None:
    threading.Thread(target=fn, daemon=True).start()


def test_every_command_works_with_exactly_the_shipped_role(real, run_kjob, tmp_path, monkeypatch):
    monkeypatch.setenv("KJOB_FETCH_POD_TIMEOUT", str(60 * time_scale()))
    kc = ["--kubeconfig", as_kjob_user(real, tmp_path, ROLE["rules"])]
    index = checkpoints(real)
    r = run_kjob("submit", "examples/smoke.yaml", *kc)
    assert (r.code, r.out) == (0, f"MPIJob {real.ns}/smoke created\n"), r
    launcher = real.pod("smoke", "launcher")
    real.wait_pods("smoke", 3)
    real.append_log(launcher, ["epoch 1 top1 12.5"])
    # mpi-operator marks the job Running a moment after its pods are (seconds, under load).
    wait_for("smoke Running", lambda: "State:     Running" in run_kjob("status", "smoke").out, 60, interval=0.2)
    st = run_kjob("status", "smoke", *kc)
    assert st.code == 0 and "State:     Running" in st.out and "Warning" not in st.out, st
    r = run_kjob("list", *kc)
    assert r.code == 0 and "smoke" in r.out, r
    r = run_kjob("logs", "smoke", *kc)
    assert (r.code, r.out) == (0, "epoch 1 top1 12.5\n"), r
    r = run_kjob("fetch-ckpt", "smoke", "--dest", str(tmp_path / "got"), *kc)  # exec in the running launcher
    assert r.code == 0 and (tmp_path / "got" / index["latest"]).stat().st_size == 100_000, r

    # delete's checkpoint: exec `kill -USR1 1` in the launcher, then delete the job.
    before = real.signals().count("SIGUSR1")
    _later(lambda: (wait_for("SIGUSR1", lambda: real.signals().count("SIGUSR1") > before, 60, interval=0.05), real.end_pod(launcher, 143)))
    r = run_kjob("delete", "smoke", "--wait", *kc)
    assert r.code == 0 and "asked the trainer to checkpoint" in r.err + r.out and "no checkpoint requested" not in r.out, r

    # A job that ended has no running pod: fetch-ckpt makes its helper pod; resubmitting is
    # exit 6 until --replace deletes and recreates it.
    assert run_kjob("submit", "examples/smoke.yaml", *kc).code == 0
    end_and_clean_up(real, run_kjob, real.pod("smoke", "launcher"))
    r = run_kjob("fetch-ckpt", "smoke", "--list", *kc)
    assert r.code == 0 and index["latest"] in r.out, r
    scheduled = real.api.items(real.path("events"), fieldSelector="reason=Scheduled")
    assert [e for e in scheduled if e["involvedObject"]["name"].startswith("smoke-fetch-")], "no helper pod was made"
    r = run_kjob("submit", "examples/smoke.yaml", *kc)
    assert r.code == 6 and "job smoke Succeeded at " in r.err, r
    r = run_kjob("submit", "examples/smoke.yaml", "--replace", *kc)
    assert (r.code, r.out) == (0, f"MPIJob {real.ns}/smoke replaced\n"), r


def _without(verbs: list[str], resources: list[str]) -> list[dict]:
    rules = [r for r in ROLE["rules"] if not (r["verbs"] == verbs and r["resources"] == resources)]
    assert len(rules) == len(ROLE["rules"]) - 1, "no such rule in the shipped Role"
    return rules


# (the rule taken away, the command that needs it, what its error says). On a running smoke
# job that the admin submitted, or with "ended": after its launcher exited 0.
REMOVED = [
    (["get", "list"], ["mpijobs", "pytorchjobs"], ("status", "smoke"), 'cannot get mpijobs "smoke"', None),
    (["create", "delete"], ["mpijobs", "pytorchjobs"], ("submit", "examples/smoke.yaml", "--replace"),
     'RBAC does not allow "create mpijobs.kubeflow.org"', None),
    (["get", "list"], ["pods"], ("status", "smoke"), "cannot list pods", None),
    (["get"], ["pods/log"], ("logs", "smoke"), "cannot get pods/log", None),
    (["get", "create"], ["pods/exec"], ("fetch-ckpt", "smoke", "--list"), "cannot get pods/exec", None),
    (["create", "delete"], ["pods"], ("fetch-ckpt", "smoke", "--list"), "cannot create pods", "ended"),
]


@pytest.mark.parametrize(("verbs", "resources", "command", "says", "when"), REMOVED,
                         ids=lambda v: "-".join(v) if isinstance(v, list) else None)
def test_without_one_rule_the_command_that_needs_it_names_it(real, run_kjob, tmp_path, verbs, resources, command, says, when):
    checkpoints(real)
    assert run_kjob("submit", "examples/smoke.yaml").code == 0  # as the admin
    launcher = real.pod("smoke", "launcher")
    if when == "ended":
        end_and_clean_up(real, run_kjob, launcher)
    kc = as_kjob_user(real, tmp_path, _without(verbs, resources))
    r = run_kjob(*command, "--kubeconfig", kc)
    err = " ".join(r.err.split())
    assert r.code == 4 and says in err, r
    assert "kubectl auth can-i" in err or "ask a cluster admin for a Role with" in err, r


@pytest.mark.parametrize(("resources", "command", "says"), [
    (["events"], ("status", "smoke"), "Warning: forbidden: cannot list events"),
    (["persistentvolumeclaims"], ("fetch-ckpt", "smoke", "--list"), None),
])
def test_without_an_optional_rule_the_command_still_works(real, run_kjob, tmp_path, resources, command, says):
    """Events and the claim only sharpen what kjob says or where its helper goes."""
    index = checkpoints(real)
    assert run_kjob("submit", "examples/smoke.yaml").code == 0
    real.wait_pods("smoke", 3)
    rule = next(r for r in ROLE["rules"] if r["resources"] == resources)
    kc = as_kjob_user(real, tmp_path, _without(rule["verbs"], resources))
    r = run_kjob(*command, "--kubeconfig", kc)
    assert r.code == 0, r
    if says:
        assert says in " ".join(r.out.split()), r
    else:
        assert index["latest"] in r.out, r
