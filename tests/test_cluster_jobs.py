"""kjob.cluster (api, jobs, backend) against the test API server: configuration, preflight,
all-or-nothing submit, idempotent re-submit, retries, and error translation."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from kjob import names
from kjob.cluster.backend import ClusterBackend
from kjob.cluster.jobs import find_job, job_events, job_pods, pod_security_warnings
from kjob.errors import ClusterUnavailable, Conflict, Forbidden, InvalidInput, KjobError, NotFound
from kjob.render.manifests import render_objects
from kjob.spec.load import load_spec

from kubefake.exec import ExecReply


def objects(name: str = "smoke") -> list[dict]:
    objs = render_objects(load_spec("examples/smoke.yaml"))
    for o in objs:
        o["metadata"]["name"] = name
    return objs


def test_namespace_and_context_come_from_the_kubeconfig(kube, tmp_path):
    kube.create_namespace("team-a")
    path = kube.kubeconfig_variant(namespace="team-a", name="team-a")
    assert ClusterBackend(str(path)).namespace == "team-a"
    assert ClusterBackend(str(path), namespace="default").namespace == "default"
    with pytest.raises(InvalidInput, match=r'context "prod" not found in .*team-a \(available: kubefake\)'):
        ClusterBackend(str(path), context="prod")
    with pytest.raises(InvalidInput, match="kubeconfig .*missing does not exist"):
        ClusterBackend(str(tmp_path / "missing"))
    with pytest.raises(InvalidInput, match=f"kubeconfig {tmp_path} is not a file"):
        ClusterBackend(str(tmp_path))


def test_kubeconfig_variable_naming_only_missing_files_says_so(kube, monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "gone"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ClusterUnavailable, match=r"\$KUBECONFIG names no existing file \(.*gone\)"):
        ClusterBackend()


def test_in_cluster_config_without_a_service_account_is_exit_3(kube, monkeypatch, tmp_path):
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ClusterUnavailable, match="no cluster configured"):
        ClusterBackend()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "1")
    with pytest.raises(ClusterUnavailable, match="cannot load the cluster configuration"):
        ClusterBackend()


def test_preflight_reports_every_problem_at_once(kube):
    kube.remove_crd("MPIJob")
    kube.deny("get", "pods/log")
    kube.deny("create", "pods/exec")
    backend = ClusterBackend()
    with pytest.raises(NotFound) as e:
        backend.create_job(objects())
    lines = e.value.message.splitlines()
    assert lines[0] == f'the MPIJob API (kubeflow.org/v2beta1 mpijobs) is not served by {kube.server} (context "kubefake"): mpi-operator v0.8 is not installed'
    assert 'forbidden: RBAC does not allow "get pods/log" in namespace "default" (context "kubefake")' in lines
    assert 'forbidden: RBAC does not allow "create pods/exec" in namespace "default" (context "kubefake")' in lines
    assert "kubectl apply --server-side -f https://raw.githubusercontent.com/kubeflow/mpi-operator/" in e.value.hint
    assert kube.list("MPIJob") == []


def test_submit_rolls_back_what_it_created_when_a_later_object_fails(kube):
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "smoke-config"}, "data": {"a": "b"}}
    kube.fault("create", "mpijobs", status=500)
    with pytest.raises(ClusterUnavailable, match=r"rolled back: deleted ConfigMap smoke-config\)$"):
        ClusterBackend().create_job([cm, *objects()])
    assert kube.get("ConfigMap", "smoke-config") is None and kube.get("MPIJob", "smoke") is None
    assert ClusterBackend().create_job([cm, *objects()]).created


def test_resubmit_is_idempotent_conflicts_on_change_and_replace_recreates(kube):
    backend = ClusterBackend()
    first = backend.create_job(objects())
    assert first.created and first.message == "MPIJob default/smoke created"
    stored = kube.get("MPIJob", "smoke")
    again = backend.create_job(objects())
    assert not again.created and again.message.startswith("MPIJob default/smoke is already submitted with this spec (sha256:")
    assert kube.get("MPIJob", "smoke")["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
    changed = objects()
    changed[0]["metadata"]["annotations"]["kjob.dev/spec-hash"] = "sha256:" + "0" * 64
    with pytest.raises(Conflict) as e:
        backend.create_job(changed)
    assert e.value.message.startswith('MPIJob "smoke" already exists in namespace "default" with a different spec (on the server: sha256:')
    assert e.value.exit_code == 6 and "--replace" in e.value.hint
    replaced = backend.create_job(changed, replace=True)
    assert replaced.message == "MPIJob default/smoke replaced"
    assert kube.get("MPIJob", "smoke")["metadata"]["uid"] != stored["metadata"]["uid"]


@pytest.mark.parametrize("state", ["Failed", "Succeeded"])
def test_resubmit_over_an_ended_job_is_a_conflict_until_replace_runs_it_again(kube, state):
    backend = ClusterBackend()
    backend.create_job(objects())
    kube.set_condition("smoke", state)
    ended = kube.get("MPIJob", "smoke")
    when = next(c["lastTransitionTime"] for c in ended["status"]["conditions"] if c["type"] == state)
    with pytest.raises(Conflict) as e:
        backend.create_job(objects())  # the very same spec: no longer a silent no-op
    assert e.value.exit_code == 6
    assert e.value.message == f"job smoke {state} at {when}; `--replace` runs it again (resuming from its latest checkpoint)"
    assert kube.get("MPIJob", "smoke")["metadata"]["uid"] == ended["metadata"]["uid"]
    again = backend.create_job(objects(), replace=True)
    assert again.created and again.message == "MPIJob default/smoke replaced"
    fresh = kube.get("MPIJob", "smoke")
    assert fresh["metadata"]["uid"] != ended["metadata"]["uid"] and not (fresh.get("status") or {}).get("conditions")


def test_transient_errors_are_retried_a_bounded_number_of_times(kube):
    kube.fault("get", "mpijobs", status=503, times=2)
    backend = ClusterBackend()
    backend.create_job(objects())
    assert backend.status("smoke").name == "smoke"
    fault = kube.fault("get", "mpijobs", status=503, times=-1)
    with pytest.raises(ClusterUnavailable) as e:
        backend.status("smoke")
    assert fault.hits == 4
    assert e.value.message.startswith(f'the Kubernetes API server {kube.server} (context "kubefake") is failing: 503 ')
    assert e.value.message.endswith('on get mpijobs "smoke" in namespace "default" after 4 attempts: injected fault: 503 for get mpijobs')


def test_create_is_not_retried_after_a_500(kube):
    fault = kube.fault("create", "mpijobs", status=500, times=-1)
    with pytest.raises(ClusterUnavailable):
        ClusterBackend().create_job(objects())
    assert fault.hits == 1


def test_delete_explains_the_pods_fate(kube):
    backend = ClusterBackend()
    backend.create_job(objects())
    kube.start_job("smoke")
    assert backend.delete("smoke", wait=True) == ("deleted MPIJob default/smoke: launcher not running (Pending): nothing to checkpoint; "
                                                  "its 3 pod(s) are deleted with it (they are owned by the job); all gone")
    assert kube.pods("smoke") == []
    backend.create_job(objects())
    kube.set_condition("smoke", "Succeeded")
    assert backend.delete("smoke") == "deleted MPIJob default/smoke: it had no pods left (cleanPodPolicy Running removed them when the job succeeded)"
    with pytest.raises(NotFound, match=r'^job "smoke" not found in namespace "default" on http://127.0.0.1:\d+ \(context "kubefake"\)$'):
        backend.delete("smoke")


def test_list_selects_kjob_jobs_across_namespaces_and_kinds(kube):
    kube.create_namespace("team-b")
    ClusterBackend().create_job(objects("one"))
    ClusterBackend(namespace="team-b").create_job(objects("two"))
    torch = render_objects(load_spec("examples/resnext50-torchrun.yaml"))
    ClusterBackend().create_job(torch)
    stranger = copy.deepcopy(objects("stranger"))
    stranger[0]["metadata"]["labels"] = {}
    ClusterBackend().create_job(stranger)
    here = ClusterBackend().list_jobs()
    assert [(j.name, j.kind) for j in here] == [("one", "MPIJob"), ("resnext50-torchrun", "PyTorchJob")]
    assert [(j.namespace, j.name) for j in ClusterBackend().list_jobs(all_namespaces=True)] == [("default", "one"), ("default", "resnext50-torchrun"), ("team-b", "two")]
    kube.remove_crd("PyTorchJob")
    assert [j.name for j in ClusterBackend().list_jobs()] == ["one"]


FAULTS = [
    dict(verb="get", resource="mpijobs", status=500, times=-1),
    dict(verb="get", resource="mpijobs", status=401),
    dict(verb="get", resource="mpijobs", status=403),
    dict(verb="get", resource="mpijobs", status=404),
    dict(verb="list", resource="pods", status=409),
    dict(verb="list", resource="pods", status=422),
    dict(verb="list", resource="events", status=429, times=-1),
    dict(verb="get", resource="pods/log", status=410),
    dict(verb="get", resource="pods/exec", status=500),
    dict(verb="get", resource="pods/exec", status=403),
    dict(verb="get", resource="pods", status=503, times=-1),
    dict(verb="*", resource="*", delay=0.3, times=-1),
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f"{f['verb']}-{f['resource']}-{f.get('status', 'delay')}")
def test_no_client_exception_escapes_the_library(kube, monkeypatch, fault):
    """Whatever the server does, the library raises KjobError subclasses only."""
    monkeypatch.setenv("KJOB_READ_TIMEOUT", "0.2")
    monkeypatch.setenv("KJOB_RETRIES", "2")
    backend = ClusterBackend()
    backend.create_job(objects())
    pods = kube.run_job("smoke")
    kube.append_log(pods[0], ["hello"])
    kube.exec.serve("default", pods[0], lambda argv: ExecReply())  # mpirun takes SIGUSR1 but does not stop
    kube.fault(**fault)
    from kjob.backend import LogOptions

    calls = [lambda: backend.status("smoke"), lambda: backend.list_jobs(), lambda: backend.logs("smoke", LogOptions(), lambda line: None),
             lambda: backend.create_job(objects()), lambda: backend.delete("smoke", grace=0.5)]
    for call in calls:
        try:
            call()
        except KjobError:
            pass
        except BaseException as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{type(e).__module__}.{type(e).__name__} escaped: {e}")


@pytest.mark.parametrize("server", ["http://127.0.0.1:1", "tls"])
def test_transport_errors_become_cluster_unavailable(kube, server):
    url = kube.server.replace("http://", "https://") if server == "tls" else server
    backend = ClusterBackend(str(kube.kubeconfig_variant(server=url)))
    with pytest.raises(ClusterUnavailable) as e:
        backend.status("smoke")
    assert e.value.message.startswith(f'cannot reach the Kubernetes API server {url} (context "kubefake"): ')
    assert isinstance(e.value.__cause__, Exception) and not isinstance(e.value.__cause__, KjobError)


def test_forbidden_names_the_verb_and_resource(kube):
    backend = ClusterBackend()
    backend.create_job(objects())
    kube.deny("list", "events")  # optional: status still works without Events
    assert backend.status("smoke").state == "Pending"
    kube.deny("list", "pods")
    with pytest.raises(Forbidden) as e:
        backend.status("smoke")
    assert e.value.message == ('forbidden: cannot list pods in namespace "default" (context "kubefake"): pods is forbidden: '
                               'User "kjob-test" cannot list resource "pods" in API group "" in the namespace "default"')
    assert names.JOB_KINDS["MPIJob"] == ("kubeflow.org/v2beta1", "mpijobs")


def test_which_transport_errors_are_retried():
    import urllib3.exceptions as u

    from kjob.cluster.api import _no_connection

    refused = u.MaxRetryError(None, "/x", u.NewConnectionError(None, "Connection refused"))
    assert _no_connection(refused, "GET") and _no_connection(refused, "POST")
    broken = u.ProtocolError("Connection aborted")
    assert _no_connection(broken, "GET") and not _no_connection(broken, "POST")  # a create may have happened
    assert not _no_connection(u.MaxRetryError(None, "/x", u.SSLError("certificate verify failed")), "GET")


# --- Pod Security admission: said at submit, since the operators create the pods -----------
def rendered_job(example: str) -> dict:
    return find_job(render_objects(load_spec(f"examples/{example}.yaml")))


def test_pod_security_warnings_of_the_examples():
    smoke, torchrun, resnest = rendered_job("smoke"), rendered_job("resnext50-torchrun"), rendered_job("resnest50")
    assert pod_security_warnings("restricted", "team", smoke) == []
    assert pod_security_warnings(None, "team", torchrun) == pod_security_warnings("privileged", "team", resnest) == []
    [init] = pod_security_warnings("restricted", "team", torchrun)
    assert init.startswith('namespace "team" enforces Pod Security "restricted", and training-operator v1.9 gives PyTorchJob '
                           "workers an init container (init-pytorch)")
    assert "--pytorch-init-container-template-file" in init and "`launcher: mpi`" in init
    assert pod_security_warnings("restricted", "team", resnest) == [
        'namespace "team" enforces Pod Security "restricted", which refuses nfs volumes (volume "data"): '
        "the pods will not be created; use a PersistentVolumeClaim for the data"]
    assert pod_security_warnings("baseline", "team", resnest) == []  # baseline refuses hostPath only


def test_pod_security_warnings_of_the_network_opt_ins():
    from kjob.spec.load import parse_spec

    text = Path("examples/smoke.yaml").read_text()
    both = find_job(render_objects(parse_spec(text + "capabilities: [IPC_LOCK, SYS_RESOURCE]\nhostNetwork: true\n")))
    for level in ("baseline", "restricted"):
        assert pod_security_warnings(level, "team", both) == [
            f'namespace "team" enforces Pod Security "{level}", which refuses hostNetwork: the trainer pods will not be '
            "created; run the job in a namespace labelled pod-security.kubernetes.io/enforce=privileged, or use a "
            "secondary network (podAnnotations) instead",
            f'namespace "team" enforces Pod Security "{level}", which refuses the capabilities IPC_LOCK, SYS_RESOURCE: '
            "the trainer pods will not be created; run the job in a namespace labelled "
            "pod-security.kubernetes.io/enforce=privileged, or leave capabilities out"]
    assert pod_security_warnings("privileged", "team", both) == []
    # Annotations and extended resources are no Pod Security matter.
    annotated = find_job(render_objects(parse_spec(text.replace("limits: {memory: 4Gi}", "limits: {memory: 4Gi, rdma/hca: 1}")
                                                   + "podAnnotations: {k8s.v1.cni.cncf.io/networks: ib}\n")))
    assert "rdma/hca" in str(annotated)
    assert pod_security_warnings("restricted", "team", annotated) == []


def test_submit_into_a_restricted_namespace_says_what_admission_will_refuse(kube, run_kjob):
    kube._call(lambda s: s.put("namespaces", {"apiVersion": "v1", "kind": "Namespace", "status": {"phase": "Active"},
                                              "metadata": {"name": "team", "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}))
    r = run_kjob("submit", "examples/resnext50-torchrun.yaml", "-n", "team")
    assert r.code == 0 and r.out == "PyTorchJob team/resnext50-torchrun created\n"
    assert r.err.startswith('warning: namespace "team" enforces Pod Security "restricted", and training-operator v1.9')


def test_events_of_a_job_include_its_gone_pods_but_not_another_jobs(kube):
    backend = ClusterBackend()
    backend.create_job(objects())
    kube.start_job("smoke")
    for pod, reason in (("smoke-worker-7", "Evicted"), ("smoke-launcher-x7k2p", "Evicted"), ("smoke-2-worker-0", "Evicted"),
                        ("smoke-worker-1", "Scheduled")):
        kube.event(pod, reason, "x", type_="Warning" if reason == "Evicted" else "Normal")
    job = kube.get("MPIJob", "smoke")
    names = {e["involvedObject"]["name"] for e in job_events(backend.kube, job, job_pods(backend.kube, job))}
    assert names == {"smoke-worker-7", "smoke-launcher-x7k2p"}
