"""RBAC as the API server checks it: the exec verbs by server version (kjob.cluster.jobs
.exec_access) and the shipped least-privilege Role (manifests/rbac/) covering what
preflight checks. tests/cluster/test_real_rbac.py binds a token to that Role for real."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kjob.cluster.jobs import NEEDED_ACCESS, exec_access
from kjob.cluster.kinds import kind_of
from kjob.names import JOB_KINDS

ROLE = Path(__file__).resolve().parents[1] / "manifests" / "rbac" / "kjob-user.yaml"


@pytest.mark.parametrize(("version", "verbs"), [
    ({"major": "1", "minor": "34", "gitVersion": "v1.34.4"}, ["get"]),  # websocket GET: "get" only
    ({"major": "1", "minor": "35", "gitVersion": "v1.35.0"}, ["get", "create"]),  # KEP-4006
    ({"major": "1", "minor": "36+", "gitVersion": "v1.36.1-eks"}, ["get", "create"]),
    ({"major": "1", "minor": "29+"}, ["get"]),
    (None, ["get", "create"]),  # /version not readable: ask for both
    ({"major": "", "minor": ""}, ["get", "create"]),
])
def test_exec_is_checked_with_the_verbs_of_the_servers_version(version, verbs):
    assert exec_access(version) == [(verb, "pods", "exec") for verb in verbs]


def granted(rules: list[dict]) -> set[tuple[str, str, str]]:
    return {(verb, resource, group) for rule in rules for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]}


@pytest.mark.parametrize("kind", JOB_KINDS)
def test_the_shipped_role_grants_what_preflight_checks_on_any_server_version(kind):
    role = yaml.safe_load(ROLE.read_text())
    assert role["kind"] == "Role"
    have = granted(role["rules"])
    needed = {(verb, resource + (f"/{sub}" if sub else ""), "") for verb, resource, sub in NEEDED_ACCESS + exec_access(None)}
    adapter = kind_of(kind)
    needed |= {(verb, adapter.plural, adapter.group) for verb in ("create", "get", "list", "delete")}
    assert needed - have == set()
    assert all("*" not in rule["verbs"] and "*" not in rule["resources"] for rule in role["rules"])
    binding = yaml.safe_load((ROLE.parent / "rolebinding.yaml").read_text())
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
