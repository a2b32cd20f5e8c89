"""A job that a GitOps tool applied: the spec hash does not depend on the namespace (so
`kjob submit -n NS` agrees with what Argo CD / Flux applied from `kjob render`), and
status/delete name the tool (kjob.cluster.gitops)."""

from __future__ import annotations

import pytest

from kjob import names
from kjob.cluster.backend import ClusterBackend
from kjob.cluster.gitops import gitops_owner
from kjob.cluster.status import job_status
from kjob.render.manifests import render_objects
from kjob.report import format_status
from kjob.spec.load import load_spec, with_namespace


def spec_hash(objects: list[dict]) -> str:
    return next(o for o in objects if o["kind"] == "MPIJob")["metadata"]["annotations"][names.SPEC_HASH]


def test_spec_hash_does_not_depend_on_the_namespace():
    spec = load_spec("examples/smoke.yaml")
    rendered = render_objects(spec)  # what `kjob render` writes (manifests/examples/smoke)
    elsewhere = render_objects(with_namespace(spec, "g1"))  # what `kjob submit -n g1` sends
    assert spec_hash(elsewhere) == spec_hash(rendered)
    with open("manifests/examples/smoke/mpijob-smoke.yaml", encoding="utf-8") as f:
        assert f"{names.SPEC_HASH}: {spec_hash(elsewhere)}" in f.read()


def managed(manager: str, operation: str = "Apply") -> dict:
    return {"manager": manager, "operation": operation, "apiVersion": "kubeflow.org/v2beta1", "fieldsType": "FieldsV1"}


@pytest.mark.parametrize(("metadata", "owner"), [
    ({"managedFields": [managed("argocd-controller")]}, "Argo CD"),
    ({"annotations": {"argocd.argoproj.io/tracking-id": "training:kubeflow.org/MPIJob:g1/smoke"}}, 'Argo CD (Application "training")'),
    ({"labels": {"kustomize.toolkit.fluxcd.io/name": "apps", "kustomize.toolkit.fluxcd.io/namespace": "flux-system"},
      "managedFields": [managed("kustomize-controller")]}, "Flux (Kustomization flux-system/apps)"),
    ({"labels": {"helm.toolkit.fluxcd.io/name": "train", "helm.toolkit.fluxcd.io/namespace": "g1"}}, "Flux (HelmRelease g1/train)"),
    ({"managedFields": [managed("helm-controller")]}, "Flux"),
    # kjob's own labels (app.kubernetes.io/instance is also Argo CD's tracking label) and
    # managers that apply by hand are no GitOps tool.
    ({"labels": {"app.kubernetes.io/instance": "smoke"}, "managedFields": [managed("kubectl"), managed("OpenAPI-Generator", "Update")]}, None),
])
def test_gitops_owner_from_field_managers_labels_and_tracking_annotation(metadata, owner):
    job = {"kind": "MPIJob", "metadata": {"name": "smoke", "namespace": "g1", **metadata}}
    found = gitops_owner(job)
    assert (str(found) if found else None) == owner


def test_status_and_delete_say_that_argo_cd_will_put_the_job_back(kube):
    backend = ClusterBackend()
    applied = render_objects(load_spec("examples/smoke.yaml"))  # as Argo CD applies it, tracking annotation added
    applied[0]["metadata"]["annotations"]["argocd.argoproj.io/tracking-id"] = "training:kubeflow.org/MPIJob:default/smoke"
    backend.create_job(applied)
    st = backend.status("smoke")
    assert st.managed_by == 'Argo CD (Application "training")'
    assert 'Managed:   by Argo CD (Application "training") (a delete lasts until its next sync)' in format_status(st).splitlines()
    assert backend.delete("smoke", now=True).endswith(
        '; Argo CD (Application "training") applied this job and will recreate it on its next sync unless its manifest leaves Git')


def test_a_job_nobody_else_manages_says_nothing_of_gitops():
    st = job_status({"kind": "MPIJob", "metadata": {"name": "j", "namespace": "n"}}, [], [])
    assert st.managed_by is None and "Managed" not in format_status(st)
