"""What the repository commits from the specs and models is current:
manifests/examples/, manifests/kjob-spec.schema.json, the README spec reference and the
Argo CD patch. Fix a failure with `make render-examples`."""

from __future__ import annotations

import pytest

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import render_examples as gen  # noqa: E402 - tools/ is not a package: it is not installed
from spec_docs import BEGIN, END, replace_block, spec_reference  # noqa: E402

HINT = "stale: run `make render-examples` (python tools/render_examples.py)"


def test_example_manifests_are_current():
    expected = gen.expected_example_files()
    assert {p.parent.name for p in expected} == {p.stem for p in gen.example_specs()}
    for path, text in expected.items():
        assert path.exists(), f"{path} is missing; {HINT}"
        assert path.read_text(encoding="utf-8") == text, f"{path} is {HINT}"
    committed = {p for p in gen.OUT.rglob("*") if p.is_file()}
    assert committed == set(expected), f"unexpected files under manifests/examples: {sorted(committed - set(expected))}"


def test_schema_file_is_current():
    assert gen.SCHEMA.read_text(encoding="utf-8") == gen.schema_text(), f"{gen.SCHEMA} is {HINT}"


def test_argocd_patch_is_current():
    path = gen.ARGOCD / "argocd-cm-patch.yaml"
    assert path.read_text(encoding="utf-8") == gen.argocd_patch_text(), f"{path} is {HINT}"


def test_readme_spec_reference_is_current():
    readme = gen.README.read_text(encoding="utf-8")
    assert readme.count(BEGIN) == 1 and readme.count(END) == 1
    assert replace_block(readme, spec_reference()) == readme, f"README.md spec reference is {HINT}"


def test_spec_reference_lists_every_field():
    table = spec_reference()
    for path in ("name", "gpusPerWorker", "train.batchSize", "data.nfs.server", "tolerations[].effect", "runPolicy.cleanPodPolicy", "local.processes"):
        assert f"| `{path}` |" in table


def test_replace_block_needs_markers():
    with pytest.raises(ValueError):
        replace_block("no markers here", spec_reference())
