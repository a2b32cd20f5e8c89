"""What trainer_v2.py makes of upstream's webhook manifests and patches, without a build:
the kustomize JSON patches applied as kustomize applies them, every webhook pointed at
127.0.0.1 with the CA, the install's names. (The controllers answering on those
configurations is test_real_trainer_v2.py's.)"""

from __future__ import annotations

import pytest
import yaml

from trainer_v2 import apply_patch, jobset_config, trainer_config, webhook_configurations

MANIFESTS = """
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: mutating-webhook-configuration
webhooks:
- name: mjobset.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /mutate-jobset}}
- name: mpod.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /mutate--v1-pod}}
"""
PATCH = """
- op: replace
  path: /webhooks/1
  value:
    name: mpod.kb.io
    clientConfig: {service: {name: webhook-service, namespace: system, path: /mutate--v1-pod}}
    objectSelector: {matchExpressions: [{key: jobset.sigs.k8s.io/jobset-name, operator: Exists}]}
"""


def test_add_and_replace_as_kustomize_applies_them_and_nothing_else():
    doc = {"a": {"b": 1}, "l": [1, 2]}
    got = apply_patch(doc, [{"op": "replace", "path": "/a/b", "value": 2}, {"op": "add", "path": "/a/c", "value": 3},
                            {"op": "add", "path": "/l/1", "value": 9}, {"op": "replace", "path": "/l/0", "value": 0}])
    assert got == {"a": {"b": 2, "c": 3}, "l": [0, 9, 2]}
    assert doc == {"a": {"b": 1}, "l": [1, 2]}  # the input stays as it was
    with pytest.raises(ValueError, match="unsupported patch operation 'remove'"):
        apply_patch(doc, [{"op": "remove", "path": "/a"}])


def test_webhooks_point_at_loopback_with_the_ca_under_the_install_s_names(tmp_path):
    (tmp_path / "jobset").mkdir()
    (tmp_path / "jobset" / "manifests.yaml").write_text(MANIFESTS)
    (tmp_path / "jobset" / "MutatingWebhookConfiguration.patch.yaml").write_text(PATCH)
    [mutating] = webhook_configurations(tmp_path, "jobset", 4321, "Q0E=")
    assert mutating["metadata"] == {"name": "jobset-mutating-webhook-configuration"}
    assert [w["clientConfig"] for w in mutating["webhooks"]] == [
        {"url": "https://127.0.0.1:4321/mutate-jobset", "caBundle": "Q0E="},
        {"url": "https://127.0.0.1:4321/mutate--v1-pod", "caBundle": "Q0E="}]
    assert mutating["webhooks"][1]["objectSelector"]["matchExpressions"][0]["key"] == "jobset.sigs.k8s.io/jobset-name"
    assert "objectSelector" not in mutating["webhooks"][0]


def test_config_files_switch_certificate_management_off_and_bind_loopback(tmp_path):
    js = yaml.safe_load(yaml.safe_dump(jobset_config(port=1, health=2, metrics=3, cert_dir=tmp_path)))
    assert js["internalCertManagement"] == {"enable": False}
    assert js["webhook"] == {"host": "127.0.0.1", "port": 1, "certDir": str(tmp_path)}
    assert js["health"]["healthProbeBindAddress"] == "127.0.0.1:2" and js["metrics"]["bindAddress"] == "127.0.0.1:3"
    tr = trainer_config(port=4, health=5, metrics=6)
    assert tr["certManagement"] == {"enable": False}
    assert tr["webhook"] == {"host": "127.0.0.1", "port": 4}
    assert tr["health"]["healthProbeBindAddress"] == "127.0.0.1:5" and tr["metrics"]["bindAddress"] == "127.0.0.1:6"
