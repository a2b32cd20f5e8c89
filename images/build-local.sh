#!/usr/bin/env bash
# Builds both trainer images on this machine, with no registry at all, and loads them into
# the local node's containerd (tests/node/containerd.sh, namespace k8s.io):
#
#   images/build-local.sh                 # both images
#   images/build-local.sh pytorch         # one of them
#   KJOB_NO_LOAD=1 images/build-local.sh  # build only; do not touch containerd
#
# The images come from images/*/Dockerfile exactly as a production build makes them; the
# only difference is the base (`--build-arg CUDA_IMAGE=`): a Debian bookworm made here with
# debootstrap instead of nvidia/cuda from Docker Hub, which this machine cannot reach.
# It also makes the pause (sandbox) image the node's pods need.
#
# Everything it keeps lives outside the clone, in ${KJOB_CACHE:-$HOME/.cache/kjob}/images:
# the base tarball, podman's storage (the base image, and layers: see below), one stamp per
# image: a hash of its Dockerfile, the lock, the sources the Dockerfile copies and the base.
# When the stamp matches and containerd has the image, nothing is done (without waiting
# for another build). After loading an image into containerd, podman's copy of it is
# removed (a disk shared with others cannot hold both), but not its build stage (tagged
# localhost/kjob/NAME-build:cache), whose dependency layer a change to the sources reuses;
# KJOB_KEEP_LAYERS=1 keeps every layer.
#
# Needs root (podman, debootstrap, containerd) and apt-get for the tools it installs.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${KJOB_CACHE:-$HOME/.cache/kjob}/images"
run="${KJOB_NODE_RUN:-/run/kjob-node}"
BASE_IMAGE="localhost/kjob/debian-bookworm:base"
PAUSE_IMAGE="localhost/kjob/pause:local"
# The tags the examples run (images/README.md).
declare -A TAGS=(
  [pytorch]="ghcr.io/kjob/kjob-trainer-pytorch:0.1.0"
  [mindspore]="ghcr.io/kjob/kjob-trainer-mindspore:0.1.0"
)
DEBIAN_MIRROR="${KJOB_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# The registries here are trusted through the host's CA bundle (pip on a fresh base fails
# with CERTIFICATE_VERIFY_FAILED without it): mounted read-only into every RUN step, never
# copied into a layer, with a pip.conf that points pip at it. Not at the bundle's own path
# (/etc/ssl/certs/ca-certificates.crt): python3-venv pulls in the ca-certificates package,
# whose postinst replaces that file and fails on a mount ("Device or resource busy").
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
CA_IN_BUILD=/etc/kjob-build-ca.crt
# This machine has no CAP_SYS_RESOURCE: a container's rlimits may not exceed its own.
ULIMITS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)

log() { echo "[build-local $(date +%T)] $*" >&2; }
# podman's own storage for these builds (base, layers, images), kept in the cache.
podman() { command podman --root "$cache/storage" --runroot "$run/podman" --storage-driver overlay "$@"; }

need_tools() {
  local missing=()
  for pkg in podman buildah debootstrap containerd runc containernetworking-plugins; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

make_base() {
  local tarball="$cache/debian-bookworm-minbase.tar"
  if ! [[ -f "$tarball" ]]; then
    log "debootstrap bookworm (minbase) from $DEBIAN_MIRROR"
    local root
    root="$(mktemp -d "$cache/rootfs.XXXXXX")"
    nice debootstrap --variant=minbase bookworm "$root" "$DEBIAN_MIRROR" >"$cache/debootstrap.log" 2>&1 \
      || { tail -20 "$cache/debootstrap.log" >&2; rm -rf "$root"; return 1; }
    # What a Docker image of Debian also leaves out: apt's downloaded packages and lists.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  fi
  if ! podman image exists "$BASE_IMAGE" || [[ "$(podman image inspect -f '{{index .Labels "kjob.base-tarball"}}' "$BASE_IMAGE" 2>/dev/null)" != "$(stat -c %Y "$tarball")" ]]; then
    log "importing the base as $BASE_IMAGE"
    podman import --quiet --change "LABEL kjob.base-tarball=$(stat -c %Y "$tarball")" --change 'CMD ["/bin/bash"]' \
      "$tarball" "$BASE_IMAGE" >/dev/null
  fi
}

make_pause() {
  local bin="$cache/pause/pause" src
  mkdir -p "$cache/pause"
  src="$(sha256sum <"$repo/images/local/pause.go")"
  if ! [[ -x "$bin" && "$(cat "$cache/pause/source.sha256" 2>/dev/null)" == "$src" ]]; then
    (cd "$cache/pause" && CGO_ENABLED=0 GOFLAGS=-trimpath go build -ldflags "-s -w" -o pause.tmp "$repo/images/local/pause.go")
    mv "$cache/pause/pause.tmp" "$bin"
    echo "$src" >"$cache/pause/source.sha256"
    podman rmi -f "$PAUSE_IMAGE" >/dev/null 2>&1 || true
  fi
  if ! podman image exists "$PAUSE_IMAGE"; then
    tar -C "$cache/pause" --owner=0 --group=0 -cf "$cache/pause/pause.tar" pause
    podman import --quiet --change 'ENTRYPOINT ["/pause"]' --change 'USER 65535:65535' "$cache/pause/pause.tar" "$PAUSE_IMAGE" >/dev/null
  fi
  echo "$PAUSE_IMAGE"
}

# podman's tag of an image's build stage (its layer cache; see build()).
build_cache_tag() { echo "localhost/kjob/$1-build:cache"; }

# The hash of everything the image is made from (what the Dockerfile copies, per .dockerignore).
inputs_hash() {
  local name="$1"
  {
    cd "$repo"
    sha256sum "images/$name/Dockerfile" images/requirements.py requirements.lock pyproject.toml README.md .dockerignore
    find submitter manifests trainer images/ssh -type f ! -name '*.pyc' ! -path '*/__pycache__/*' ! -path '*.egg-info/*' -print0 \
      | sort -z | xargs -0 sha256sum
    podman image inspect -f '{{.Id}}' "$BASE_IMAGE"
  } | sha256sum | cut -c1-16
}

# fd 9 (the build lock, main) is closed for it: containerd outlives this script, and a
# containerd holding the lock left every later build waiting on it for ever.
containerd_sock() { "$repo/tests/node/containerd.sh" start 9>&-; }

in_containerd() {  # image tag -> true when the node's containerd has it
  # Listed first, then searched: `ctr ... | grep -q` fails under pipefail whenever grep
  # exits before ctr has written everything (SIGPIPE), and a loaded image looks missing.
  local listed
  listed="$(ctr --address "$(containerd_sock)" -n k8s.io images ls -q)"
  grep -qxF "$1" <<<"$listed"
}

image_digest() {  # socket, ref -> the manifest digest the ref names in containerd (empty: none)
  local listed
  listed="$(ctr --address "$1" -n k8s.io images ls)"
  awk -v ref="$2" '$1 == ref {print $3}' <<<"$listed"
}

load() {  # image tag -> into containerd's k8s.io namespace (what the kubelet uses)
  # A stale copy of the tag is already gone (build() unloads it first).
  local sock; sock="$(containerd_sock)"
  log "loading $1 into containerd (k8s.io)"
  podman save --format docker-archive "$1" | ctr --address "$sock" -n k8s.io images import --no-unpack=false - >/dev/null
  in_containerd "$1"
}

unload() {  # image tag -> out of containerd (with the kubelet's sha256: name of it), before a rebuild
  # The stale copy (a PyTorch image is ~13 GB in containerd, content and snapshot) and a new
  # one being built and loaded do not fit together on a disk a CI clone shares: a build
  # beside a test run failed here with "no space left on device". So the stale one goes
  # first; a failed build then leaves no image rather than a stale one. The kubelet's CRI
  # names every image it has seen by its id too (sha256:...): that name would keep the
  # replaced image's layers on disk for good, so it goes with the tag.
  local sock digest listed; sock="$(containerd_sock)"
  digest="$(image_digest "$sock" "$1")"
  [[ -n "$digest" ]] || return 0
  log "$1: removing the stale copy from containerd first (disk)"
  listed="$(ctr --address "$sock" -n k8s.io images ls)"
  { echo "$1"; awk -v d="$digest" '$1 ~ /^sha256:/ && $3 == d {print $1}' <<<"$listed"; } \
    | xargs -r ctr --address "$sock" -n k8s.io images rm --sync >/dev/null
}

# Has the image of these inputs been built (and, unless KJOB_NO_LOAD, loaded)?
up_to_date() {
  local name="$1" tag="$2" hash="$3"
  [[ -f "$cache/$name.stamp" && "$(cat "$cache/$name.stamp")" == "$hash" ]] || return 1
  if [[ -n "${KJOB_NO_LOAD:-}" ]]; then podman image exists "$tag"; else in_containerd "$tag"; fi
}

all_up_to_date() {
  [[ -f "$cache/debian-bookworm-minbase.tar" ]] && podman image exists "$BASE_IMAGE" || return 1
  [[ "$(cat "$cache/pause/source.sha256" 2>/dev/null)" == "$(sha256sum <"$repo/images/local/pause.go")" ]] || return 1
  if [[ -z "${KJOB_NO_LOAD:-}" ]]; then in_containerd "$PAUSE_IMAGE" || return 1; fi
  local n
  for n in "$@"; do up_to_date "$n" "${TAGS[$n]}" "$(inputs_hash "$n")" || return 1; done
}

# Free disk a cold build wants: the PyTorch image's venv (about 7 GB) is held at once by
# its build stage, by the layer that copies it into the image, and by containerd's import.
# A fresh machine's `make test` (Go builds and tests beside it) took the disk from 32 to
# 5 GB free during that build, and an earlier one failed ("no space left on device").
NEED_GB=30
free_gb() { df --output=avail -BG "$cache" | tail -1 | tr -dc 0-9; }

build() {
  local name="$1" tag="${TAGS[$1]}" stamp="$cache/$1.stamp" hash t0=$SECONDS
  hash="$(inputs_hash "$name")"
  if up_to_date "$name" "$tag" "$hash"; then
    log "$tag: unchanged ($hash)"
    return 0
  else
    rm -f "$stamp"
    if [[ -z "${KJOB_NO_LOAD:-}" ]]; then unload "$tag"; fi
    log "$tag: building from images/$name/Dockerfile on $BASE_IMAGE"
    if (($(free_gb) < NEED_GB)); then
      log "warning: $(free_gb) GB free on $cache's disk; a cold build can need about $NEED_GB GB"
    fi
    printf '[global]\ncert = %s\n' "$CA_IN_BUILD" >"$cache/pip.conf"
    # The build stage first, tagged: its layers (the multi-GB dependency layer above all)
    # are what a rebuild after a change to the sources reuses, so they outlive the image.
    # Then the image itself, from those cached layers.
    local args=(--layers --network host --pull=never "${ULIMITS[@]}"
                --volume "$CA_BUNDLE:$CA_IN_BUILD:ro" --volume "$cache/pip.conf:/etc/pip.conf:ro"
                --build-arg "CUDA_IMAGE=$BASE_IMAGE" -f "images/$name/Dockerfile")
    (cd "$repo" && podman build "${args[@]}" --target build -t "$(build_cache_tag "$name")" . \
      && podman build "${args[@]}" --label "kjob.inputs=$hash" -t "$tag" .) >"$cache/$name.build.log" 2>&1 \
      || { tail -40 "$cache/$name.build.log" >&2; log "$tag: build failed; the whole log is $cache/$name.build.log"
           if grep -q "no space left on device" "$cache/$name.build.log"; then
             log "$tag: the disk ran out ($(free_gb) GB free now; a cold build can need about $NEED_GB GB): free some and run it again"
           fi
           return 1; }
    echo "$hash" >"$stamp"
    log "$tag: built in $((SECONDS - t0)) s ($(podman image inspect -f '{{.Size}}' "$tag" | numfmt --to=iec))"
  fi
  if [[ -z "${KJOB_NO_LOAD:-}" ]]; then
    load "$tag"
    # The multi-GB image now lives in containerd; on a shared disk, podman's copy of it
    # goes (the tagged build stage stays, for the next rebuild), unless KJOB_KEEP_LAYERS=1
    # keeps every layer (unchanged inputs are skipped either way, by the stamp).
    if [[ -z "${KJOB_KEEP_LAYERS:-}" ]]; then
      podman rmi "$tag" >/dev/null
      podman image prune --force >/dev/null || log "warning: podman image prune failed; the image is built and loaded"
    fi
  fi
}

main() {
  local names=("$@") t0=$SECONDS
  ((${#names[@]})) || names=(pytorch mindspore)
  for n in "${names[@]}"; do [[ -n "${TAGS[$n]:-}" ]] || { echo "unknown image $n (pytorch, mindspore)" >&2; exit 2; }; done
  [[ "$(id -u)" == 0 ]] || { echo "build-local.sh needs root (podman, debootstrap, containerd)" >&2; exit 1; }
  mkdir -p "$cache" "$run"
  # Nothing to do (every stamp matches and the images are loaded): say so without waiting
  # for the lock, which a build of another image may hold for many minutes. A build
  # removes its stamp before it starts, so a half-built image never looks done.
  if all_up_to_date "${names[@]}"; then
    log "unchanged: ${names[*]}"
    return 0
  fi
  # One build at a time per cache (a test session and a person may both start one).
  exec 9>"$cache/.lock"
  flock 9
  need_tools
  # Working containers an interrupted build left behind (we hold the lock: no build runs)
  # would pin their layers on disk.
  command buildah --root "$cache/storage" --runroot "$run/podman" --storage-driver overlay rm --all >/dev/null 2>&1 || true
  make_base
  make_pause >/dev/null
  if [[ -z "${KJOB_NO_LOAD:-}" ]] && ! in_containerd "$PAUSE_IMAGE"; then load "$PAUSE_IMAGE"; fi
  for n in "${names[@]}"; do build "$n"; done
  log "done in $((SECONDS - t0)) s"
}

# Builds are long and the machine is shared: everything below runs at a lower priority.
renice -n 10 $$ >/dev/null
main "$@"
