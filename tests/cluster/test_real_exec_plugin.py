"""Issue 16 item 9 on the real control plane: a kubeconfig whose user is an exec
credential plugin (what GKE, EKS and AKS kubeconfigs hold). The plugin here is a small
script handing out a real ServiceAccount token from the TokenRequest API: kjob works
through it, as that identity. A failing or missing plugin is one `Error:` line naming the
plugin (and a hint line with the fix), exit 3, and no line of the client library's logging.

kjob runs as its own process here: the `ERROR:root:...` line the client logs is written
by Python's logging to the process's stderr, which an in-process run under pytest (whose
log capture holds the root logger) would never show."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from waiting import time_scale

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300 * time_scale())]

KJOB = [sys.executable, "-m", "kjob"]
SA = "kjob-user"


def _kjob(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KJOB_RETRIES": "1"}
    return subprocess.run([*KJOB, *args], env=env, capture_output=True, text=True, timeout=120 * time_scale())


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _plugin_kubeconfig(real, path: Path, command: str, args: list[str] | None = None) -> Path:
    """real's kubeconfig with its user replaced by an exec credential plugin."""
    cfg = yaml.safe_load(real.kubeconfig.read_text())
    cfg["users"] = [{"name": cfg["users"][0]["name"], "user": {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1", "command": command, "args": args or [],
        "interactiveMode": "Never"}}}]
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _service_account_token(real) -> str:
    """A ServiceAccount allowed everything in the test's namespace, and a token for it
    from the TokenRequest API (what a cloud plugin hands out is the same kind of bearer)."""
    api, ns = real.api, real.ns
    api.create(real.path("serviceaccounts"), {"metadata": {"name": SA}})
    api.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles", {
        "metadata": {"name": "kjob-user"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]})
    api.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", {
        "metadata": {"name": "kjob-user"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kjob-user"},
        "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": ns}]})
    answer = api.create(real.path("serviceaccounts", SA) + "/token", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})
    return answer["status"]["token"]


def test_kjob_works_through_a_plugin_that_hands_out_a_service_account_token(real, tmp_path):
    credential = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": _service_account_token(real)}}
    calls = tmp_path / "calls"
    plugin = _script(tmp_path / "kjob-test-login",
                     f"echo called >> {calls}\ncat <<'EOF'\n{json.dumps(credential)}\nEOF\n")
    kubeconfig = _plugin_kubeconfig(real, tmp_path / "kubeconfig", str(plugin))

    r = _kjob(kubeconfig, "submit", "examples/smoke.yaml")
    assert (r.returncode, r.stdout) == (0, f"MPIJob {real.ns}/smoke created\n"), r
    assert calls.read_text().count("called") >= 1
    real.wait_pods("smoke", 2)
    r = _kjob(kubeconfig, "status", "smoke")
    assert r.returncode == 0 and "smoke" in r.stdout, r
    assert "ERROR" not in r.stderr, r
    # The requests went as the ServiceAccount, not as the admin: outside its namespace it is refused.
    r = _kjob(kubeconfig, "list", "-n", "default")
    assert r.returncode == 4, r
    assert f"system:serviceaccount:{real.ns}:{SA}" in r.stderr, r


def _error_lines(r: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]


def test_a_failing_plugin_is_one_error_line_naming_it_with_exit_3(real, tmp_path):
    plugin = _script(tmp_path / "cloud-login",
                     "echo 'reading the cached token' >&2\n"
                     "echo 'error: the refresh token has expired; run: cloud-login auth' >&2\nexit 1\n")
    kubeconfig = _plugin_kubeconfig(real, tmp_path / "kubeconfig", str(plugin), ["token", "--cluster", "c1"])

    r = _kjob(kubeconfig, "status", "smoke")
    assert r.returncode == 3, r
    assert "ERROR:root" not in r.stderr and "Traceback" not in r.stderr, r
    # kjob's one error, as every error prints: the line, then the line of the fix.
    assert _error_lines(r) == [
        f'Error: the kubeconfig\'s exec credential plugin "{plugin}" (user "kjob-test") failed: '
        "error: the refresh token has expired; run: cloud-login auth",
        f"Error: hint: run {plugin} token --cluster c1 yourself to see why (often: log in again)"], r
    assert "reading the cached token" not in r.stderr, r  # its last words, not its whole stderr


def test_a_missing_plugin_is_one_error_line_saying_to_install_it(real, tmp_path):
    kubeconfig = _plugin_kubeconfig(real, tmp_path / "kubeconfig", "no-such-plugin")

    r = _kjob(kubeconfig, "list")
    assert r.returncode == 3, r
    assert "ERROR:root" not in r.stderr and "Traceback" not in r.stderr, r
    line, hint = _error_lines(r)
    assert line.startswith('Error: the kubeconfig\'s exec credential plugin "no-such-plugin" (user "kjob-test") failed:'), r
    assert "No such file or directory" in line, r
    assert hint.startswith("Error: hint: install no-such-plugin (or put it on PATH), or fix users[kjob-test].user.exec in "), r
