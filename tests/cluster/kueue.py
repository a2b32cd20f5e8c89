"""Kueue (sigs.k8s.io/kueue v0.19.2, build.sh --set kueue) started into a running
ControlPlane, as the other controllers run: a process on 127.0.0.1 under the control
plane's supervision and watchdog (ControlPlane._spawn), stopped with it.

What a Kueue Deployment gets from its manifests and cert-manager, the harness does here:
- a configuration file: internal certificate management off, the webhook's serving
  certificate (signed by the harness CA, pki.py) in a folder of this control plane (also
  its metrics certificate, at the fixed path Kueue reads it from, in a mount namespace of
  its own), free ports for the webhook, metrics and health probes, leader election off,
  and the integrations of the job kinds whose CRDs the cluster serves. Its visibility API
  is off (see start());
- the CRDs' conversion webhooks (the five patches Kueue's crd kustomization applies) and
  its admission webhooks (its config/components/webhook manifests), each pointed at
  https://127.0.0.1:<webhook port><the manifest's own path> with the harness CA. Only the
  webhooks of kinds this Kueue manages are installed: Kueue serves no handler for a
  framework it does not integrate, and a webhook with failurePolicy Fail and no handler
  would refuse every such object (batch/v1 Jobs, Pods) in the cluster.

Every wait is on a condition: Kueue's /readyz (its webhook server has its certificate and
listens), then a server-side dry run of a queued MPIJob coming back suspended (the API
server calls Kueue's mutating webhook).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import requests
import yaml

from builds import hold
from controlplane import ControlPlane, free_port
from pki import signed
from rest import ApiError
from waiting import wait_for

KUEUE_NAMESPACE = "kueue-system"
GROUP = "kueue.x-k8s.io"
API = f"/apis/{GROUP}/v1beta2"
# Integrations (Kueue's framework names, config/components/manager's list) -> the CRD each
# needs. A framework is enabled only when its CRD is installed.
FRAMEWORKS = {"kubeflow.org/mpijob": "mpijobs.kubeflow.org", "kubeflow.org/pytorchjob": "pytorchjobs.kubeflow.org",
              "trainer.kubeflow.org/trainjob": "trainjobs.trainer.kubeflow.org"}
# Kueue's metrics certificate folder, fixed in its source (cmd/kueue/main.go metricsCertPath).
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")
# What the tests' queues are called (conftest.py's `kueue` fixture creates them).
FLAVOR = "kwok"
CLUSTER_QUEUE = "kjob-test"


class Kueue:
    """start() runs Kueue in `plane` (whose processes stop it); `built` is build.sh's
    folder of the kueue set."""

    def __init__(self, plane: ControlPlane, built: Path) -> None:
        self.plane, self.built = plane, built
        self.root = plane.root / "kueue"
        self.api = plane.api
        self.ports: dict[str, int] = {}
        self.frameworks: list[str] = []
        self.build_lock: int | None = None

    def start(self) -> "Kueue":
        self.root.mkdir(parents=True, exist_ok=True)
        self.build_lock = hold(self.built)
        self.ports = {name: free_port() for name in ("webhook", "metrics", "health")}
        certs = self.root / "certs"
        certs.mkdir(exist_ok=True)
        pki = self.plane.pki
        crt, key = signed(self.root, "webhook", "/CN=kueue-webhook", (pki.ca_crt, pki.ca_key), usage="serverAuth",
                          sans="IP:127.0.0.1,DNS:localhost")
        # controller-runtime's webhook server reads these two names from its certDir.
        (certs / "tls.crt").write_bytes(crt.read_bytes())
        (certs / "tls.key").write_bytes(key.read_bytes())
        self.ca_bundle = base64.b64encode(pki.ca_crt.read_bytes()).decode()
        self.api.create("/api/v1/namespaces", {"metadata": {"name": KUEUE_NAMESPACE}}, exist_ok=True)
        self._install_crds()
        self.frameworks = [f for f, crd in FRAMEWORKS.items() if self.plane._crd_established(crd)]
        config = self.root / "config.yaml"
        p = self.ports
        config.write_text(yaml.safe_dump({
            "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
            "namespace": KUEUE_NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{p['health']}"},
            "metrics": {"bindAddress": f"127.0.0.1:{p['metrics']}"},
            "webhook": {"port": p["webhook"], "host": "127.0.0.1", "certDir": str(certs)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "integrations": {"frameworks": self.frameworks},
        }, sort_keys=False))
        # Kueue reads its metrics serving certificate from a fixed path (cmd/kueue/main.go
        # metricsCertPath) when it does not manage certificates itself, and exits without
        # one. As training-operator's, it runs in a mount namespace of its own where that
        # path is this Kueue's certificate folder, so clusters do not share it.
        METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)
        self.plane._spawn("kueue", [
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", 'mount --bind "$1" "$2" && shift 2 && exec "$@"', "kueue", str(certs), str(METRICS_CERT_DIR),
            str(self.built / "bin" / "kueue"), f"--config={config}", "--zap-log-level=2",
            # Its visibility API (positions in the queues) is an aggregated API: the API
            # server reaches it only through a Service's endpoints, which may not be
            # 127.0.0.1 here. Off, rather than serving on a fixed certificate path
            # (/visibility) nobody can reach; kjob then shows no position.
            "--feature-gates=VisibilityOnDemand=false"], env={"KUBECONFIG": str(self.plane.kubeconfig)})
        url = f"http://127.0.0.1:{p['health']}/readyz"
        wait_for("Kueue /readyz", lambda: requests.get(url, timeout=2).status_code == 200, 90,
                 alive=self.plane.check_alive, interval=0.25)
        self._install_webhooks()
        wait_for("Kueue's MPIJob webhook suspends a queued MPIJob", self._suspends, 60, alive=self.plane.check_alive, interval=0.25)
        return self

    def stop(self) -> None:
        """Let go of the build folder; the process stops with the control plane."""
        if self.build_lock is not None:
            os.close(self.build_lock)
            self.build_lock = None

    # -- CRDs and webhooks ------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.ports['webhook']}{path}"

    def _install_crds(self) -> None:
        conversion = {}
        for patch in sorted((self.built / "crd-conversion").glob("*.yaml")):
            doc = yaml.safe_load(patch.read_text())
            hook = doc["spec"]["conversion"]["webhook"]
            conversion[doc["metadata"]["name"]] = {
                "strategy": "Webhook",
                "webhook": {"conversionReviewVersions": hook["conversionReviewVersions"],
                            "clientConfig": {"url": self._url(hook["clientConfig"]["service"]["path"]), "caBundle": self.ca_bundle}}}
        names = []
        for path in sorted((self.built / "crds").glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                name = doc["metadata"]["name"]
                if name in conversion:
                    doc["spec"]["conversion"] = conversion[name]
                self.api.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", doc, exist_ok=True)
                names.append(name)
        for name in names:
            wait_for(f"CRD {name} Established", lambda name=name: self.plane._crd_established(name), 30, alive=self.plane.check_alive)

    def _managed(self, rule: dict) -> bool:
        """Whether Kueue serves the webhook of this rule: its own kinds, and the job kinds
        of the frameworks it integrates."""
        if rule["apiGroups"] == [GROUP]:
            return True
        kinds = {(f.split("/")[0], f.split("/")[1] + "s") for f in self.frameworks}
        return all((g, r) in kinds for g in rule["apiGroups"] for r in rule["resources"])

    def _install_webhooks(self) -> None:
        plurals = {"MutatingWebhookConfiguration": "mutatingwebhookconfigurations",
                   "ValidatingWebhookConfiguration": "validatingwebhookconfigurations"}
        for doc in yaml.safe_load_all((self.built / "webhooks" / "kueue.yaml").read_text()):
            if not doc:
                continue
            hooks = []
            for hook in doc["webhooks"]:
                if not all(self._managed(rule) for rule in hook["rules"]):
                    continue
                hook["clientConfig"] = {"url": self._url(hook["clientConfig"]["service"]["path"]), "caBundle": self.ca_bundle}
                hooks.append(hook)
            doc["webhooks"] = hooks
            doc["metadata"] = {"name": f"kueue-{doc['metadata']['name']}"}
            self.api.create(f"/apis/admissionregistration.k8s.io/v1/{plurals[doc['kind']]}", doc)

    def _suspends(self) -> bool:
        """A server-side dry run of a queued MPIJob: True once Kueue's mutating webhook has
        suspended it (the API server has loaded the webhook configuration)."""
        job = {"apiVersion": "kubeflow.org/v2beta1", "kind": "MPIJob",
               "metadata": {"name": "kueue-probe", "labels": {"kueue.x-k8s.io/queue-name": "none"}},
               "spec": {"mpiReplicaSpecs": {"Launcher": {"replicas": 1, "template": {"spec": {"containers": [{"name": "l", "image": "x"}]}}}}}}
        try:
            out = self.api.request("POST", "/apis/kubeflow.org/v2beta1/namespaces/default/mpijobs", job, params={"dryRun": "All"})
        except ApiError:
            return False
        return bool(out.get("spec", {}).get("runPolicy", {}).get("suspend"))

    # -- queues -----------------------------------------------------------------------------------
    def create_queues(self, quota: dict[str, str]) -> None:
        """A ResourceFlavor of the kwok nodes and the ClusterQueue CLUSTER_QUEUE over it, open
        to every namespace, with `quota` (resource -> nominal quota), preempting lower
        priorities within itself."""
        self.api.create(f"{API}/resourceflavors", {"apiVersion": f"{GROUP}/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}, "spec": {"nodeLabels": {"type": "kwok"}}}, exist_ok=True)
        self.api.create(f"{API}/clusterqueues", {"apiVersion": f"{GROUP}/v1beta2", "kind": "ClusterQueue", "metadata": {"name": CLUSTER_QUEUE}, "spec": {
            "namespaceSelector": {},
            "preemption": {"withinClusterQueue": "LowerPriority"},
            "resourceGroups": [{"coveredResources": list(quota), "flavors": [
                {"name": FLAVOR, "resources": [{"name": r, "nominalQuota": q} for r, q in quota.items()]}]}]}}, exist_ok=True)
        wait_for(f"ClusterQueue {CLUSTER_QUEUE} Active", lambda: self._active(f"{API}/clusterqueues/{CLUSTER_QUEUE}"), 30,
                 alive=self.plane.check_alive, interval=0.2)

    def clear(self, namespace: str) -> None:
        """Delete the namespace's MPIJobs, PyTorchJobs and TrainJobs and wait until their
        Workloads (owned by them: the garbage collector's) are gone."""
        for plural, group_version in (("mpijobs", "kubeflow.org/v2beta1"), ("pytorchjobs", "kubeflow.org/v1"),
                                      ("trainjobs", "trainer.kubeflow.org/v1alpha1")):
            path = f"/apis/{group_version}/namespaces/{namespace}/{plural}"
            for job in self.api.items(path):
                self.api.delete(f"{path}/{job['metadata']['name']}", propagationPolicy="Background")
        wait_for(f"the Workloads of {namespace} gone", lambda: not self.workloads(namespace), 60, alive=self.plane.check_alive, interval=0.2)

    def wait_idle(self) -> None:
        """Until the ClusterQueue holds no Workload: an earlier test's jobs go with its
        namespace, a moment after the test, and would hold quota or a place in the queue."""
        def idle() -> bool:
            st = (self.api.get(f"{API}/clusterqueues/{CLUSTER_QUEUE}") or {}).get("status", {})
            return all(st.get(k, 0) == 0 for k in ("pendingWorkloads", "reservingWorkloads", "admittedWorkloads"))
        try:
            wait_for(f"ClusterQueue {CLUSTER_QUEUE} idle", idle, 120, alive=self.plane.check_alive, interval=0.2)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; Workloads: {self.describe(None)}") from None

    def create_local_queue(self, namespace: str, name: str) -> None:
        self.api.create(f"{API}/namespaces/{namespace}/localqueues", {"apiVersion": f"{GROUP}/v1beta2", "kind": "LocalQueue", "metadata": {"name": name}, "spec": {"clusterQueue": CLUSTER_QUEUE}})
        wait_for(f"LocalQueue {namespace}/{name} Active", lambda: self._active(f"{API}/namespaces/{namespace}/localqueues/{name}"), 30,
                 alive=self.plane.check_alive, interval=0.2)

    def _active(self, path: str) -> bool:
        obj = self.api.get(path) or {}
        return any(c["type"] == "Active" and c["status"] == "True" for c in obj.get("status", {}).get("conditions", []))

    def workloads(self, namespace: str | None) -> list[dict]:
        """The Workloads of a namespace, or of all (None)."""
        return self.api.items(f"{API}/namespaces/{namespace}/workloads" if namespace else f"{API}/workloads")

    def describe(self, namespace: str | None) -> str:
        """The Workloads' conditions (of a namespace, or all: None), for a timeout's message."""
        return json.dumps([{f"{w['metadata']['namespace']}/{w['metadata']['name']}": [
            (c["type"], c["status"], c.get("reason"), c.get("message")) for c in w.get("status", {}).get("conditions", [])]}
            for w in self.workloads(namespace)])
