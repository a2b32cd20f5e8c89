"""Regenerate what the repository commits from examples/*.yaml and the spec models:

    manifests/examples/<name>/   kustomize-buildable output of `kjob render -o`
    manifests/runtimes/          kjob's ClusterTrainingRuntimes, for `kubectl apply -f`
    manifests/kjob-spec.schema.json   `kjob schema` (examples' yaml-language-server line)
    README.md spec reference     the table between the spec-reference markers

Run `python tools/render_examples.py` (`make render-examples`) after changing a spec,
a template or the models; tests/test_render_examples.py fails while any of these is
stale. A repository tool: it writes into this checkout, so it is not in the wheel.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from spec_docs import replace_block, spec_reference

from kjob.names import RUNTIMES
from kjob.render.manifests import render_objects, runtime_object, runtime_objects
from kjob.render.text import file_name, kustomization, object_text, write_gitops_dir
from kjob.spec.load import load_spec
from kjob.spec.model import json_schema

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
OUT = ROOT / "manifests" / "examples"
RUNTIMES_DIR = ROOT / "manifests" / "runtimes"
SCHEMA = ROOT / "manifests" / "kjob-spec.schema.json"
ARGOCD = ROOT / "manifests" / "argocd"
# Argo CD reads custom health checks from argocd-cm, one key per group_Kind.
HEALTH_KINDS = ("kubeflow.org_MPIJob", "kubeflow.org_PyTorchJob", "trainer.kubeflow.org_TrainJob")
README = ROOT / "README.md"


def example_specs() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def expected_example_files() -> dict[Path, str]:
    """Every file under manifests/examples/ as `kjob render -o` writes it."""
    files: dict[Path, str] = {}
    for spec_path in example_specs():
        objects = example_objects(spec_path)
        names = [file_name(o) for o in objects]
        for name, obj in zip(names, objects):
            files[OUT / spec_path.stem / name] = object_text(obj)
        files[OUT / spec_path.stem / "kustomization.yaml"] = kustomization(names)
    return files


def example_objects(spec_path: Path) -> list[dict]:
    """What `kjob render -o` writes for one example: the runtime it uses, then the job."""
    spec = load_spec(spec_path)
    return runtime_objects([spec]) + render_objects(spec)


def expected_runtime_files() -> dict[Path, str]:
    """manifests/runtimes/<name>.yaml: each of kjob's ClusterTrainingRuntimes."""
    return {RUNTIMES_DIR / f"{name}.yaml": object_text(runtime_object(launcher)) for launcher, name in RUNTIMES.items()}


def argocd_patch_text() -> str:
    """argocd-cm patch carrying health.lua for the three kinds (a strategic-merge patch)."""
    lua = (ARGOCD / "health.lua").read_text(encoding="utf-8")
    cm = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "argocd-cm", "namespace": "argocd",
                       "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"}},
          "data": {f"resource.customizations.health.{kind}": lua for kind in HEALTH_KINDS}}
    header = "# Generated from health.lua by `make render-examples`; apply with kubectl patch or kustomize.\n"
    return header + _dump_with_blocks(cm)


def _dump_with_blocks(obj) -> str:
    """YAML with multi-line strings as literal blocks (`|`), so the Lua stays readable."""
    import yaml

    class BlockDumper(yaml.SafeDumper):
        pass

    def represent_str(dumper, data):
        style = "|" if "\n" in data else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    BlockDumper.add_representer(str, represent_str)
    return yaml.dump(obj, Dumper=BlockDumper, sort_keys=False, allow_unicode=True, width=1000)


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"


def main() -> int:
    for stale in sorted(p for p in OUT.iterdir() if p.is_dir()) if OUT.exists() else []:
        if not (EXAMPLES / f"{stale.name}.yaml").exists():
            print(f"remove {stale.relative_to(ROOT)} by hand: its spec is gone", file=sys.stderr)
    for spec_path in example_specs():
        written = write_gitops_dir(example_objects(spec_path), OUT / spec_path.stem)
        print(f"wrote {', '.join(str(p.relative_to(ROOT)) for p in written)}")
    RUNTIMES_DIR.mkdir(exist_ok=True)
    for path, text in expected_runtime_files().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    SCHEMA.write_text(schema_text(), encoding="utf-8")
    (ARGOCD / "argocd-cm-patch.yaml").write_text(argocd_patch_text(), encoding="utf-8")
    print(f"wrote {(ARGOCD / 'argocd-cm-patch.yaml').relative_to(ROOT)}")
    print(f"wrote {SCHEMA.relative_to(ROOT)}")
    README.write_text(replace_block(README.read_text(encoding="utf-8"), spec_reference()), encoding="utf-8")
    print(f"updated the spec reference in {README.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
