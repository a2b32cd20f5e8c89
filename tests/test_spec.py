"""The job spec: defaults, checks, positions of errors, the JSON Schema (kjob.spec)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from kjob.errors import InvalidInput
from kjob.spec.checks import max_name_length, parse_quantity
from kjob.spec.load import load_spec, load_specs, parse_spec, with_namespace
from kjob.spec.model import JobSpec, json_schema
from timing import scaled

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
MINIMAL = "name: job\nimage: ghcr.io/kjob/trainer:0.1.0\ndata: {pvc: imagenet}\ncheckpoints: {claimName: ckpt}\n"


def problems(text: str) -> list[str]:
    with pytest.raises(InvalidInput) as e:
        parse_spec(text, "s.yaml")
    return e.value.problems


def test_minimal_spec_gets_the_reference_recipe_defaults():
    spec = parse_spec(MINIMAL)
    assert (spec.framework, spec.launcher, spec.workers, spec.gpus_per_worker) == ("pytorch", "mpi", 1, 8)
    t = spec.train
    assert (t.epochs, t.batch_size, t.lr, t.momentum, t.weight_decay) == (90, 32, 0.1, 0.9, 1e-4)
    assert (t.label_smoothing, t.lr_schedule, t.warmup_epochs) == (0.1, "cosine", 5)
    assert spec.output_path == "/checkpoints/job"
    assert spec.kind == "MPIJob" and spec.world_size == 8


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_are_valid(path):
    spec = load_spec(path)
    assert spec.name == path.stem


def test_example_recipes():
    by_name = {p.stem: load_spec(p) for p in EXAMPLES}
    assert by_name["resnext50"].kind == "MPIJob" and by_name["resnext50"].world_size == 8
    ms = by_name["resnext50-mindspore"]
    assert (ms.framework, ms.train.epochs, ms.train.batch_size, ms.train.amp) == ("mindspore", 150, 32, "fp16")
    tr = by_name["resnext50-torchrun"]
    assert (tr.kind, tr.workers, tr.gpus_per_worker) == ("PyTorchJob", 2, 8)
    assert by_name["resnest50"].model == "resnest50" and by_name["resnest50"].gpus_per_worker == 4
    smoke = by_name["smoke"]
    assert smoke.gpus_per_worker == 0 and smoke.train.synthetic and smoke.local.processes == 8


def test_camel_case_only():
    # snake_case keys are typos in a spec, not synonyms
    assert problems(MINIMAL + "gpus_per_worker: 4\n") == ["s.yaml:5:1: gpus_per_worker: unknown field; did you mean 'gpusPerWorker'?"]


def test_exponent_without_dot_is_a_number():
    spec = parse_spec(MINIMAL + "train: {weightDecay: 5e-5}\n")
    assert spec.train.weight_decay == 5e-5


def test_unquoted_off_means_off():
    assert parse_spec(MINIMAL + "train: {amp: off}\n").train.amp == "off"


def test_every_problem_in_one_run_sorted_by_line():
    text = "name: Job\nimage: ghcr.io/kjob/trainer:0.1.0\ndata: {pvc: imagenet}\ncheckpoints: {claimName: ckpt}\nworkers: 0\ntrain: {epochs: x}\n"
    assert problems(text) == [
        "s.yaml:1:7: name: 'Job' is not a valid job name: lowercase letters, digits and '-', starting with a letter and ending with a letter or digit",
        "s.yaml:5:10: workers: must be at least 1, got 0",
        "s.yaml:6:17: train.epochs: must be an integer, got 'x'",
    ]


def test_cross_field_checks_still_run_when_another_field_is_bad():
    text = MINIMAL.replace("name: job\n", "name: job\nframework: mindspore\nlauncher: torchrun\nworkers: -1\n")
    assert problems(text) == [
        "s.yaml:3:11: launcher: torchrun starts PyTorch only; use launcher: mpi with framework: mindspore",
        "s.yaml:4:10: workers: must be at least 1, got -1",
    ]


def test_name_length_limit_follows_the_pod_names():
    spec = parse_spec(MINIMAL)
    assert max_name_length(spec) == 48  # <name>-launcher-xxxxx
    many = parse_spec(MINIMAL + "workers: 1000\n")
    assert max_name_length(many) == 48  # -launcher-xxxxx is longer than -worker-999
    torchrun = parse_spec(MINIMAL + "launcher: torchrun\nworkers: 12\n")
    assert max_name_length(torchrun) == 63 - len("-worker-10")
    ok = "a" * 48
    assert parse_spec(MINIMAL.replace("name: job", f"name: {ok}")).name == ok
    assert problems(MINIMAL.replace("name: job", f"name: {ok}b"))[0].startswith("s.yaml:1:7: name: 'aaaa")


@pytest.mark.parametrize("text, value", [("8", 8), ("500m", Decimal("0.5")), ("64Gi", 64 * 2**30), ("1.5k", 1500), ("2e3", 2000), (".5", Decimal("0.5"))])
def test_quantities(text, value):
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "8 cores", "1.2.3", "Gi", "-1", "5GB", "1e"])
def test_bad_quantities(text):
    with pytest.raises(ValueError):
        parse_quantity(text)


@pytest.mark.parametrize("image", ["trainer", "ghcr.io/kjob/trainer:0.1.0", "localhost:5000/a/b", "a/b@sha256:" + "0" * 64,
                                   "registry.example.com:443/team/x-y_z:v1.2-rc.1"])
def test_good_images(image):
    assert parse_spec(MINIMAL.replace("ghcr.io/kjob/trainer:0.1.0", image)).image == image


@pytest.mark.parametrize("image", ["Trainer", "a//b", "a/b:", "a/b:tag with space", "a/b@sha256:12", "-a/b", "a/b:-tag"])
def test_bad_images(image):
    assert "is not an image reference" in problems(MINIMAL.replace("ghcr.io/kjob/trainer:0.1.0", f'"{image}"'))[0]


def test_data_sources():
    base = MINIMAL.replace("data: {pvc: imagenet}\n", "")
    assert parse_spec(base + "data: {hostPath: /mnt/imagenet}\n").data.host_path == "/mnt/imagenet"
    nfs = parse_spec(base + "data: {nfs: {server: 10.0.0.2, path: /exports/in}, mountPath: /in}\n").data
    assert (nfs.nfs.server, nfs.nfs.path, nfs.mount_path) == ("10.0.0.2", "/exports/in", "/in")
    assert problems(base + "data: {}\n") == ["s.yaml:4:7: data: give exactly one of pvc, hostPath, nfs"]
    assert parse_spec(base + "train: {synthetic: true}\n").data is None


def test_surrogates_are_rejected():
    # libyaml refuses the escape; the model refuses it from other sources (JSON, Python)
    assert problems(MINIMAL + 'env: {A: "\\ud800"}\n') == ["s.yaml:5:13: (yaml): while parsing a quoted scalar found invalid Unicode character escape code"]
    data = {**yaml.safe_load(MINIMAL), "env": {"A": "\ud800"}}
    with pytest.raises(ValueError, match="unpaired UTF-16 surrogate"):
        JobSpec.model_validate(data)


def test_spec_hash_is_stable_and_ignores_local():
    a = parse_spec(MINIMAL)
    b = parse_spec(MINIMAL + "local: {processes: 3}\n")
    c = parse_spec(MINIMAL + "workers: 2\n")
    assert a.spec_hash() == b.spec_hash() != c.spec_hash()
    assert a.spec_hash().startswith("sha256:") and len(a.spec_hash()) == 7 + 64
    # a decoder counts once set (unset, the hash is what it was before the field existed:
    # the committed manifests/examples, checked by test_render_examples, carry those hashes)
    assert parse_spec(MINIMAL + "train: {decoder: torchvision}\n").spec_hash() != a.spec_hash()
    # the key order of the file does not matter
    reordered = "\n".join(reversed(MINIMAL.strip().splitlines())) + "\n"
    assert parse_spec(reordered).spec_hash() == a.spec_hash()


def test_with_namespace():
    spec = parse_spec(MINIMAL)
    assert with_namespace(spec, "team-a").namespace == "team-a"
    assert with_namespace(spec, None) is spec
    with pytest.raises(InvalidInput, match=r"^--namespace: 'Team_A' is not a valid Kubernetes name"):
        with_namespace(spec, "Team_A")


def test_load_specs_reports_all_files(tmp_path):
    good, bad1, bad2 = tmp_path / "good.yaml", tmp_path / "b1.yaml", tmp_path / "b2.yaml"
    good.write_text(MINIMAL)
    bad1.write_text(MINIMAL + "workers: 0\n")
    bad2.write_text("name: [\n")
    with pytest.raises(InvalidInput) as e:
        load_specs([good, bad1, bad2, tmp_path / "missing.yaml"])
    assert e.value.problems == [
        f"{bad1}:5:10: workers: must be at least 1, got 0",
        f"{bad2}:2:1: (yaml): while parsing a flow node did not find expected node content",
        f"{tmp_path / 'missing.yaml'}: no such file",
    ]


def test_json_schema_accepts_the_examples_and_rejects_typos():
    import jsonschema

    schema = json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    for path in EXAMPLES:
        data = yaml.safe_load(path.read_text())
        assert not list(validator.iter_errors(data)), path
    assert list(validator.iter_errors({**yaml.safe_load(MINIMAL), "gpuPerWorker": 8}))
    assert list(validator.iter_errors({**yaml.safe_load(MINIMAL), "launcher": "slurm"}))


def test_every_model_field_has_an_alias_and_the_models_are_frozen():
    from pydantic import BaseModel

    seen, todo = set(), [JobSpec]
    while todo:
        model = todo.pop()
        seen.add(model)
        # ResourceList alone takes more keys: extended resources, each checked by its annotation.
        extra = "allow" if model.__name__ == "ResourceList" else "forbid"
        assert model.model_config.get("frozen") and model.model_config.get("extra") == extra
        for field in model.model_fields.values():
            assert field.alias, model
            for arg in getattr(field.annotation, "__args__", (field.annotation,)):
                if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in seen:
                    todo.append(arg)
    assert len(seen) >= 9


@pytest.mark.timeout(60)
def test_building_the_models_leaves_pydantic_plugins_alone():
    """spec.py builds its models with a stand-in plugin loader (start-up time); it must
    be gone afterwards, so that other models get pydantic's real one."""
    import subprocess
    import sys

    code = ("import sys, kjob.spec; assert 'pydantic.plugin._loader' not in sys.modules;"
            "import pydantic\nclass M(pydantic.BaseModel):\n    a: int = 1\n"
            "from pydantic.plugin import _loader; assert hasattr(_loader, 'PYDANTIC_ENTRY_POINT_GROUP'); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=scaled(60))
    assert r.stdout == "ok\n", r.stderr


def test_quantities_may_be_yaml_numbers():
    spec = parse_spec(MINIMAL + "resources: {requests: {cpu: 8, memory: 64Gi}, limits: {cpu: 16.5}}\nshmSize: 1e9\n")
    assert (spec.resources.requests.cpu, spec.resources.limits.cpu, spec.shm_size) == ("8", "16.5", "1000000000")
    assert problems(MINIMAL + "resources: {limits: {memory: true}}\n") == ["s.yaml:5:30: resources.limits.memory: must be a string, got True (quote it)"]


NESTED = {
    "flow, past PyYAML 6.0.4's own limit": "name: job\nenv: " + "[" * 2000 + "]" * 2000 + "\n",
    "flow, below PyYAML's limit": "name: job\nenv: " + "[" * 150 + "]" * 150 + "\n",
    "block": "name: job\nenv:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 150)) + "  " * 150 + "v: 1\n",
}


@pytest.mark.parametrize("loader", ["libyaml", "pure-python"])
@pytest.mark.parametrize("text", NESTED.values(), ids=NESTED.keys())
def test_nesting_limit_is_kjobs_own_whichever_yaml_loader(monkeypatch, loader, text):
    # The message must not depend on the installed PyYAML's limits or on libyaml being there.
    from kjob.spec import yamlfile as specfile

    if loader == "pure-python":
        monkeypatch.setattr(specfile, "_Loader", type("_PureLoader", (yaml.SafeLoader,), {}))
    with pytest.raises(InvalidInput) as e:
        specfile.parse_yaml(text, "deep.yaml")
    assert e.value.problems == ["deep.yaml:1:1: (yaml): nested too deeply to be a spec"]


def test_nesting_below_the_limit_is_read():
    from kjob.spec import yamlfile as specfile

    doc = specfile.parse_yaml("a: " + "[" * 90 + "1" + "]" * 90 + "\n", "ok.yaml")
    assert doc.problems == []


def test_with_a_config_file_only_written_keys_are_checked_against_each_other():
    # epochs comes from the config file, which kjob does not read: the trainer checks it.
    assert parse_spec(MINIMAL + "train: {config: resnest50, warmupEpochs: 100}\n").train.known("epochs") is None
    assert problems(MINIMAL + "train: {config: resnest50, warmupEpochs: 100, epochs: 90}\n") == [
        "s.yaml:5:42: train.warmupEpochs: must be less than epochs (90), got 100"]
    assert problems(MINIMAL + "train: {checkpointSteps: 0, distTimeout: 0}\n") == [
        "s.yaml:5:26: train.checkpointSteps: must be at least 1, got 0",
        "s.yaml:5:42: train.distTimeout: must be greater than 0.0, got 0"]


@pytest.mark.parametrize("extra, requests, limits, loaders", [
    ("", {"cpu": "48", "memory": "192Gi"}, {"memory": "192Gi"}, 6),  # 8 GPUs: 6 cores and 24 GiB each
    ("gpusPerWorker: 2\n", {"cpu": "12", "memory": "48Gi"}, {"memory": "48Gi"}, 6),
    ("gpusPerWorker: 0\n", {"cpu": "8", "memory": "32Gi"}, {"memory": "32Gi"}, 8),  # a CPU job: one rank, the old sizes
    ("resources: {requests: {cpu: 4}}\n", {"cpu": "4"}, {"memory": "192Gi"}, 1),  # at least one loader per rank
    ("resources: {limits: {cpu: 30}}\ngpusPerWorker: 4\n", {"cpu": "24", "memory": "96Gi"}, {"cpu": "30"}, 6),
    ("resources: {requests: {memory: 8Gi}}\nshmSize: 1Gi\n", {"memory": "8Gi"}, {"memory": "192Gi"}, 4),  # no CPU figure
    ("train: {loaderWorkers: 3}\n", {"cpu": "48", "memory": "192Gi"}, {"memory": "192Gi"}, 3),
])
def test_pod_sizing_defaults_follow_the_gpus(extra, requests, limits, loaders):
    spec = parse_spec(MINIMAL + extra)
    assert spec.pod_requests.model_dump(exclude_none=True) == requests
    assert spec.pod_limits.model_dump(exclude_none=True) == limits
    assert spec.loader_workers == loaders


def test_shm_must_stay_below_the_memory_limit():
    message = ("shmSize: 32Gi is not below the memory limit (32Gi): /dev/shm is charged to the pod's memory, so the pod "
               "is OOM-killed before it is full; give it at most half of the limit")
    assert problems(MINIMAL + "gpusPerWorker: 0\nshmSize: 32Gi\n") == [f"s.yaml:6:10: {message}"]
    assert parse_spec(MINIMAL + "gpusPerWorker: 0\nshmSize: 31Gi\n").shm_size == "31Gi"
    # No memory limit: nothing to compare with.
    assert parse_spec(MINIMAL + "resources: {limits: {cpu: 64}}\nshmSize: 1Ti\n").shm_size == "1Ti"


def test_spec_hash_writes_the_sizing_defaults_out():
    # The derived sizes hash as if written: the same pods, the same hash.
    assert parse_spec(MINIMAL).spec_hash() == parse_spec(
        MINIMAL + "resources: {requests: {cpu: '48', memory: 192Gi}, limits: {memory: 192Gi}}\ntrain: {loaderWorkers: 6}\n").spec_hash()
    assert parse_spec(MINIMAL).spec_hash() != parse_spec(MINIMAL + "gpusPerWorker: 4\n").spec_hash()
