"""Kubeflow Trainer v2 and JobSet, started into a running control plane (controlplane.py
`ControlPlane.start_trainer`), with their admission webhooks served on 127.0.0.1.

Both controllers, left to themselves, run a certificate controller that issues a serving
certificate for their in-cluster Service and writes its CA into their webhook
configurations; the harness has no Service routing (no kube-proxy), so both are switched
off in their config files and the harness plays that part:

- one serving certificate for 127.0.0.1, signed by the harness CA (pki.py);
- JobSet (`internalCertManagement.enable: false`) reads it from `webhook.certDir` (and
  serves its metrics with it: without internal certificates it wants files there too);
- trainer-controller-manager (`certManagement.enable: false`) has no cert-dir setting: it
  uses controller-runtime's default, `$TMPDIR/k8s-webhook-server/serving-certs`, so it runs
  with a TMPDIR of its own (what its Deployment does with a volume mount);
- their Mutating/ValidatingWebhookConfigurations are the ones their install ships (copied
  by build.sh from the module cache into <trainer build>/webhooks/, with the install's
  kustomize patches applied here: names, JobSet's pod webhooks and their objectSelectors),
  each `clientConfig.service` replaced by `url: https://127.0.0.1:<port><path>` and the
  harness CA as caBundle.

JobSet's mutating webhook is not optional: its defaulting is what sets completionMode
Indexed, restartPolicy, successPolicy, startupPolicy and the pods' DNS hostnames.

Every port (webhook, health, metrics) is a free one picked at start, so clusters can run
side by side. Readiness is a set of conditions: each leader lease held, /readyz answering,
and each webhook answering through the API server (a dry-run create it must have
defaulted or refused), never a fixed sleep.
"""

from __future__ import annotations

import base64
import copy
import shutil
from pathlib import Path

import requests
import yaml

from pki import signed
from rest import ApiError
from waiting import wait_for

TRAINER_NAMESPACE = "kubeflow-system"
JOBSET_NAMESPACE = "jobset-system"
# Leader election leases (namespace, name): the controllers reconcile only once they hold them.
TRAINER_LEASE = (TRAINER_NAMESPACE, "trainer.kubeflow.org")
JOBSET_LEASE = (JOBSET_NAMESPACE, "6d4f6a47.jobset.x-k8s.io")
# The namePrefix of each install's kustomization (JobSet's config/default): its webhook
# configurations are jobset-mutating-webhook-configuration etc., not kubebuilder's generic
# names, which other controllers' installs use too. The trainer's patches name its own.
NAME_PREFIX = {"jobset": "jobset-", "trainer": ""}
PROCESS_NAMES = ("jobset", "trainer-controller-manager")


def _json_pointer(doc, pointer: str):
    """(parent, key) of an RFC 6901 pointer into doc."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.lstrip("/").split("/")]
    parent = doc
    for p in parts[:-1]:
        parent = parent[int(p)] if isinstance(parent, list) else parent[p]
    last = parts[-1]
    return parent, (int(last) if isinstance(parent, list) else last)


def apply_patch(doc: dict, ops: list[dict]) -> dict:
    """The JSON-patch operations kustomize applies in their installs: add and replace.
    Anything else raises, so a new upstream patch is looked at, not silently skipped."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parent, key = _json_pointer(doc, op["path"])
        if op["op"] == "replace" or (op["op"] == "add" and not isinstance(parent, list)):
            parent[key] = copy.deepcopy(op["value"])
        elif op["op"] == "add":
            parent.insert(key, copy.deepcopy(op["value"]))
        else:
            raise ValueError(f"unsupported patch operation {op['op']!r} at {op['path']}")
    return doc


def webhook_configurations(folder: Path, component: str, port: int, ca_bundle: str) -> list[dict]:
    """The component's webhook configurations as its install makes them (manifests.yaml
    with each patch file `<kind>.patch.yaml` applied, its name prefix), pointed at
    https://127.0.0.1:port."""
    docs = [d for d in yaml.safe_load_all((folder / component / "manifests.yaml").read_text()) if d]
    out = []
    for doc in docs:
        patch = folder / component / f"{doc['kind']}.patch.yaml"
        if patch.exists():
            doc = apply_patch(doc, yaml.safe_load(patch.read_text()))
        for hook in doc["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle}
        name = NAME_PREFIX[component] + doc["metadata"]["name"]
        out.append({"apiVersion": doc["apiVersion"], "kind": doc["kind"], "metadata": {"name": name},
                    "webhooks": doc["webhooks"]})
    return out


def jobset_config(*, port: int, health: int, metrics: int, cert_dir: Path) -> dict:
    return {
        "apiVersion": "config.jobset.x-k8s.io/v1alpha1", "kind": "Configuration",
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": port, "certDir": str(cert_dir)},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics}", "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": True, "resourceNamespace": JOBSET_LEASE[0], "resourceName": JOBSET_LEASE[1]},
    }


def trainer_config(*, port: int, health: int, metrics: int) -> dict:
    return {
        "apiVersion": "config.trainer.kubeflow.org/v1alpha1", "kind": "Configuration",
        "certManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": port},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics}", "secureServing": False},
        "leaderElection": {"leaderElect": True, "resourceNamespace": TRAINER_LEASE[0], "resourceName": TRAINER_LEASE[1],
                           "leaseDuration": "15s", "renewDeadline": "10s", "retryPeriod": "2s"},
    }


# Dry-run objects the webhooks must answer: JobSet's defaulter fills completionMode in; the
# trainer's validator refuses a TrainJob whose runtime does not exist (its message is
# the proof that it, not the schema, answered).
PROBE_JOBSET = {
    "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": {"name": "kjob-harness-probe"},
    "spec": {"replicatedJobs": [{"name": "probe", "replicas": 1, "template": {"spec": {"template": {"spec": {
        "containers": [{"name": "probe", "image": "kjob.invalid/probe"}]}}}}}]},
}
PROBE_TRAINJOB = {
    "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": {"name": "kjob-harness-probe"},
    "spec": {"runtimeRef": {"name": "kjob-harness-no-such-runtime", "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"}},
}
TRAINER_PROBE_ANSWER = "specified clusterTrainingRuntime must be created before the TrainJob is created"


def start(plane, built: Path, free_port) -> None:
    """Install the trainer set's CRDs into `plane` and start JobSet, then the trainer, each
    with its webhooks registered and answering. `built` is the trainer set's build folder
    (bin/, crds/, webhooks/); the caller holds it in use."""
    api, root, pki = plane.api, plane.root / "trainer-v2", plane.pki
    root.mkdir(parents=True, exist_ok=True)
    plane.install_crds(built / "crds")
    for ns in (TRAINER_NAMESPACE, JOBSET_NAMESPACE):
        api.create("/api/v1/namespaces", {"metadata": {"name": ns}}, exist_ok=True)
    ports = {name: free_port() for name in ("jobset-webhook", "jobset-health", "jobset-metrics",
                                            "trainer-webhook", "trainer-health", "trainer-metrics")}
    plane.ports.update(ports)
    crt, key = signed(root, "webhook", "/CN=kjob-test-webhooks", (pki.ca_crt, pki.ca_key), usage="serverAuth",
                      sans="IP:127.0.0.1,DNS:localhost")
    ca_bundle = base64.b64encode(pki.ca_crt.read_bytes()).decode()
    env = {"KUBECONFIG": str(plane.kubeconfig)}

    jobset_certs = root / "jobset-certs"
    jobset_certs.mkdir(exist_ok=True)
    # controller-runtime's trainer has no cert-dir setting: its TMPDIR holds the default folder.
    trainer_tmp = root / "trainer-tmp"
    trainer_certs = trainer_tmp / "k8s-webhook-server" / "serving-certs"
    trainer_certs.mkdir(parents=True, exist_ok=True)
    for d in (jobset_certs, trainer_certs):
        shutil.copy(crt, d / "tls.crt")
        shutil.copy(key, d / "tls.key")

    (root / "jobset.yaml").write_text(yaml.safe_dump(jobset_config(
        port=ports["jobset-webhook"], health=ports["jobset-health"], metrics=ports["jobset-metrics"], cert_dir=jobset_certs)))
    plane.spawn("jobset", [str(built / "bin" / "jobset"), f"--config={root / 'jobset.yaml'}", "--zap-devel=false"], env)
    _ready(plane, "jobset", JOBSET_LEASE, ports["jobset-health"])
    for obj in webhook_configurations(built / "webhooks", "jobset", ports["jobset-webhook"], ca_bundle):
        _register(api, obj)
    wait_for("JobSet's mutating webhook answers (a dry-run JobSet defaulted to completionMode Indexed)",
             lambda: _dry_run_jobset(api), 60, alive=plane.check_alive, interval=0.25)

    (root / "trainer.yaml").write_text(yaml.safe_dump(trainer_config(
        port=ports["trainer-webhook"], health=ports["trainer-health"], metrics=ports["trainer-metrics"])))
    plane.spawn("trainer-controller-manager", [str(built / "bin" / "trainer-controller-manager"), f"--config={root / 'trainer.yaml'}"],
                {**env, "TMPDIR": str(trainer_tmp)})
    _ready(plane, "trainer-controller-manager", TRAINER_LEASE, ports["trainer-health"])
    for obj in webhook_configurations(built / "webhooks", "trainer", ports["trainer-webhook"], ca_bundle):
        _register(api, obj)
    wait_for("the trainer's TrainJob webhooks answer (a dry-run TrainJob of a missing runtime refused by them)",
             lambda: _dry_run_trainjob(api), 60, alive=plane.check_alive, interval=0.25)


def _ready(plane, name: str, lease: tuple[str, str], health_port: int) -> None:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{lease[0]}/leases/{lease[1]}"
    wait_for(f"{name} leads (lease {lease[0]}/{lease[1]})", lambda: (plane.api.get(path) or {}).get("spec", {}).get("holderIdentity"),
             90, alive=plane.check_alive, interval=0.25)
    url = f"http://127.0.0.1:{health_port}/readyz"
    wait_for(f"{name} /readyz", lambda: requests.get(url, timeout=2).status_code == 200, 60, alive=plane.check_alive, interval=0.25)


def _register(api, obj: dict) -> None:
    plural = {"MutatingWebhookConfiguration": "mutatingwebhookconfigurations",
              "ValidatingWebhookConfiguration": "validatingwebhookconfigurations"}[obj["kind"]]
    path = f"/apis/admissionregistration.k8s.io/v1/{plural}"
    api.delete(f"{path}/{obj['metadata']['name']}")  # a restart registers its new port
    api.create(path, obj)


def _dry_run_jobset(api) -> bool:
    got = api.request("POST", "/apis/jobset.x-k8s.io/v1alpha2/namespaces/default/jobsets", PROBE_JOBSET, params={"dryRun": "All"})
    return got["spec"]["replicatedJobs"][0]["template"]["spec"].get("completionMode") == "Indexed"


def _dry_run_trainjob(api) -> bool:
    r = api.session.post(api.server + "/apis/trainer.kubeflow.org/v1alpha1/namespaces/default/trainjobs", json=PROBE_TRAINJOB,
                         params={"dryRun": "All"}, timeout=30)
    if r.status_code < 300:
        raise RuntimeError("a TrainJob of a missing runtime was admitted: the trainer's validating webhook did not run (yet)")
    if TRAINER_PROBE_ANSWER in r.text:
        return True
    raise ApiError(r.status_code, r.text)
