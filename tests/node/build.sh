#!/usr/bin/env bash
# Builds the real node's binaries from the versions pinned in tests/node/tools/*/go.mod:
# the kubelet (k8s.io/kubernetes, the same release as the control plane's
# tests/cluster/tools/kubernetes), CoreDNS, and crictl (to see and clean up the node's
# pods). Everything lands outside the clone, in
#   ${KJOB_CACHE:-$HOME/.cache/kjob}/node/<key>/bin
# where <key> hashes the go.mod/go.sum files, this script and the Go version: a machine
# that built once skips the build until one of them changes. Prints that directory on
# its last line of stdout (--print-dir prints it without building).
#
# One go.mod per tool, as in tests/cluster: CoreDNS requires k8s.io/client-go v0.35 (and
# crictl a v0.34 release candidate) while k8s.io/kubernetes v1.34 needs its staging modules
# at v0.34.4 (replace lines).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$here/tools"

# name of the binary | tool folder | Go package
TOOLS=(
  "kubelet|kubelet|k8s.io/kubernetes/cmd/kubelet"
  "coredns|coredns|github.com/coredns/coredns"
  "crictl|crictl|sigs.k8s.io/cri-tools/cmd/crictl"
)

key="$( { cat "$tools"/*/go.mod "$tools"/*/go.sum "$0"; go env GOVERSION; } | sha256sum | cut -c1-16)"
out="${KJOB_CACHE:-$HOME/.cache/kjob}/node/$key"

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "$out"
  exit 0
fi

if [[ -f "$out/complete" ]]; then
  echo "node binaries: cached in $out" >&2
  echo "$out"
  exit 0
fi

mkdir -p "$out/bin"
start=$SECONDS
export GOFLAGS="-mod=readonly -trimpath"
# The kubelet reports this version to the API server (node.status.nodeInfo); the API
# server's version skew rules compare it with its own.
k8s_version="$(cd "$tools/kubelet" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
k8s_minor="$(echo "$k8s_version" | cut -d. -f2)"
k8s_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version"
k8s_ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$k8s_minor"
k8s_ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"

for t in "${TOOLS[@]}"; do
  IFS='|' read -r name dir pkg <<<"$t"
  [[ -x "$out/bin/$name" ]] && continue
  ldflags="-s -w"
  [[ "$dir" == kubelet ]] && ldflags="$k8s_ldflags"
  echo "building $name ($pkg)" >&2
  t0=$SECONDS
  (cd "$tools/$dir" && nice -n 10 go build -ldflags "$ldflags" -o "$out/bin/$name.tmp" "$pkg")
  mv "$out/bin/$name.tmp" "$out/bin/$name"
  echo "built $name in $((SECONDS - t0))s" >&2
done

echo "node binaries: built in $((SECONDS - start))s into $out" >&2
touch "$out/complete"
echo "$out"
