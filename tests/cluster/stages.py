"""kwok's configuration for the test cluster: what its nodes are and how a pod lives.

Stages (kwok's Stage API: a selector on the object, then the status it moves to):

- node-ready: a new node gets its shape (NODE_CAPACITY), its address (kwok's own
  127.0.0.1 and port: the API server reaches "the kubelet" there for logs and exec) and
  Ready. Leases keep it Ready afterwards (--node-lease-duration-seconds).
- pod-running: a scheduled pod becomes Running, every container started and Ready, once
  the node side (nodeside.py) has marked it prepared (PREPARED): its log file and exec
  rule exist. A real kubelet, too, starts containers only after pulling images and
  mounting volumes; here that gap is what keeps `kubectl logs` from racing the rules.
- pod-exit: a test ends a Running pod by annotating it with EXIT_CODE; the pod's
  containers terminate with that code and the pod Succeeds (0) or Fails (any other).
- pod-delete: a pod being deleted goes at once, as a kubelet's pod does when its
  containers have stopped.
"""

from __future__ import annotations

import json

import yaml

# Annotation a test puts on a Running pod to end it with that exit code (a string: "0", "143").
EXIT_CODE = "kjob.test/exit-code"
# Annotation the node side puts on a pod once its log file and exec rule exist.
PREPARED = "kjob.test/prepared"
# Every test node: big enough for the examples' jobs, with 8 GPUs so that a job asking 9
# per worker can be placed nowhere (the scheduler's "Insufficient nvidia.com/gpu").
# ephemeral-storage as every kubelet reports it: a pod that limits it (fetch-ckpt's
# helper) is otherwise "Insufficient ephemeral-storage" on every node.
NODE_CAPACITY = {"cpu": "64", "memory": "512Gi", "ephemeral-storage": "100Gi", "nvidia.com/gpu": "8", "pods": "110"}
NODE_COUNT = 2


def _stage(name: str, kind: str, expressions: list[dict], template: str, *, delete: bool = False) -> dict:
    next_: dict = {"statusTemplate": template} if template else {}
    if delete:
        next_ = {"finalizers": {"empty": True}, "delete": True}
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": {"resourceRef": {"apiGroup": "v1", "kind": kind}, "selector": {"matchExpressions": expressions}, "next": next_},
    }


def _absent(key: str) -> dict:
    return {"key": key, "operator": "DoesNotExist"}


def _present(key: str) -> dict:
    return {"key": key, "operator": "Exists"}


def _in(key: str, *values: str) -> dict:
    return {"key": key, "operator": "In", "values": list(values)}


def _annotation(key: str) -> str:
    return f'.metadata.annotations["{key}"]'


NODE_READY = """\
{{ $now := Now }}
conditions:
- {type: Ready, status: "True", reason: KubeletReady, message: "kwok node is ready", lastHeartbeatTime: {{ $now | Quote }}, lastTransitionTime: {{ $now | Quote }}}
- {type: MemoryPressure, status: "False", reason: KubeletHasSufficientMemory, message: "", lastHeartbeatTime: {{ $now | Quote }}, lastTransitionTime: {{ $now | Quote }}}
- {type: DiskPressure, status: "False", reason: KubeletHasNoDiskPressure, message: "", lastHeartbeatTime: {{ $now | Quote }}, lastTransitionTime: {{ $now | Quote }}}
- {type: PIDPressure, status: "False", reason: KubeletHasSufficientPID, message: "", lastHeartbeatTime: {{ $now | Quote }}, lastTransitionTime: {{ $now | Quote }}}
addresses:
- {type: InternalIP, address: {{ NodeIP | Quote }}}
- {type: Hostname, address: {{ NodeName | Quote }}}
daemonEndpoints:
  kubeletEndpoint:
    Port: {{ NodePort }}
capacity: CAPACITY
allocatable: CAPACITY
nodeInfo:
  architecture: amd64
  operatingSystem: linux
  kubeletVersion: KUBELET_VERSION
  kubeProxyVersion: KUBELET_VERSION
  containerRuntimeVersion: kwok
  kernelVersion: kwok
  osImage: kwok
  machineID: ""
  systemUUID: ""
  bootID: ""
phase: Running
"""

POD_RUNNING = """\
{{ $now := Now }}
{{ $root := . }}
phase: Running
startTime: {{ $now | Quote }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
conditions:
- {type: PodScheduled, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: PodReadyToStartContainers, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: ContainersReady, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: Ready, status: "True", lastTransitionTime: {{ $now | Quote }}}
{{ with .spec.initContainers }}
initContainerStatuses:
{{ range . }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  imageID: {{ printf "kwok://%s" .image | Quote }}
  containerID: {{ printf "kwok://%s/%s" $root.metadata.uid .name | Quote }}
  ready: true
  restartCount: 0
  state: {terminated: {exitCode: 0, reason: Completed, startedAt: {{ $now | Quote }}, finishedAt: {{ $now | Quote }}}}
{{ end }}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  imageID: {{ printf "kwok://%s" .image | Quote }}
  containerID: {{ printf "kwok://%s/%s" $root.metadata.uid .name | Quote }}
  ready: true
  started: true
  restartCount: 0
  state: {running: {startedAt: {{ $now | Quote }}}}
{{ end }}
"""

POD_EXIT = """\
{{ $now := Now }}
{{ $root := . }}
{{ $code := index .metadata.annotations "EXIT_CODE" }}
phase: {{ if eq $code "0" }}Succeeded{{ else }}Failed{{ end }}
conditions:
- {type: PodScheduled, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: PodReadyToStartContainers, status: "False", lastTransitionTime: {{ $now | Quote }}}
- {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: ContainersReady, status: "False", reason: PodCompleted, lastTransitionTime: {{ $now | Quote }}}
- {type: Ready, status: "False", reason: PodCompleted, lastTransitionTime: {{ $now | Quote }}}
containerStatuses:
{{ range .status.containerStatuses }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  imageID: {{ .imageID | Quote }}
  containerID: {{ .containerID | Quote }}
  ready: false
  started: false
  restartCount: {{ .restartCount }}
  state:
    terminated:
      exitCode: {{ $code }}
      reason: {{ if eq $code "0" }}Completed{{ else }}Error{{ end }}
      startedAt: {{ or .state.running.startedAt $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
"""


def kwok_config(kubelet_version: str) -> str:
    """The YAML documents for kwok's --config: its stages."""
    capacity = json.dumps(NODE_CAPACITY)
    node_ready = NODE_READY.replace("CAPACITY", capacity).replace("KUBELET_VERSION", json.dumps(kubelet_version))
    alive = _absent(".metadata.deletionTimestamp")
    stages = [
        _stage("node-ready", "Node", [{"key": '.status.conditions.[] | select( .type == "Ready" ) | .status', "operator": "NotIn", "values": ["True"]}], node_ready),
        _stage("pod-running", "Pod", [alive, _in(".status.phase", "Pending"), _present(".spec.nodeName"),
                                      _present(_annotation(PREPARED)), _absent(_annotation(EXIT_CODE))], POD_RUNNING),
        _stage("pod-exit", "Pod", [alive, _in(".status.phase", "Running"), _present(_annotation(EXIT_CODE))],
               POD_EXIT.replace("EXIT_CODE", EXIT_CODE)),
        _stage("pod-delete", "Pod", [_present(".metadata.deletionTimestamp")], "", delete=True),
    ]
    return yaml.safe_dump_all(stages, sort_keys=False)
