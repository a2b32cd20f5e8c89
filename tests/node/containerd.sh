#!/usr/bin/env bash
# The local node's container runtime: Debian's containerd with runc (cgroupfs driver: this
# machine has the cgroup v1 hierarchy and no systemd) and the CNI bridge from Debian's
# containernetworking-plugins. Its own socket, config and state, so it never meets another
# containerd on the machine:
#   tests/node/containerd.sh start   # idempotent; prints the socket path
#   tests/node/containerd.sh stop
# Images and snapshots live outside the clone, in ${KJOB_CACHE:-$HOME/.cache/kjob}/node/
# containerd, so images loaded once (images/build-local.sh) stay loaded across runs.
# It is a long-lived daemon shared by the image builds and every node-tier session, so it
# outlives them on purpose (nohup, no watchdog): unlike the kubelet and CoreDNS, which
# tests/cluster/processes.py ends with their session, killed or not.
set -euo pipefail

cache="${KJOB_CACHE:-$HOME/.cache/kjob}/node"
run="${KJOB_NODE_RUN:-/run/kjob-node}"
sock="$run/containerd.sock"
pidfile="$run/containerd.pid"
# The sandbox image images/build-local.sh makes (no registry: nothing is ever pulled).
PAUSE_IMAGE="localhost/kjob/pause:local"
# Pods' addresses on the bridge; the gateway (.1) is also where CoreDNS listens.
POD_SUBNET="${KJOB_POD_SUBNET:-10.244.0.0/24}"
BRIDGE=kjob0

running() { [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null && [[ -S "$sock" ]]; }

start() {
  if running; then echo "$sock"; return 0; fi
  mkdir -p "$run/cni/net.d" "$cache/containerd"
  cat >"$run/cni/net.d/10-kjob.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "kjob",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_SUBNET"}]], "routes": [{"dst": "0.0.0.0/0"}],
              "dataDir": "$run/cni/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  cat >"$run/containerd.toml" <<TOML
version = 2
root = "$cache/containerd"
state = "$run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$run/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # No CAP_SYS_RESOURCE here: the OOM score CRI gives a pod sandbox (-998) and the kubelet
  # gives Guaranteed pods (-997) cannot be set ("runc create failed: unable to start
  # container process: can't get final child's PID from pipe: EOF"). Clamp them to
  # containerd's own score, as for rootless containerd.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # crun fails on this machine's hybrid cgroup layout; runc works.
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$run/cni/net.d"
TOML
  # The bridge and its gateway address exist before the first pod, so CoreDNS can listen
  # there from the start (the bridge plugin adopts an existing bridge).
  gw="${POD_SUBNET%.*}.1"
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip addr show dev "$BRIDGE" | grep -q "inet $gw/" || ip addr add "$gw/${POD_SUBNET#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  sysctl -qw net.ipv4.ip_forward=1
  nohup containerd --config "$run/containerd.toml" >>"$run/containerd.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 1 300); do
    if [[ -S "$sock" ]] && ctr --address "$sock" version >/dev/null 2>&1; then echo "$sock"; return 0; fi
    kill -0 "$(cat "$pidfile")" 2>/dev/null || break
    sleep 0.2
  done
  echo "containerd did not start; the end of $run/containerd.log:" >&2
  tail -20 "$run/containerd.log" >&2
  return 1
}

stop() {
  running || { rm -f "$pidfile"; return 0; }
  pid="$(cat "$pidfile")"
  kill "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
