"""The import layers of submitter/kjob hold (import-linter, configured in pyproject.toml),
and the check would catch the imports that would undo them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def lint(package_parent: Path | None = None) -> subprocess.CompletedProcess:
    """lint-imports with the project's contracts, on the checkout's kjob or on a copy of
    it under `package_parent` (which then comes first on the import path)."""
    env = dict(os.environ)
    if package_parent is not None:
        env["PYTHONPATH"] = str(package_parent)
    return subprocess.run([str(LINT), "--config", str(ROOT / "pyproject.toml")], cwd=package_parent or ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_layers_hold():
    done = lint()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken." in done.stdout


@pytest.mark.parametrize("module, line, broken", [
    ("cluster/stopping.py", "from kjob.local import procs", "kjob.cluster is not allowed to import kjob.local"),
    ("local/backend.py", "from kjob.cluster import pods", "kjob.local is not allowed to import kjob.cluster"),
    ("render/manifests.py", "from kjob import plan", "kjob.render is not allowed to import kjob.plan"),
    ("render/commands.py", "from kjob.cluster import requests", "kjob.render is not allowed to import kjob.cluster"),
    ("spec/model.py", "from kjob.render import text", "kjob.spec is not allowed to import kjob.render"),
    ("names.py", "from kjob.spec import checks", "kjob.names is not allowed to import kjob.spec"),
    # Hiding it inside a function does not hide it from the check.
    ("transfer/index.py", "def later():\n    from kjob.local import runrecord", "kjob.transfer is not allowed to import kjob.local"),
    ("render/text.py", "import kubernetes", "kjob.render is not allowed to import kubernetes"),
])
def test_an_import_against_the_layers_breaks_the_check(tmp_path, module, line, broken):
    shutil.copytree(ROOT / "submitter" / "kjob", tmp_path / "kjob")
    with open(tmp_path / "kjob" / module, "a", encoding="utf-8") as f:
        f.write(f"\n\n{line}\n")
    done = lint(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert broken in done.stdout, done.stdout
