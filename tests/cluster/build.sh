#!/usr/bin/env bash
# Builds the binaries the real tiers run, one set at a time, from the versions pinned in
# the go.mod of each tool folder its TOOLS lines name:
#   --set cluster (the default): etcd, kube-apiserver, kube-controller-manager,
#     kube-scheduler, kwok, mpi-operator, training-operator (tests/cluster), kubectl (for
#     bench/ only), and the CRDs those same module versions ship;
#   --set node: the kubelet (the control plane's release), CoreDNS and crictl (tests/node);
#   --set trainer: Kubeflow Trainer v2's trainer-controller-manager, JobSet and lua-health
#     (a gopher-lua runner of Argo CD health checks; tests/cluster/tools), their CRDs and
#     their webhook configurations;
#   --set kueue: Kueue (tests/cluster/tools/kueue), its CRDs, webhook configurations and
#     CRD conversion patches.
# Everything lands outside the clone, in
#   ${KJOB_CACHE:-$HOME/.cache/kjob}/<set>/<key>/{bin,crds,clobber,webhooks}
# where <key> hashes the set's tool folders (go.mod, go.sum, *.go), this script and the Go
# version: a machine that built once skips the whole build until one of them changes.
# Prints that directory on its last line of stdout (--print-dir prints it without building).
# One build of a key runs at a time: a second build.sh of it waits on the folder's
# build.lock and then finds it built.
#
# The cache does not grow forever: every run (but --print-dir) removes the folders of
# other keys, <cache>/<set>/<other key>, that nobody uses. A user holds a shared
# flock on <folder>/in-use.lock while running its binaries (builds.py `hold`; a build in
# progress holds one too); a folder is removed only under an exclusive lock taken without
# waiting, and what was freed is said in one line on stderr. KJOB_CACHE_PRUNE=0 keeps
# every folder.
#
# One go.mod per tool: the operators and kwok require k8s.io/* v0.35/v0.36 while
# k8s.io/kubernetes v1.34 needs its staging modules at v0.34, so one module cannot hold
# them all (minimal version selection would lift the apiserver's libraries to v0.36).
# All builds share the one Go build cache (go env GOCACHE) with the same flags, so a
# package built for one binary, set or key is compiled once.
#
# Adding a binary (a controller, say) is one line in TOOLS (and one in CRDS per CRD it
# needs) with its tools/<name>/go.mod; another k8s.io/kubernetes command is one `tool`
# line in tools/kubernetes/go.mod; another set is its lines and its name in SETS.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
script="$here/$(basename "${BASH_SOURCE[0]}")"
tests="$(dirname "$here")"
cache="${KJOB_CACHE:-$HOME/.cache/kjob}"

# set | name of the binary | tool folder (under tests/) | Go package
# In the order they are built; kubectl is only for bench/, so it comes last.
TOOLS=(
  "cluster|etcd|cluster/tools/etcd|go.etcd.io/etcd/server/v3"
  "cluster|kube-apiserver|cluster/tools/kubernetes|k8s.io/kubernetes/cmd/kube-apiserver"
  "cluster|kube-controller-manager|cluster/tools/kubernetes|k8s.io/kubernetes/cmd/kube-controller-manager"
  "cluster|kube-scheduler|cluster/tools/kubernetes|k8s.io/kubernetes/cmd/kube-scheduler"
  "cluster|kwok|cluster/tools/kwok|sigs.k8s.io/kwok/cmd/kwok"
  "cluster|mpi-operator|cluster/tools/mpi-operator|github.com/kubeflow/mpi-operator/cmd/mpi-operator"
  "cluster|training-operator|cluster/tools/training-operator|github.com/kubeflow/training-operator/cmd/training-operator.v1"
  "cluster|kubectl|cluster/tools/kubernetes|k8s.io/kubernetes/cmd/kubectl"
  "node|kubelet|node/tools/kubelet|k8s.io/kubernetes/cmd/kubelet"
  "node|coredns|node/tools/coredns|github.com/coredns/coredns"
  "node|crictl|node/tools/crictl|sigs.k8s.io/cri-tools/cmd/crictl"
  "trainer|trainer-controller-manager|cluster/tools/trainer|github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager"
  "trainer|jobset|cluster/tools/jobset|sigs.k8s.io/jobset"
  "trainer|lua-health|cluster/tools/gopher-lua|kjob.invalid/tests/cluster/tools/gopher-lua"
  "kueue|kueue|cluster/tools/kueue|sigs.k8s.io/kueue/cmd/kueue"
)

# set | CRD file (under crds/: the harness installs them all) | tool folder | module | path inside the module
# training-operator ships an MPIJob kubeflow.org/v1 CRD as well; installed, it replaces
# mpi-operator's v2beta1 one (kubeflow/trainer#1930, #1972). It goes to clobber/, where
# only the test of that mistake takes it from.
CRDS=(
  "cluster|../clobber/kubeflow.org_mpijobs.v1.yaml|cluster/tools/training-operator|github.com/kubeflow/training-operator|manifests/base/crds/kubeflow.org_mpijobs.yaml"
  "cluster|kubeflow.org_mpijobs.yaml|cluster/tools/mpi-operator|github.com/kubeflow/mpi-operator|manifests/base/kubeflow.org_mpijobs.yaml"
  "cluster|kubeflow.org_pytorchjobs.yaml|cluster/tools/training-operator|github.com/kubeflow/training-operator|manifests/base/crds/kubeflow.org_pytorchjobs.yaml"
  # kwok's per-pod log and exec rules (nodeside.py creates one of each for every pod).
  "cluster|kwok.x-k8s.io_logs.yaml|cluster/tools/kwok|sigs.k8s.io/kwok|kustomize/crd/bases/kwok.x-k8s.io_logs.yaml"
  "cluster|kwok.x-k8s.io_execs.yaml|cluster/tools/kwok|sigs.k8s.io/kwok|kustomize/crd/bases/kwok.x-k8s.io_execs.yaml"
  # Trainer v2's three kinds and JobSet's one; the trainer set's crds/ holds only these,
  # installed when the harness starts the two controllers (controlplane.py start_trainer).
  "trainer|trainer.kubeflow.org_trainjobs.yaml|cluster/tools/trainer|github.com/kubeflow/trainer/v2|manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml"
  "trainer|trainer.kubeflow.org_trainingruntimes.yaml|cluster/tools/trainer|github.com/kubeflow/trainer/v2|manifests/base/crds/trainer.kubeflow.org_trainingruntimes.yaml"
  "trainer|trainer.kubeflow.org_clustertrainingruntimes.yaml|cluster/tools/trainer|github.com/kubeflow/trainer/v2|manifests/base/crds/trainer.kubeflow.org_clustertrainingruntimes.yaml"
  "trainer|jobset.x-k8s.io_jobsets.yaml|cluster/tools/jobset|sigs.k8s.io/jobset|config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml"
  # Their webhook configurations and the install's kustomize patches of them, to webhooks/
  # (named by the kind each patch targets): the harness points them at 127.0.0.1 (trainer_v2.py).
  "trainer|../webhooks/jobset/manifests.yaml|cluster/tools/jobset|sigs.k8s.io/jobset|config/components/webhook/manifests.yaml"
  "trainer|../webhooks/jobset/MutatingWebhookConfiguration.patch.yaml|cluster/tools/jobset|sigs.k8s.io/jobset|config/components/webhook/patches/mutating-patch.yaml"
  "trainer|../webhooks/jobset/ValidatingWebhookConfiguration.patch.yaml|cluster/tools/jobset|sigs.k8s.io/jobset|config/components/webhook/patches/validating-patch.yaml"
  "trainer|../webhooks/trainer/manifests.yaml|cluster/tools/trainer|github.com/kubeflow/trainer/v2|manifests/base/webhook/manifests.yaml"
  "trainer|../webhooks/trainer/MutatingWebhookConfiguration.patch.yaml|cluster/tools/trainer|github.com/kubeflow/trainer/v2|manifests/base/webhook/patch_mutating.yaml"
  "trainer|../webhooks/trainer/ValidatingWebhookConfiguration.patch.yaml|cluster/tools/trainer|github.com/kubeflow/trainer/v2|manifests/base/webhook/patch_validating.yaml"
  # Kueue's CRDs. Its webhook configurations and the CRD patches that give five CRDs a
  # conversion webhook (those its config/components/crd/kustomization.yaml applies) go
  # beside crds/, not into it: tests/cluster/kueue.py reads their paths and points them at
  # the Kueue it starts.
  "kueue|kueue.x-k8s.io_localqueues.yaml|cluster/tools/kueue|sigs.k8s.io/kueue|config/components/crd/bases/kueue.x-k8s.io_localqueues.yaml"
  "kueue|kueue.x-k8s.io_clusterqueues.yaml|cluster/tools/kueue|sigs.k8s.io/kueue|config/components/crd/bases/kueue.x-k8s.io_clusterqueues.yaml"
  "kueue|kueue.x-k8s.io_cohorts.yaml|cluster/tools/kueue|sigs.k8s.io/kueue|config/components/crd/bases/kueue.x-k8s.io_cohorts.yaml"
  "kueue|kueue.x-k8s.io_workloads.yaml|cluster/tools/kueue|sigs.k8s.io/kueue|config/components/crd/bases/kueue.x-k8s.io_workloads.yaml"
  "kueue|kueue.x-k8s.io_resourceflavors.yaml|cluster/tools/kueue|sigs.k8s.io/kueue|config/components/crd/bases/kueue.x-k8s.io_resourceflavors.yaml"
  "kueue|kueue.x-k8s.io_admissionchecks.yaml|cluster/tools/kueue|sigs.k8s.io/kueue|config/components/crd/bases/kueue.x-k8s.io_admissionchecks.yaml"
  "kueue|kueue.x-k8s.io_workloadpriorityclasses.yaml|cluster/tools/kueue|sigs.k8s.io/kueue|config/components/crd/bases/kueue.x-k8s.io_workloadpriorityclasses.yaml"
  "kueue|kueue.x-k8s.io_provisioningrequestconfigs.yaml|cluster/tools/kueue|sigs.k8s.io/kueue|config/components/crd/bases/kueue.x-k8s.io_provisioningrequestconfigs.yaml"
  "kueue|kueue.x-k8s.io_multikueueconfigs.yaml|cluster/tools/kueue|sigs.k8s.io/kueue|config/components/crd/bases/kueue.x-k8s.io_multikueueconfigs.yaml"
  "kueue|kueue.x-k8s.io_multikueueclusters.yaml|cluster/tools/kueue|sigs.k8s.io/kueue|config/components/crd/bases/kueue.x-k8s.io_multikueueclusters.yaml"
  "kueue|kueue.x-k8s.io_topologies.yaml|cluster/tools/kueue|sigs.k8s.io/kueue|config/components/crd/bases/kueue.x-k8s.io_topologies.yaml"
  "kueue|../webhooks/kueue.yaml|cluster/tools/kueue|sigs.k8s.io/kueue|config/components/webhook/manifests.yaml"
  "kueue|../crd-conversion/webhook_in_localqueues.yaml|cluster/tools/kueue|sigs.k8s.io/kueue|config/components/crd/patches/webhook_in_localqueues.yaml"
  "kueue|../crd-conversion/webhook_in_clusterqueues.yaml|cluster/tools/kueue|sigs.k8s.io/kueue|config/components/crd/patches/webhook_in_clusterqueues.yaml"
  "kueue|../crd-conversion/webhook_in_cohorts.yaml|cluster/tools/kueue|sigs.k8s.io/kueue|config/components/crd/patches/webhook_in_cohorts.yaml"
  "kueue|../crd-conversion/webhook_in_workloads.yaml|cluster/tools/kueue|sigs.k8s.io/kueue|config/components/crd/patches/webhook_in_workloads.yaml"
  "kueue|../crd-conversion/webhook_in_multikueueclusters.yaml|cluster/tools/kueue|sigs.k8s.io/kueue|config/components/crd/patches/webhook_in_multikueueclusters.yaml"
)
SETS=(cluster node trainer kueue)

set_name=cluster action=build
while (($#)); do
  case "$1" in
    --set) set_name="${2:-}"; shift $(($# > 1 ? 2 : 1)) ;;
    --print-dir) action=print; shift ;;
    *) echo "usage: $0 [--set cluster|node|trainer|kueue] [--print-dir]" >&2; exit 2 ;;
  esac
done
if [[ " ${SETS[*]} " != *" $set_name "* ]]; then
  echo "build.sh: --set must be one of: ${SETS[*]} (not '$set_name')" >&2
  exit 2
fi

# The tool folders (under tests/) that set $1's binaries and CRDs come from.
folders_of() {
  local line s name dir rest
  for line in "${TOOLS[@]}" "${CRDS[@]}"; do
    IFS='|' read -r s name dir rest <<<"$line"
    [[ "$s" == "$1" ]] && echo "$dir"
  done | sort -u
}
# The key hashes every file of those folders (go.mod, go.sum, a runner's main.go), this
# script and the Go version.
key_of() {
  local dir
  { for dir in $(folders_of "$1"); do
      find "$tests/$dir" -maxdepth 1 -type f \( -name go.mod -o -name go.sum -o -name '*.go' \) | sort | xargs cat
    done
    cat "$script"; go env GOVERSION; } | sha256sum | cut -c1-16
}
out="$cache/$set_name/$(key_of "$set_name")"

# Removes <cache>/<set>/<key> of every key but the current ones (of every set) that no one
# holds in use; leftovers of an interrupted removal (.pruned-*) go too.
prune() {
  [[ "${KJOB_CACHE_PRUNE:-1}" == 0 ]] && return 0
  local keep=" " s d rel base size freed=0 gone=()
  for s in "${SETS[@]}"; do keep+="$s/$(key_of "$s") "; done
  for s in "${SETS[@]}"; do
    for d in "$cache/$s"/* "$cache/$s"/.pruned-*; do
      [[ -d "$d" && ! -L "$d" ]] || continue
      rel="${d#"$cache"/}" base="${d##*/}"
      [[ "$base" =~ ^[0-9a-f]{16}$ || "$base" == .pruned-* ]] || continue  # never node/containerd, or anything not ours
      [[ "$keep" == *" $rel "* ]] && continue
      # Unfinished and touched within a day: maybe a build by a build.sh from before the
      # locks (it holds none); an interrupted one goes a day later.
      [[ "$base" != .pruned-* && ! -f "$d/complete" && -n "$(find "$d" -newermt '-1 day' -print -quit 2>/dev/null)" ]] && continue
      size="$(du -sb "$d" 2>/dev/null | cut -f1 || true)"
      if [[ "$base" != .pruned-* ]]; then
        # Moved aside under the lock, so that a user who opens the lock file a moment later
        # finds the folder gone (builds.py `hold` checks) rather than half removed.
        flock -xn "$d/in-use.lock" mv "$d" "${d%/*}/.pruned-$base-$$" 2>/dev/null || continue
        d="${d%/*}/.pruned-$base-$$"
      fi
      rm -rf "$d" 2>/dev/null || true  # another build.sh may be removing the same leftovers
      freed=$((freed + ${size:-0})) && gone+=("$rel")
    done
  done
  if ((${#gone[@]})); then
    echo "build.sh: freed $(numfmt --to=iec-i --suffix=B "$freed") in $cache: ${gone[*]} (other keys' builds, unused)" >&2
  fi
}

if [[ "$action" == print ]]; then
  echo "$out"
  exit 0
fi

if [[ -f "$out/complete" ]]; then
  echo "$set_name binaries: cached in $out" >&2
  prune
  echo "$out"
  exit 0
fi

mkdir -p "$out/bin"
# One build of a key at a time: a second build.sh of the same key (the fixture of a test
# session while make test builds the same set in the background, two checkouts) waits on
# this exclusive lock for the first, then finds the folder complete, rather than building
# the same binaries into the same .tmp files beside it.
exec 8>>"$out/build.lock"
if ! flock -xn 8; then
  echo "$set_name binaries: another build.sh is building $out; waiting for it" >&2
  flock -x 8
fi
if [[ -f "$out/complete" ]]; then
  echo "$set_name binaries: cached in $out (built by another build.sh meanwhile)" >&2
  prune
  echo "$out"
  exit 0
fi
# In use while it builds: another checkout's build.sh must not remove it half-made.
exec 9>>"$out/in-use.lock"
flock -s 9
start=$SECONDS
export GOFLAGS="-mod=readonly -trimpath -buildvcs=false"

# A k8s.io/kubernetes command reports this as its version (/version, the Node's
# nodeInfo; the API server's version skew rules compare them); without it, v0.0.0-master.
k8s_ldflags() {
  local version minor
  version="$(cd "$1" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
  minor="$(echo "$version" | cut -d. -f2)"
  echo "-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1" \
       "-X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitVersion=$version"
}

# mpi-operator serves its health check on port 8080 of every address, a constant with no
# flag (cmd/mpi-operator/app/server.go healthCheckPort), so two clusters on one machine
# (two test sessions, a `make cluster-up` beside one) would kill each other's. Its build
# uses a copy of the pinned module with that one constant set to 0 (any free port), through
# a `replace` in a go.mod of its own (-modfile): the committed go.mod and the module cache
# stay untouched. The harness waits on the operator's leader lease, not on /healthz.
mpi_operator_modfile() {
  local tooldir="$1" mod="github.com/kubeflow/mpi-operator" src copy="$out/src/mpi-operator" modfile="$out/src/mpi-operator.mod"
  (cd "$tooldir" && go mod download "$mod")
  src="$(cd "$tooldir" && go list -m -f '{{.Dir}}' "$mod")"
  rm -rf "$copy" && mkdir -p "$out/src" && cp -r "$src" "$copy" && chmod -R u+w "$copy"
  sed -i 's/^\(\s*healthCheckPort\s*=\s*\)8080$/\10/' "$copy/cmd/mpi-operator/app/server.go"
  if ! grep -qE '^\s*healthCheckPort\s*=\s*0$' "$copy/cmd/mpi-operator/app/server.go"; then
    echo "build.sh: $mod no longer sets healthCheckPort = 8080; look at this patch again" >&2
    exit 1
  fi
  cp "$tooldir/go.mod" "$modfile" && cp "$tooldir/go.sum" "${modfile%.mod}.sum"
  (cd "$tooldir" && go mod edit -modfile="$modfile" -replace "$mod=$copy")
  echo "-modfile=$modfile"
}

for t in "${TOOLS[@]}"; do
  IFS='|' read -r s name dir pkg <<<"$t"
  [[ "$s" == "$set_name" && ! -x "$out/bin/$name" ]] || continue
  tooldir="$tests/$dir"
  ldflags="-s -w"
  [[ "$pkg" == k8s.io/kubernetes/* ]] && ldflags="$(k8s_ldflags "$tooldir")"
  extra=()
  [[ "$name" == mpi-operator ]] && extra=("$(mpi_operator_modfile "$tooldir")")
  echo "building $name ($pkg)" >&2
  t0=$SECONDS
  (cd "$tooldir" && nice -n 10 go build "${extra[@]}" -ldflags "$ldflags" -o "$out/bin/$name.tmp" "$pkg")
  mv "$out/bin/$name.tmp" "$out/bin/$name"
  echo "built $name in $((SECONDS - t0))s" >&2
done

for c in "${CRDS[@]}"; do
  IFS='|' read -r s file dir mod path <<<"$c"
  [[ "$s" == "$set_name" ]] || continue
  tooldir="$tests/$dir"
  moddir="$(cd "$tooldir" && go list -m -f '{{.Dir}}' "$mod")"
  if [[ -z "$moddir" || ! -d "$moddir" ]]; then
    (cd "$tooldir" && go mod download "$mod")
    moddir="$(cd "$tooldir" && go list -m -f '{{.Dir}}' "$mod")"
  fi
  mkdir -p "$(dirname "$out/crds/$file")"
  install -m 0644 "$moddir/$path" "$out/crds/$file"
done

echo "$set_name binaries: built in $((SECONDS - start))s into $out" >&2
touch "$out/complete"
prune
echo "$out"
