#!/usr/bin/env bash
# Builds the control plane the cluster tests run (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kwok, mpi-operator, training-operator) from the
# versions pinned in tests/cluster/tools/*/go.mod, and copies the CRDs those same module
# versions ship. Everything lands outside the clone, in
#   ${KJOB_CACHE:-$HOME/.cache/kjob}/cluster/<key>/{bin,crds}
# where <key> hashes the go.mod/go.sum files, this script and the Go version: a machine
# that built once skips the whole build until one of them changes. Prints that directory
# on its last line of stdout (the harness reads it with --print-dir).
#
# One go.mod per tool: the operators and kwok require k8s.io/* v0.35/v0.36 while
# k8s.io/kubernetes v1.34 needs its staging modules at v0.34, so one module cannot hold
# them all (minimal version selection would lift the apiserver's libraries to v0.36).
#
# Adding a binary (the kubelet, say) is one line in TOOLS below and, for another
# k8s.io/kubernetes command, one `tool` line in tools/kubernetes/go.mod.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$here/tools"

# name of the binary | tool folder | Go package
TOOLS=(
  "etcd|etcd|go.etcd.io/etcd/server/v3"
  "kube-apiserver|kubernetes|k8s.io/kubernetes/cmd/kube-apiserver"
  "kube-controller-manager|kubernetes|k8s.io/kubernetes/cmd/kube-controller-manager"
  "kube-scheduler|kubernetes|k8s.io/kubernetes/cmd/kube-scheduler"
  "kubectl|kubernetes|k8s.io/kubernetes/cmd/kubectl"
  "kwok|kwok|sigs.k8s.io/kwok/cmd/kwok"
  "mpi-operator|mpi-operator|github.com/kubeflow/mpi-operator/cmd/mpi-operator"
  "training-operator|training-operator|github.com/kubeflow/training-operator/cmd/training-operator.v1"
)

# CRD file (under crds/: the harness installs them all) | tool folder | module | path inside the module
# training-operator ships an MPIJob kubeflow.org/v1 CRD as well; installed, it replaces
# mpi-operator's v2beta1 one (kubeflow/trainer#1930, #1972). It goes to clobber/, where
# only the test of that mistake takes it from.
CRDS=(
  "../clobber/kubeflow.org_mpijobs.v1.yaml|training-operator|github.com/kubeflow/training-operator|manifests/base/crds/kubeflow.org_mpijobs.yaml"
  "kubeflow.org_mpijobs.yaml|mpi-operator|github.com/kubeflow/mpi-operator|manifests/base/kubeflow.org_mpijobs.yaml"
  "kubeflow.org_pytorchjobs.yaml|training-operator|github.com/kubeflow/training-operator|manifests/base/crds/kubeflow.org_pytorchjobs.yaml"
  # kwok's per-pod log and exec rules (nodeside.py creates one of each for every pod).
  "kwok.x-k8s.io_logs.yaml|kwok|sigs.k8s.io/kwok|kustomize/crd/bases/kwok.x-k8s.io_logs.yaml"
  "kwok.x-k8s.io_execs.yaml|kwok|sigs.k8s.io/kwok|kustomize/crd/bases/kwok.x-k8s.io_execs.yaml"
)

key="$( { cat "$tools"/*/go.mod "$tools"/*/go.sum "$0"; go env GOVERSION; } | sha256sum | cut -c1-16)"
out="${KJOB_CACHE:-$HOME/.cache/kjob}/cluster/$key"

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "$out"
  exit 0
fi

if [[ -f "$out/complete" ]]; then
  echo "cluster binaries: cached in $out" >&2
  echo "$out"
  exit 0
fi

mkdir -p "$out/bin" "$out/crds" "$out/clobber"
start=$SECONDS
export GOFLAGS="-mod=readonly -trimpath"
# kube-apiserver reports this as its version (/version); without it, v0.0.0-master.
k8s_version="$(cd "$tools/kubernetes" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
k8s_minor="$(echo "$k8s_version" | cut -d. -f2)"
k8s_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version"
k8s_ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$k8s_minor"
k8s_ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"

# mpi-operator serves its health check on port 8080 of every address, a constant with no
# flag (cmd/mpi-operator/app/server.go healthCheckPort), so two clusters on one machine
# (two test sessions, a `make cluster-up` beside one) would kill each other's. Its build
# uses a copy of the pinned module with that one constant set to 0 (any free port), through
# a `replace` in a go.mod of its own (-modfile): the committed go.mod and the module cache
# stay untouched. The harness waits on the operator's leader lease, not on /healthz.
mpi_operator_modfile() {
  local mod="github.com/kubeflow/mpi-operator" src copy="$out/src/mpi-operator" modfile="$out/src/mpi-operator.mod"
  (cd "$tools/mpi-operator" && go mod download "$mod")
  src="$(cd "$tools/mpi-operator" && go list -m -f '{{.Dir}}' "$mod")"
  rm -rf "$copy" && mkdir -p "$out/src" && cp -r "$src" "$copy" && chmod -R u+w "$copy"
  sed -i 's/^\(\s*healthCheckPort\s*=\s*\)8080$/\10/' "$copy/cmd/mpi-operator/app/server.go"
  if ! grep -qE '^\s*healthCheckPort\s*=\s*0$' "$copy/cmd/mpi-operator/app/server.go"; then
    echo "build.sh: $mod no longer sets healthCheckPort = 8080; look at this patch again" >&2
    exit 1
  fi
  cp "$tools/mpi-operator/go.mod" "$modfile" && cp "$tools/mpi-operator/go.sum" "${modfile%.mod}.sum"
  (cd "$tools/mpi-operator" && go mod edit -modfile="$modfile" -replace "$mod=$copy")
  echo "-modfile=$modfile"
}

for t in "${TOOLS[@]}"; do
  IFS='|' read -r name dir pkg <<<"$t"
  [[ -x "$out/bin/$name" ]] && continue
  ldflags="-s -w"
  [[ "$dir" == kubernetes ]] && ldflags="$k8s_ldflags"
  extra=()
  [[ "$name" == mpi-operator ]] && extra=("$(mpi_operator_modfile)")
  echo "building $name ($pkg)" >&2
  t0=$SECONDS
  (cd "$tools/$dir" && nice -n 10 go build "${extra[@]}" -ldflags "$ldflags" -o "$out/bin/$name.tmp" "$pkg")
  mv "$out/bin/$name.tmp" "$out/bin/$name"
  echo "built $name in $((SECONDS - t0))s" >&2
done

for c in "${CRDS[@]}"; do
  IFS='|' read -r file dir mod path <<<"$c"
  moddir="$(cd "$tools/$dir" && go list -m -f '{{.Dir}}' "$mod")"
  if [[ -z "$moddir" || ! -d "$moddir" ]]; then
    (cd "$tools/$dir" && go mod download "$mod")
    moddir="$(cd "$tools/$dir" && go list -m -f '{{.Dir}}' "$mod")"
  fi
  install -m 0644 "$moddir/$path" "$out/crds/$file"
done

echo "cluster binaries: built in $((SECONDS - start))s into $out" >&2
touch "$out/complete"
echo "$out"
