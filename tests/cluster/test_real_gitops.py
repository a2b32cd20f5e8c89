"""Issue 24 point 6 on the real control plane: the committed manifests/examples/smoke/
applied as Argo CD applies it (server-side apply, field manager argocd-controller, with
-n), then `kjob submit examples/smoke.yaml -n NS` sees the same job, and status/delete name
the tool that will put it back."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from waiting import time_scale

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120 * time_scale())]

EXAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "smoke"


def apply_server_side(real, manager: str, labels: dict | None = None) -> None:
    """`kubectl apply -k manifests/examples/smoke -n NS --server-side --field-manager=MANAGER`:
    the kustomization lists the one MPIJob, applied as an apply patch (JSON is YAML)."""
    kustomization = yaml.safe_load((EXAMPLE / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        obj = yaml.safe_load((EXAMPLE / resource).read_text())
        obj["metadata"]["namespace"] = real.ns
        obj["metadata"].setdefault("labels", {}).update(labels or {})
        real.api.request("PATCH", real.path("mpijobs", obj["metadata"]["name"], group="kubeflow.org/v2beta1"), obj,
                         params={"fieldManager": manager, "force": "true"}, content_type="application/apply-patch+yaml")


def test_a_job_argo_cd_applied_is_the_same_job_and_delete_says_it_comes_back(real, run_kjob):
    apply_server_side(real, "argocd-controller")
    r = run_kjob("submit", "examples/smoke.yaml", "-n", real.ns)
    assert r.code == 0 and "is already submitted with this spec" in r.out, r
    st = run_kjob("status", "smoke", "-n", real.ns)
    assert st.code == 0 and "Managed:   by Argo CD (a delete lasts until its next sync)" in st.out, st
    r = run_kjob("delete", "smoke", "-n", real.ns, "--now")
    assert r.code == 0, r
    assert r.out.rstrip().endswith("; Argo CD applied this job and will recreate it on its next sync unless its manifest leaves Git"), r


def test_a_job_flux_applied_names_its_kustomization(real, run_kjob):
    apply_server_side(real, "kustomize-controller", {"kustomize.toolkit.fluxcd.io/name": "training",
                                                     "kustomize.toolkit.fluxcd.io/namespace": "flux-system"})
    st = run_kjob("status", "smoke")
    assert "Managed:   by Flux (Kustomization flux-system/training)" in st.out, st
    r = run_kjob("delete", "smoke", "--now")
    assert r.code == 0 and "Flux (Kustomization flux-system/training) applied this job and will recreate it" in " ".join(r.out.split()), r
