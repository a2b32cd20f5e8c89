"""How kjob tells the API server's 403s apart: RBAC's denial is exit 4 naming what to
ask for; an admission webhook's or an admission policy's denial (also 403 Forbidden, as
Trainer v2's validating webhook answers, seen on the real one in
tests/cluster/test_real_trainjob.py) refuses the object, not the user: exit 2, with the
webhook's own words."""

from __future__ import annotations

import json

import pytest

from kjob.cluster.api import HttpError, Kube, translate
from kjob.errors import Forbidden, InvalidInput


def status(message: str) -> str:
    return json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": "Forbidden", "code": 403})


@pytest.fixture
def kube() -> Kube:
    return Kube(None, "https://127.0.0.1:6443", "ctx", "team")


WEBHOOK = ('admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request: spec.runtimePatches: Invalid value: '
           '"array": must not have replicated job that doesn\'t exist in the runtime job template')
POLICY = ("trainjobs.trainer.kubeflow.org \"tj\" is forbidden: ValidatingAdmissionPolicy 'no-gpus' with binding 'no-gpus' "
          "denied request: no GPUs in this namespace")


@pytest.mark.parametrize("message", [WEBHOOK, POLICY], ids=["webhook", "policy"])
def test_an_admission_denial_is_a_refused_spec_not_a_permission(kube, message):
    e = translate(HttpError(403, status(message), "Forbidden"), kube=kube, verb="create", resource="trainjobs.trainer.kubeflow.org",
                  name="tj", namespace="team")
    assert isinstance(e, InvalidInput) and e.exit_code == 2
    assert e.message == f'the cluster\'s admission control refused to create trainjobs.trainer.kubeflow.org "tj" in namespace "team": {message}'
    assert "not RBAC" in e.hint


def test_rbacs_denial_stays_exit_4(kube):
    message = 'trainjobs.trainer.kubeflow.org is forbidden: User "system:serviceaccount:team:narrow" cannot create resource "trainjobs" in API group "trainer.kubeflow.org" in the namespace "team"'
    e = translate(HttpError(403, status(message), "Forbidden"), kube=kube, verb="create", resource="trainjobs.trainer.kubeflow.org",
                  name="tj", namespace="team")
    assert isinstance(e, Forbidden) and e.exit_code == 4
    assert e.message.startswith('forbidden: cannot create trainjobs "tj" in namespace "team" (context "ctx")'), e.message
