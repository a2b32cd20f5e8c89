"""The import layers of submitter/kjob and trainer/kjob_trainer hold (import-linter,
configured in pyproject.toml), and the check would catch the imports that would undo them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"
PACKAGES = {"kjob": ROOT / "submitter" / "kjob", "kjob_trainer": ROOT / "trainer" / "kjob_trainer"}


def lint(package_parent: Path | None = None) -> subprocess.CompletedProcess:
    """lint-imports with the project's contracts, on the checkout's packages or on copies of
    both under `package_parent` (which then comes first on the import path)."""
    env = dict(os.environ)
    if package_parent is not None:
        env["PYTHONPATH"] = str(package_parent)
    return subprocess.run([str(LINT), "--config", str(ROOT / "pyproject.toml")], cwd=package_parent or ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def lint_with(tmp_path: Path, module: str, line: str) -> subprocess.CompletedProcess:
    """lint() on copies of both packages, `line` appended to `module` (a path under them)."""
    for name, source in PACKAGES.items():
        shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / module, "a", encoding="utf-8") as f:
        f.write(f"\n\n{line}\n")
    return lint(tmp_path)


def test_the_layers_hold():
    done = lint()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 7 kept, 0 broken." in done.stdout


@pytest.mark.parametrize("module, line, broken", [
    ("kjob/cluster/stopping.py", "from kjob.local import procs", "kjob.cluster is not allowed to import kjob.local"),
    ("kjob/local/backend.py", "from kjob.cluster import pods", "kjob.local is not allowed to import kjob.cluster"),
    ("kjob/render/manifests.py", "from kjob import plan", "kjob.render is not allowed to import kjob.plan"),
    ("kjob/render/commands.py", "from kjob.cluster import requests", "kjob.render is not allowed to import kjob.cluster"),
    ("kjob/spec/model.py", "from kjob.render import text", "kjob.spec is not allowed to import kjob.render"),
    ("kjob/names.py", "from kjob.spec import checks", "kjob.names is not allowed to import kjob.spec"),
    # Hiding it inside a function does not hide it from the check.
    ("kjob/transfer/index.py", "def later():\n    from kjob.local import runrecord", "kjob.transfer is not allowed to import kjob.local"),
    ("kjob/render/text.py", "import kubernetes", "kjob.render is not allowed to import kubernetes"),
    # The two programs stay apart.
    ("kjob/render/commands.py", "from kjob_trainer.common import cli_args", "kjob is not allowed to import kjob_trainer"),
    # The trainer's rooms: the frameworks never import each other, nor an entry point...
    ("kjob_trainer/torch/train.py", "from kjob_trainer.mindspore import data",
     "kjob_trainer.torch is not allowed to import kjob_trainer.mindspore"),
    ("kjob_trainer/mindspore/eval.py", "def later():\n    from kjob_trainer.torch import state",
     "kjob_trainer.mindspore is not allowed to import kjob_trainer.torch"),
    ("kjob_trainer/torch/eval.py", "from kjob_trainer import evaluate",
     "kjob_trainer.torch is not allowed to import kjob_trainer.evaluate"),
    # ...nor the launcher, which imports none of them;
    ("kjob_trainer/launch/pid1.py", "from kjob_trainer.torch import setup",
     "kjob_trainer.launch is not allowed to import kjob_trainer.torch"),
    ("kjob_trainer/launch/ssh_hosts.py", "import mindspore", "kjob_trainer.launch is not allowed to import mindspore"),
    # the shared modules import no room above them and no framework, even lazily;
    ("kjob_trainer/common/config.py", "from kjob_trainer.launch import ssh_hosts",
     "kjob_trainer.common is not allowed to import kjob_trainer.launch"),
    ("kjob_trainer/common/run_protocol.py", "from kjob_trainer.mindspore import train",
     "kjob_trainer.common is not allowed to import kjob_trainer.mindspore"),
    ("kjob_trainer/common/metrics.py", "def later():\n    import torch", "kjob_trainer.common is not allowed to import torch"),
    # and `import torch` inside kjob_trainer/mindspore/ is PyTorch, not kjob_trainer.torch.
    ("kjob_trainer/mindspore/data.py", "import torch", "kjob_trainer.mindspore is not allowed to import torch"),
    ("kjob_trainer/mindspore/setup.py", "import nvidia.dali", "kjob_trainer.mindspore is not allowed to import nvidia"),
    ("kjob_trainer/torch/models.py", "import mindcv", "kjob_trainer.torch is not allowed to import mindcv"),
])
def test_an_import_against_the_layers_breaks_the_check(tmp_path, module, line, broken):
    done = lint_with(tmp_path, module, line)
    assert done.returncode == 1, done.stdout + done.stderr
    assert broken in done.stdout, done.stdout
