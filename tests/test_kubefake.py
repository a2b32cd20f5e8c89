"""The test API server answers as kube-apiserver does, checked with the real client.

A fake is only worth what it shares with the real server: these tests pin the behaviour
kjob relies on (201 + server metadata on create, Status bodies, plain 404 for an unknown
group/version, watch with resourceVersion/bookmarks/410, pod log parameters, faults).
"""

from __future__ import annotations

import json
import time

import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

MPIJOB = {
    "apiVersion": "kubeflow.org/v2beta1",
    "kind": "MPIJob",
    "metadata": {"name": "pi", "labels": {"app.kubernetes.io/managed-by": "kjob"}},
    "spec": {"mpiReplicaSpecs": {
        "Launcher": {"replicas": 1, "template": {"spec": {"containers": [{"name": "launcher", "image": "mpi:1"}]}}},
        "Worker": {"replicas": 2, "template": {"spec": {"containers": [{"name": "worker", "image": "mpi:1"}]}}},
    }},
}


@pytest.fixture
def api(kube):
    c = config.new_client_from_config(kube.kubeconfig)
    yield client.CustomObjectsApi(c), client.CoreV1Api(c)
    c.close()


def create(custom, body=MPIJOB, ns="default"):
    return custom.create_namespaced_custom_object("kubeflow.org", "v2beta1", ns, "mpijobs", body)


def test_create_answers_201_with_server_metadata(kube, api):
    custom, _ = api
    data, code, _ = custom.create_namespaced_custom_object_with_http_info("kubeflow.org", "v2beta1", "default", "mpijobs", MPIJOB)
    assert code == 201
    md = data["metadata"]
    assert md["namespace"] == "default" and md["generation"] == 1
    assert md["uid"] and md["resourceVersion"].isdigit() and md["creationTimestamp"].endswith("Z")
    assert custom.get_namespaced_custom_object("kubeflow.org", "v2beta1", "default", "mpijobs", "pi") == data


def test_errors_are_status_objects_with_reason_and_details(kube, api):
    custom, core = api
    create(custom)
    with pytest.raises(ApiException) as e:
        create(custom)
    body = json.loads(e.value.body)
    assert (e.value.status, body["kind"], body["reason"]) == (409, "Status", "AlreadyExists")
    assert body["details"] == {"name": "pi", "group": "kubeflow.org", "kind": "mpijobs"}
    assert body["message"] == 'mpijobs.kubeflow.org "pi" already exists'
    with pytest.raises(ApiException) as e:
        create(custom, ns="nowhere")
    body = json.loads(e.value.body)
    assert (body["code"], body["reason"], body["details"]["kind"]) == (404, "NotFound", "namespaces")
    with pytest.raises(ApiException) as e:
        core.read_namespaced_pod("nope", "default")
    assert json.loads(e.value.body)["message"] == 'pods "nope" not found'


def test_unknown_group_version_is_a_plain_404_and_discovery_follows_crds(kube, api):
    custom, _ = api
    assert "mpijobs" in [r.name for r in custom.get_api_resources("kubeflow.org", "v2beta1").resources]
    with pytest.raises(ApiException) as e:
        custom.get_api_resources("kubeflow.org", "v9")
    assert e.value.status == 404 and e.value.body == "404 page not found\n"
    kube.remove_crd("MPIJob")
    with pytest.raises(ApiException) as e:
        custom.list_namespaced_custom_object("kubeflow.org", "v2beta1", "default", "mpijobs")
    assert e.value.status == 404
    kube.install_crd("MPIJob")
    assert custom.list_namespaced_custom_object("kubeflow.org", "v2beta1", "default", "mpijobs")["items"] == []


def test_label_selectors(kube, api):
    custom, core = api
    create(custom)
    create(custom, {**MPIJOB, "metadata": {"name": "other", "labels": {"team": "a"}}})
    names = lambda sel: [o["metadata"]["name"] for o in custom.list_namespaced_custom_object("kubeflow.org", "v2beta1", "default", "mpijobs", label_selector=sel)["items"]]
    assert names("app.kubernetes.io/managed-by=kjob") == ["pi"]
    assert names("team in (a,b)") == ["other"]
    assert names("!team") == ["pi"]
    assert names("team!=a") == ["pi"]
    kube.start_job("pi")
    workers = core.list_namespaced_pod("default", label_selector="training.kubeflow.org/job-name=pi,training.kubeflow.org/job-role=worker")
    assert sorted(p.metadata.name for p in workers.items) == ["pi-worker-0", "pi-worker-1"]


def test_watch_resumes_from_a_resource_version_and_410_when_too_old(kube, api):
    custom, _ = api
    first = create(custom)
    rv = first["metadata"]["resourceVersion"]
    kube.start_job("pi")  # the Created condition: a MODIFIED event
    w = watch.Watch()
    events = []
    for ev in w.stream(custom.list_namespaced_custom_object, "kubeflow.org", "v2beta1", "default", "mpijobs", resource_version=rv, timeout_seconds=1):
        events.append((ev["type"], ev["object"]["metadata"]["resourceVersion"]))
    assert [t for t, _ in events] == ["MODIFIED"] and int(events[0][1]) > int(rv)
    kube.compact()
    with pytest.raises(ApiException) as e:
        for _ in watch.Watch().stream(custom.list_namespaced_custom_object, "kubeflow.org", "v2beta1", "default", "mpijobs", resource_version=rv, timeout_seconds=1):
            pass
    assert e.value.status == 410


def test_watch_sends_bookmarks(kube):
    import urllib.request

    req = urllib.request.Request(f"{kube.server}/apis/kubeflow.org/v2beta1/namespaces/default/mpijobs?watch=true&allowWatchBookmarks=true&timeoutSeconds=2&resourceVersion=1000", headers={"Authorization": f"Bearer {kube.token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        events = [json.loads(line) for line in resp.read().splitlines()]
    assert events and all(e["type"] == "BOOKMARK" for e in events)
    assert events[0]["object"]["metadata"]["resourceVersion"].isdigit()


def test_pod_logs_parameters(kube, api):
    custom, core = api
    create(custom)
    pods = kube.start_job("pi")
    with pytest.raises(ApiException) as e:
        core.read_namespaced_pod_log(pods[0], "default")
    assert e.value.status == 400 and "is waiting to start: ContainerCreating" in e.value.body
    kube.run_job("pi")
    base = (time.time_ns() // 10**9 - 100) * 10**9
    kube.append_log(pods[0], ["a", "b"], timestamp_ns=base + 5)
    kube.append_log(pods[0], ["c"], timestamp_ns=base + 2 * 10**9)
    assert core.read_namespaced_pod_log(pods[0], "default") == "a\nb\nc\n"
    assert core.read_namespaced_pod_log(pods[0], "default", tail_lines=1) == "c\n"
    stamped = core.read_namespaced_pod_log(pods[0], "default", timestamps=True).splitlines()
    assert stamped[0].split(" ")[0].endswith(".000000005Z") and len(stamped[0].split(" ")[0]) == 30
    # sinceTime loses its fraction on the way to the kubelet: whole seconds.
    since = stamped[0].split(" ")[0].replace(".000000005Z", ".9Z")
    raw = kube_get(kube, f"/api/v1/namespaces/default/pods/{pods[0]}/log?sinceTime={since}")
    assert raw == b"a\nb\nc\n"
    assert core.read_namespaced_pod_log(pods[0], "default", since_seconds=10) == ""
    with pytest.raises(ApiException) as e:
        core.read_namespaced_pod_log(pods[0], "default", previous=True)
    assert e.value.status == 400
    kube.restart_container(pods[0])
    kube.append_log(pods[0], ["after restart"])
    assert core.read_namespaced_pod_log(pods[0], "default", previous=True) == "a\nb\nc\n"
    assert core.read_namespaced_pod_log(pods[0], "default") == "after restart\n"


def kube_get(kube, path: str) -> bytes:
    import urllib.request

    req = urllib.request.Request(kube.server + path, headers={"Authorization": f"Bearer {kube.token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.read()


def test_follow_streams_new_lines_and_ends_with_the_container(kube, api):
    import threading

    custom, core = api
    create(custom)
    pods = kube.run_job("pi")
    kube.append_log(pods[0], ["one"])

    def later():
        time.sleep(0.2)
        kube.append_log(pods[0], ["two"])
        kube.pod_terminated(pods[0])

    threading.Thread(target=later).start()
    resp = core.read_namespaced_pod_log(pods[0], "default", follow=True, _preload_content=False)
    assert resp.read() == b"one\ntwo\n"


def test_faults_status_cut_deny_and_bad_token(kube, api):
    import urllib3

    custom, core = api
    create(custom)
    pods = kube.run_job("pi")
    kube.append_log(pods[0], [f"line {i}" for i in range(100)])
    fault = kube.fault("get", "pods/log", cut_after_bytes=25)
    resp = core.read_namespaced_pod_log(pods[0], "default", follow=True, _preload_content=False)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        b"".join(resp.stream(1024))
    assert fault.hits == 1
    kube.fault("list", "mpijobs", status=503)
    with pytest.raises(ApiException) as e:
        custom.list_namespaced_custom_object("kubeflow.org", "v2beta1", "default", "mpijobs")
    assert e.value.status == 503
    assert custom.list_namespaced_custom_object("kubeflow.org", "v2beta1", "default", "mpijobs")["items"]  # only once
    kube.deny("get", "pods/log")
    with pytest.raises(ApiException) as e:
        core.read_namespaced_pod_log(pods[0], "default")
    body = json.loads(e.value.body)
    assert body["message"] == 'pods is forbidden: User "kjob-test" cannot get resource "pods/log" in API group "" in the namespace "default"'
    bad = client.CoreV1Api(config.new_client_from_config(str(kube.kubeconfig_variant(token="wrong"))))
    with pytest.raises(ApiException) as e:
        bad.list_namespaced_pod("default")
    assert e.value.status == 401


def test_self_subject_access_review(kube, api):
    kube.deny("create", "pods/exec")
    auth = client.AuthorizationV1Api(config.new_client_from_config(kube.kubeconfig))

    def allowed(verb, resource, sub=None):
        attrs = client.V1ResourceAttributes(namespace="default", verb=verb, resource=resource, subresource=sub)
        return auth.create_self_subject_access_review(client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attrs))).status.allowed

    assert allowed("get", "pods", "log") is True
    assert allowed("create", "pods", "exec") is False


def test_deleting_a_job_collects_its_pods(kube, api):
    custom, core = api
    create(custom)
    kube.start_job("pi")
    custom.delete_namespaced_custom_object("kubeflow.org", "v2beta1", "default", "mpijobs", "pi")
    assert core.list_namespaced_pod("default").items == []


def test_update_patch_and_the_status_subresource(kube, api):
    custom, _ = api
    created = create(custom, {**MPIJOB, "status": {"conditions": [{"type": "Succeeded", "status": "True"}]}})
    assert "status" not in created  # status is a subresource: ignored on create
    patched = custom.patch_namespaced_custom_object("kubeflow.org", "v2beta1", "default", "mpijobs", "pi", {"spec": {"slotsPerWorker": 2}})
    assert patched["spec"]["slotsPerWorker"] == 2 and patched["metadata"]["generation"] == 2
    stale = {**created, "spec": {**created["spec"], "slotsPerWorker": 4}}
    with pytest.raises(ApiException) as e:
        custom.replace_namespaced_custom_object("kubeflow.org", "v2beta1", "default", "mpijobs", "pi", stale)
    assert e.value.status == 409 and "the object has been modified" in json.loads(e.value.body)["message"]
    status = custom.patch_namespaced_custom_object_status("kubeflow.org", "v2beta1", "default", "mpijobs", "pi", {"status": {"conditions": [{"type": "Running", "status": "True"}]}, "spec": {"slotsPerWorker": 9}})
    assert status["status"]["conditions"][0]["type"] == "Running" and status["spec"]["slotsPerWorker"] == 2


def test_cluster_scoped_custom_resources_crds_and_the_openapi_v3_document(kube, api):
    # Extensions for TrainJob (issue 21): a ClusterTrainingRuntime lives at the cluster's
    # path only, a TrainJob at a namespace's only; CRDs and the OpenAPI v3 document of a
    # group version list the fields under .spec.
    custom, _ = api
    runtime = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "ClusterTrainingRuntime", "metadata": {"name": "rt"}, "spec": {}}
    made = custom.create_cluster_custom_object("trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes", runtime)
    assert "namespace" not in made["metadata"]
    assert custom.get_cluster_custom_object("trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes", "rt")["metadata"]["name"] == "rt"
    for call in (lambda: custom.get_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", "default", "clustertrainingruntimes", "rt"),
                 lambda: custom.get_cluster_custom_object("trainer.kubeflow.org", "v1alpha1", "trainjobs", "tj")):
        with pytest.raises(ApiException) as e:
            call()
        assert (e.value.status, e.value.body) == (404, "404 page not found\n")
    def raw(path: str) -> dict:
        import urllib.request

        req = urllib.request.Request(kube.server + path, headers={"Authorization": f"Bearer {kube.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)

    crd = raw("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/trainjobs.trainer.kubeflow.org")
    assert (crd["spec"]["scope"], [v["name"] for v in crd["spec"]["versions"]]) == ("Namespaced", ["v1alpha1"])
    assert "runtimePatches" in crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    kube.serve_crd_spec_fields("TrainJob", ("runtimeRef", "podTemplateOverrides"))
    schema = raw("/openapi/v3/apis/trainer.kubeflow.org/v1alpha1")["components"]["schemas"]["org.kubeflow.trainer.v1alpha1.TrainJob"]
    assert schema["x-kubernetes-group-version-kind"] == [{"group": "trainer.kubeflow.org", "kind": "TrainJob", "version": "v1alpha1"}]
    assert list(schema["properties"]["spec"]["properties"]) == ["runtimeRef", "podTemplateOverrides"]
