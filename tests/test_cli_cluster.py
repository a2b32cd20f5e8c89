"""The CLI against the fake API server, for what a real one cannot be made to do: 500s,
TLS and connection failures, a denial on one call, jobs finished at a chosen moment.
Whole job lives, RBAC denials, missing namespaces/jobs/CRDs and conflicts run against the
real control plane (tests/cluster/test_real_jobs.py, test_real_errors.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from timing import scaled

pytestmark = pytest.mark.timeout(180)  # a bound against hangs, scaled by KJOB_TEST_TIME_SCALE


def test_submit_wait_and_follow_exit_with_the_job(kube, run_kjob):
    def operator(state):
        while not kube.get("MPIJob", "smoke"):
            time.sleep(0.02)
        pods = kube.run_job("smoke")
        kube.append_log(pods[0], ["working"])
        time.sleep(0.2)
        kube.finish_job("smoke", state)

    threading.Thread(target=operator, args=("Succeeded",), daemon=True).start()
    r = run_kjob("submit", "examples/smoke.yaml", "--wait")
    assert r.code == 0 and r.err.splitlines()[-1] == "job smoke Succeeded"
    run_kjob("delete", "smoke", "--wait")
    threading.Thread(target=operator, args=("Failed",), daemon=True).start()
    r = run_kjob("submit", "examples/smoke.yaml", "--follow")
    assert (r.code, r.out) == (1, "MPIJob default/smoke created\nworking\n")
    assert r.err.splitlines()[-1] == "job smoke Failed"
    # The same spec over the Failed job: exit 6 saying so (it used to be a silent no-op).
    again = run_kjob("submit", "examples/smoke.yaml")
    assert again.code == 6 and again.err.startswith("Error: job smoke Failed at "), again
    assert "`--replace` runs it again (resuming from its latest checkpoint)" in " ".join(again.err.split()), again


def test_exit_3_unreachable_tls_401_and_5xx(kube, run_kjob):
    closed = kube.kubeconfig_variant(server="http://127.0.0.1:1", name="closed")
    r = run_kjob("status", "smoke", "--kubeconfig", str(closed))
    assert r.code == 3
    assert r.err.splitlines() == ['Error: cannot reach the Kubernetes API server http://127.0.0.1:1 (context "kubefake"): connection refused',
                                  "Error: hint: is the cluster up and the kubeconfig's server address right? (kubectl cluster-info)"]
    tls_url = kube.server.replace("http://", "https://")
    r = run_kjob("status", "smoke", "--kubeconfig", str(kube.kubeconfig_variant(server=tls_url, name="tls")))
    assert r.code == 3 and r.err.startswith(f'Error: cannot reach the Kubernetes API server {tls_url} (context "kubefake"): TLS failed: ')
    r = run_kjob("list", "--kubeconfig", str(kube.kubeconfig_variant(token="expired", name="expired")))
    assert r.code == 3
    assert r.err.splitlines()[0] == f'Error: the Kubernetes API server {kube.server} (context "kubefake") rejected the credentials (401 Unauthorized)'
    kube.fault("get", "mpijobs", status=500, times=-1)
    r = run_kjob("status", "smoke")
    assert r.code == 3
    assert r.err == (f'Error: the Kubernetes API server {kube.server} (context "kubefake") is failing: 500 Internal Server Error on get mpijobs "smoke" '
                     'in namespace "default" after 4 attempts: injected fault: 500 for get mpijobs\n')


def test_exit_4_on_the_call_itself(kube, run_kjob):
    assert run_kjob("submit", "examples/smoke.yaml").code == 0
    pods = kube.run_job("smoke")
    kube.append_log(pods[0], ["x"])
    kube.deny("get", "pods/log")
    r = run_kjob("logs", "smoke")
    assert r.code == 4
    assert r.err.splitlines()[0] == (f'Error: forbidden: cannot get pods/log "{pods[0]}" in namespace "default" (context "kubefake"): pods is forbidden: '
                                     'User "kjob-test" cannot get resource "pods/log" in API group "" in the namespace "default"')


def test_no_traceback_from_the_installed_script(kube, tmp_path):
    """A real process, as users run it: the message and the code, nothing else."""
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig_variant(server="http://127.0.0.1:1", name="closed")), "KJOB_RETRIES": "1"}
    kjob = Path(sys.executable).with_name("kjob")
    p = subprocess.run([str(kjob), "status", "smoke"], capture_output=True, text=True, env=env, timeout=scaled(30))
    assert p.returncode == 3 and p.stdout == ""
    assert p.stderr.startswith('Error: cannot reach the Kubernetes API server http://127.0.0.1:1 (context "kubefake"): connection refused\n')
    assert "Traceback" not in p.stderr


def test_cluster_modules_do_not_import_the_kubernetes_client_until_used():
    code = ("import sys, kjob.cli, kjob.cluster.backend, kjob.cluster.api, kjob.cluster.status, kjob.cluster.logs; "
            "from kjob.cli import cli; from click.testing import CliRunner; "
            "assert CliRunner().invoke(cli, ['logs', '--help']).exit_code == 0; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'urllib3', 'torch')))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=scaled(60))
    assert (p.returncode, p.stdout) == (0, "[]\n"), p.stderr


def test_status_list_and_logs_load_no_spec_render_plan_or_transfer_module():
    # kjob.spec builds pydantic models at import (~0.2 s): only submit/render/validate need it.
    code = ("import sys, kjob.cli, kjob.cluster.backend, kjob.report; "
            "print(sorted(m for m in sys.modules if m.startswith(('kjob.spec', 'kjob.render', 'kjob.plan', 'kjob.transfer', 'kjob.cluster.fetch'))))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=scaled(60))
    assert (p.returncode, p.stdout) == (0, "[]\n"), p.stderr


def test_every_cluster_command_has_help_text():
    from kjob.cli import cli

    for name in ("status", "list", "delete", "logs", "fetch-ckpt", "submit"):
        assert cli.commands[name].help and len(cli.commands[name].help) > 20
        for param in cli.commands[name].params:
            assert getattr(param, "help", None) or param.param_type_name == "argument", (name, param.name)


def test_delete_several_names_goes_on_past_a_missing_one(kube, run_kjob):
    assert run_kjob("submit", "examples/smoke.yaml").code == 0
    r = run_kjob("delete", "ghost", "smoke")
    assert r.code == 5
    assert r.out == "deleted MPIJob default/smoke: it had no pods yet\n"
    assert r.err.startswith('Error: job "ghost" not found in namespace "default"')
    assert kube.get("MPIJob", "smoke") is None


# --- exec credential plugins (GKE, EKS and AKS kubeconfigs use them) ---------------------------
def exec_kubeconfig(kube, tmp_path, command: str, *args: str) -> Path:
    cfg = yaml.safe_load(Path(kube.kubeconfig).read_text())
    cfg["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": command,
                                        "args": list(args), "interactiveMode": "Never"}}
    path = tmp_path / "exec-kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    return path


def plugin(tmp_path, body: str) -> str:
    script = tmp_path / "plugin.sh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


def test_a_missing_exec_plugin_is_one_error_line_naming_it(kube, run_kjob, tmp_path):
    r = run_kjob("list", "--kubeconfig", str(exec_kubeconfig(kube, tmp_path, "no-such-plugin")))
    assert r.code == 3
    assert r.err.splitlines()[0] == ("Error: the kubeconfig's exec credential plugin \"no-such-plugin\" (user \"kjob-test\") failed: "
                                     "[Errno 2] No such file or directory: 'no-such-plugin'")
    assert "install no-such-plugin (or put it on PATH)" in r.err
    assert "ERROR:root" not in r.err and "Traceback" not in r.err


def test_a_failing_exec_plugin_is_named_with_its_last_words(kube, run_kjob, tmp_path):
    failing = plugin(tmp_path, "for i in 1 2 3 4 5; do echo \"noise $i\" >&2; done\n"
                               "echo 'error: the SSO session has expired, run: cloud login' >&2\nexit 1\n")
    r = run_kjob("list", "--kubeconfig", str(exec_kubeconfig(kube, tmp_path, failing, "token")))
    assert r.code == 3
    first = r.err.splitlines()[0]
    assert first == (f"Error: the kubeconfig's exec credential plugin \"{failing}\" (user \"kjob-test\") failed: "
                     "error: the SSO session has expired, run: cloud login")
    assert f"run {failing} token yourself to see why" in r.err
    assert "noise" not in r.err and "ERROR:root" not in r.err


def test_an_exec_plugin_that_hands_out_a_token_is_used(kube, run_kjob, tmp_path):
    credential = {"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential", "status": {"token": kube.token}}
    working = plugin(tmp_path, f"echo '{json.dumps(credential)}'\n")
    r = run_kjob("list", "--kubeconfig", str(exec_kubeconfig(kube, tmp_path, working)))
    assert (r.code, r.err) == (0, "")
