#!/usr/bin/env bash
# Wall time of `make demo` from a fresh clone (issue 6): clone this repository into a
# scratch folder (with ../shared beside it, as CI has it), run `time make demo` there
# (it creates .venv-demo: a few minutes of install and ~6 GB), print the phases,
# remove the scratch folder. Not part of `make bench`: it takes minutes and gigabytes.
#   bench/demo_fresh_clone.sh            # uses this checkout's committed HEAD
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
git clone -q "$repo" "$scratch/main"
cp -r "$repo/../shared" "$scratch/shared"
cd "$scratch/main"
start=$(date +%s)
# The install alone first (make demo's prerequisite), then make demo, which finds it done.
make demo-install 2>&1 | grep -v "^WARNING: Location" || { echo "make demo-install FAILED"; exit 1; }
installed=$(date +%s)
make demo 2>&1 | grep -v "^WARNING: Location" || { echo "make demo FAILED"; exit 1; }
end=$(date +%s)
echo "---"
echo "machine:      $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "install:      $((installed - start)) s (venv + torch/torchvision + kjob[pytorch,mpi])"
echo "training run: $((end - installed)) s (kjob submit examples/smoke.yaml --local --follow)"
echo "make demo:    $((end - start)) s wall"
